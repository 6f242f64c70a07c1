//! Who is calling, and whether they may: the credential each route declares (`routes.rs`) is
//! enforced here, before its handler runs.
//!
//! A person proves who they are with the login page's session cookie, a personal access token
//! (`Authorization: Bearer fcd_…`) or HTTP Basic (user and password, as GoCD allows on its
//! API); an agent with its own token. A page that needs a user sends a browser without one to
//! the login page; an API call or a stream gets a JSON 401. Pages, streams and the user API
//! also answer only through a `Host` this server knows (`hosts.rs`), which defeats DNS
//! rebinding; the agent protocol, registration and the health check answer any `Host`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use axum::extract::{ConnectInfo, FromRequestParts, OriginalUri, Request};
use axum::http::header::{ACCEPT, AUTHORIZATION, COOKIE, LOCATION, WWW_AUTHENTICATE};
use axum::http::request::Parts;
use axum::http::{Extensions, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use uuid::Uuid;

use crate::AppState;
use crate::domain::agent::Agent;
use crate::domain::user::User;
use crate::error::Error;
use crate::web::pages::PageError;

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "ferrocd_session";

/// What a route needs from its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credential {
    /// Anyone, through any `Host`: the health check (load balancers call it by address).
    Probe,
    /// Anyone, through a known `Host`: the login and logout pages, the pages' assets.
    None,
    /// Anyone, through any `Host`: agent registration (the registration key, if presented,
    /// makes a new agent Enabled).
    Registration,
    /// An agent's own token; the handler checks it acts on its own record.
    Agent,
    /// A hosting service's webhook, through any `Host`: the handler checks its signature
    /// against `--webhook-secret-file`, so without a good one every caller is refused (401).
    Webhook,
    /// A person: anyone on an open server, else a logged-in user.
    User,
    /// An admin: anyone on an open server, else a user named in `--admins`.
    Admin,
}

impl Credential {
    /// The agent protocol, registration and the health check answer any `Host`.
    pub fn checks_host(self) -> bool {
        matches!(
            self,
            Credential::None | Credential::User | Credential::Admin
        )
    }
}

/// The route layer every declared route runs behind.
pub async fn guard(credential: Credential, mut request: Request, next: Next) -> Response {
    let Some(state) = request.extensions().get::<AppState>().cloned() else {
        return Error::Forbidden("the route table was built without the server's state".into())
            .into_response();
    };
    let page = wants_page(&request);
    if credential.checks_host()
        && let Err(error) = state.hosts.check(request.headers())
    {
        return refusal(error, page);
    }
    if matches!(credential, Credential::User | Credential::Admin) {
        match identify(&state, request.extensions(), request.headers()).await {
            Ok(Some(user)) => {
                if credential == Credential::Admin && !user.admin {
                    return refusal(
                        Error::Forbidden(format!(
                            "{} is not an admin: only admins may do this",
                            user.name
                        )),
                        page,
                    );
                }
                request.extensions_mut().insert(user);
            }
            Ok(None) => return unauthenticated(&request, page),
            Err(error) => return refusal(error, page),
        }
    }
    next.run(request).await
}

/// A person's browser asking for a page (not the API, not a stream).
fn wants_page(request: &Request) -> bool {
    let path = original_uri(request).path();
    let api = path.starts_with("/api/") || path.starts_with("/go/api/");
    let html = request
        .headers()
        .get(ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| accept.contains("text/html"));
    html && !api
}

/// The URI as the client sent it (a nested router sees it without its prefix).
fn original_uri(request: &Request) -> &axum::http::Uri {
    request
        .extensions()
        .get::<OriginalUri>()
        .map(|original| &original.0)
        .unwrap_or(request.uri())
}

fn refusal(error: Error, page: bool) -> Response {
    if page {
        PageError(error).into_response()
    } else {
        error.into_response()
    }
}

/// No credential: a page goes to the login page (and back afterwards); the rest is a 401.
fn unauthenticated(request: &Request, page: bool) -> Response {
    if page {
        let back = original_uri(request)
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/");
        let next: String = form_urlencoded::byte_serialize(back.as_bytes()).collect();
        let mut response = StatusCode::SEE_OTHER.into_response();
        if let Ok(location) = HeaderValue::from_str(&format!("/auth/login?next={next}")) {
            response.headers_mut().insert(LOCATION, location);
        }
        return response;
    }
    let mut response = Error::Unauthorized(
        "log in first: a session cookie, Authorization: Bearer ACCESS_TOKEN, or HTTP Basic".into(),
    )
    .into_response();
    let stream = request
        .headers()
        .get(ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| accept.contains("text/event-stream"));
    // A browser would prompt for a password on a stream's 401 with a Basic challenge.
    if !stream {
        response.headers_mut().insert(
            WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"ferrocd\""),
        );
    }
    response
}

/// The person behind the request: `Ok(None)` when it carries no credential, an error when it
/// carries a wrong one.
async fn identify(
    state: &AppState,
    extensions: &Extensions,
    headers: &HeaderMap,
) -> Result<Option<User>, Error> {
    let accounts = &state.accounts;
    if !accounts.required() {
        return Ok(Some(User::anonymous()));
    }
    if let Some(authorization) = headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok()) {
        let (scheme, value) = authorization.split_once(' ').unwrap_or((authorization, ""));
        let value = value.trim();
        if scheme.eq_ignore_ascii_case("bearer") {
            return match accounts.token_user(value).await? {
                Some(user) => Ok(Some(user)),
                None => Err(Error::Unauthorized(
                    "the access token is unknown or revoked".into(),
                )),
            };
        }
        if scheme.eq_ignore_ascii_case("basic") {
            let (name, password) = basic_credentials(value)?;
            let from = client_address(state, extensions, headers);
            return accounts
                .check_password(&name, &password, from)
                .await
                .map(Some);
        }
        return Err(Error::Unauthorized(format!(
            "Authorization scheme {scheme:?}: use Bearer or Basic"
        )));
    }
    match session_secret(headers) {
        Some(secret) => Ok(accounts.session_user(secret).await?),
        None => Ok(None),
    }
}

fn basic_credentials(value: &str) -> Result<(String, String), Error> {
    let bad =
        || Error::Unauthorized("HTTP Basic credentials are not base64 of user:password".into());
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(value)
        .map_err(|_| bad())?;
    let text = String::from_utf8(decoded).map_err(|_| bad())?;
    let (name, password) = text.split_once(':').ok_or_else(bad)?;
    Ok((name.to_string(), password.to_string()))
}

/// The session cookie's secret, if the request carries one.
pub fn session_secret(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|cookies| cookies.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == SESSION_COOKIE)
        .map(|(_, value)| value.trim())
        .filter(|value| !value.is_empty())
}

/// Where the request came from: the peer, or what the trusted proxy says the client was
/// (0.0.0.0 when the router runs without a peer address: such callers share one count).
pub fn client_address(state: &AppState, extensions: &Extensions, headers: &HeaderMap) -> IpAddr {
    let peer = extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|info| info.0.ip())
        .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    if state.trusted_proxy == Some(peer) {
        // The proxy appends the address it saw: the last entry is the one it vouches for.
        let forwarded = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|a| a.trim().parse::<IpAddr>().ok())
            .next_back();
        if let Some(client) = forwarded {
            return client;
        }
    }
    peer
}

/// Whether the browser reached us over HTTPS (through the trusted proxy), so the session
/// cookie must be `Secure`.
pub fn came_over_https(state: &AppState, request_parts: &Parts) -> bool {
    let peer = request_parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|info| info.0.ip());
    peer.is_some()
        && peer == state.trusted_proxy
        && request_parts
            .headers
            .get("x-forwarded-proto")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|proto| proto.eq_ignore_ascii_case("https"))
}

/// The person a `User` or `Admin` route's guard let in.
pub struct CurrentUser(pub User);

impl<S: Send + Sync> FromRequestParts<S> for CurrentUser {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Error> {
        parts
            .extensions
            .get::<User>()
            .cloned()
            .map(CurrentUser)
            .ok_or_else(|| Error::Unauthorized("this route declares no user".into()))
    }
}

/// The token in `Authorization: Bearer TOKEN`, if any.
pub fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// An agent that proved who it is, as it was read then. Handlers still check that it acts on
/// its own record.
pub struct AuthenticatedAgent(pub Agent);

impl AuthenticatedAgent {
    pub fn uuid(&self) -> Uuid {
        self.0.uuid
    }

    /// An agent may act only on its own record: another agent's token is 403.
    pub fn require(&self, uuid: Uuid) -> Result<(), Error> {
        if self.0.uuid == uuid {
            Ok(())
        } else {
            Err(Error::Forbidden(format!(
                "this token does not belong to agent {uuid}"
            )))
        }
    }
}

impl FromRequestParts<AppState> for AuthenticatedAgent {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Error> {
        let token = bearer_token(&parts.headers).ok_or_else(|| {
            Error::Unauthorized("an agent token is required (Authorization: Bearer TOKEN)".into())
        })?;
        Ok(AuthenticatedAgent(state.agents.authenticate(token).await?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_session_cookie_is_found_among_others() {
        let mut headers = HeaderMap::new();
        headers.insert(
            COOKIE,
            "theme=dark; ferrocd_session=abc123 ; x=y".parse().unwrap(),
        );
        assert_eq!(session_secret(&headers), Some("abc123"));
        headers.insert(COOKIE, "ferrocd_session=".parse().unwrap());
        assert_eq!(session_secret(&headers), None);
    }

    #[test]
    fn basic_credentials_are_user_colon_password() {
        let encoded = base64::engine::general_purpose::STANDARD.encode("alice:pa:ss");
        assert_eq!(
            basic_credentials(&encoded).unwrap(),
            ("alice".to_string(), "pa:ss".to_string())
        );
        assert!(basic_credentials("!!!").is_err());
    }
}
