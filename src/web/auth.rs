//! Who is calling: the agent a bearer token belongs to.

use axum::extract::FromRequestParts;
use axum::http::HeaderMap;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use uuid::Uuid;

use crate::AppState;
use crate::error::Error;

/// The token in `Authorization: Bearer TOKEN`, if any.
pub fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// An agent that proved who it is. Handlers still check that it acts on its own record.
pub struct AuthenticatedAgent(pub Uuid);

impl AuthenticatedAgent {
    /// An agent may act only on its own record: another agent's token is 403.
    pub fn require(&self, uuid: Uuid) -> Result<(), Error> {
        if self.0 == uuid {
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
