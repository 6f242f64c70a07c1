//! People who use the server (agents are in `agent`): who they are, what they may do, and the
//! personal access tokens their scripts use.

/// A person the server knows: from the password file, or everyone when the server is open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    /// Admins change agents and config and schedule ad-hoc jobs; other users view, trigger,
    /// approve, pause and cancel.
    pub admin: bool,
    /// Logged in (false for everyone on an open server, who has no one to log in as).
    pub signed_in: bool,
}

impl User {
    /// Everyone, on a server without a password file (as GoCD without an auth plugin).
    pub fn anonymous() -> User {
        User {
            name: "anonymous".to_string(),
            admin: true,
            signed_in: false,
        }
    }
}

/// A personal access token as its owner sees it (never the secret, which is shown once).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessToken {
    pub id: i64,
    pub username: String,
    pub description: String,
    pub created_at: i64,
    pub last_used_at: Option<i64>,
    pub revoked_at: Option<i64>,
    pub revoked_by: Option<String>,
    pub revoke_cause: Option<String>,
}

impl AccessToken {
    pub fn revoked(&self) -> bool {
        self.revoked_at.is_some()
    }
}

/// A token's description: what it is for, so its owner knows which to revoke.
pub fn token_description(raw: &str) -> super::Checked<String> {
    let text = raw.trim();
    if text.is_empty() {
        return Err(super::Rejection::Invalid(
            "description: say what the token is for".into(),
        ));
    }
    if text.chars().count() > 1024 {
        return Err(super::Rejection::Invalid(
            "description: at most 1024 characters".into(),
        ));
    }
    Ok(text.to_string())
}
