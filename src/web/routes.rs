//! The route table: every route is declared with the credential it needs, and the declaration
//! is what builds the router, so a route without a decision about who may call it cannot
//! exist. The table itself is public ([`crate::web::route_table`]), and a test walks it with
//! no credential, a user, an admin and an agent token.

use axum::Router;
use axum::extract::Request;
use axum::handler::Handler;
use axum::http::Method;
use axum::middleware::Next;
use axum::routing::{MethodFilter, MethodRouter, on};

use super::auth::{Credential, guard};
use crate::AppState;

/// One declared route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub method: Method,
    /// axum's pattern, e.g. `/api/agents/{uuid}`.
    pub path: String,
    pub credential: Credential,
}

/// A router and the table of what it routes.
pub struct Routes {
    router: Router<AppState>,
    table: Vec<Route>,
}

impl Default for Routes {
    fn default() -> Self {
        Routes::new()
    }
}

impl Routes {
    pub fn new() -> Routes {
        Routes {
            router: Router::new(),
            table: Vec::new(),
        }
    }

    /// `method path` answered by `handler`, for callers holding `credential`.
    pub fn add<H, T>(
        mut self,
        method: Method,
        path: &str,
        credential: Credential,
        handler: H,
    ) -> Routes
    where
        H: Handler<T, AppState>,
        T: 'static,
    {
        let filter = MethodFilter::try_from(method.clone()).expect("a routable method");
        let endpoint: MethodRouter<AppState> =
            on(filter, handler).route_layer(axum::middleware::from_fn(
                move |request: Request, next: Next| guard(credential, request, next),
            ));
        self.router = self.router.route(path, endpoint);
        self.table.push(Route {
            method,
            path: path.to_string(),
            credential,
        });
        self
    }

    pub fn get<H: Handler<T, AppState>, T: 'static>(
        self,
        path: &str,
        credential: Credential,
        handler: H,
    ) -> Routes {
        self.add(Method::GET, path, credential, handler)
    }

    pub fn post<H: Handler<T, AppState>, T: 'static>(
        self,
        path: &str,
        credential: Credential,
        handler: H,
    ) -> Routes {
        self.add(Method::POST, path, credential, handler)
    }

    pub fn put<H: Handler<T, AppState>, T: 'static>(
        self,
        path: &str,
        credential: Credential,
        handler: H,
    ) -> Routes {
        self.add(Method::PUT, path, credential, handler)
    }

    pub fn patch<H: Handler<T, AppState>, T: 'static>(
        self,
        path: &str,
        credential: Credential,
        handler: H,
    ) -> Routes {
        self.add(Method::PATCH, path, credential, handler)
    }

    pub fn delete<H: Handler<T, AppState>, T: 'static>(
        self,
        path: &str,
        credential: Credential,
        handler: H,
    ) -> Routes {
        self.add(Method::DELETE, path, credential, handler)
    }

    pub fn merge(mut self, other: Routes) -> Routes {
        self.router = self.router.merge(other.router);
        self.table.extend(other.table);
        self
    }

    /// `other`'s routes under `prefix` (e.g. the API under `/api` and `/go/api`).
    pub fn nest(mut self, prefix: &str, other: Routes) -> Routes {
        self.router = self.router.nest(prefix, other.router);
        self.table
            .extend(other.table.into_iter().map(|route| Route {
                path: format!("{prefix}{}", route.path),
                ..route
            }));
        self
    }

    /// A fallback for paths no route matches (it needs no credential: it only says so).
    pub fn fallback<H: Handler<T, AppState>, T: 'static>(mut self, handler: H) -> Routes {
        self.router = self.router.fallback(handler);
        self
    }

    pub fn into_parts(self) -> (Router<AppState>, Vec<Route>) {
        (self.router, self.table)
    }
}
