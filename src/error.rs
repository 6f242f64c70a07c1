//! The one error type of the server, from the stores up to the handlers. It knows nothing of
//! HTTP; `web` maps each kind to a status code (`NotFound` → 404, `Unprocessable` → 422, …).
//! A rule the domain enforces (`domain::Rejection`) converts into the kind it names.

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Malformed input (not JSON, not a form): 400.
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    /// A request that conflicts with the current state: 409.
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    /// A body that does not say it is JSON: 415.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// Too many tries too fast: wait `retry_after` seconds (429 with `Retry-After`).
    #[error("{message}")]
    TooManyRequests { message: String, retry_after: u64 },
    /// A `Host` this server does not answer to (421): a DNS-rebinding page, or a name to add
    /// to `--allowed-hosts`.
    #[error("{0}")]
    MisdirectedRequest(String),
    /// A console append past the stored end: the agent must resend from `stored`.
    #[error("the console holds {stored} bytes; send from there")]
    ConsoleGap { stored: i64 },
    /// Well-formed, but a field is missing, of the wrong type or not allowed: 422.
    #[error("{0}")]
    Unprocessable(String),
    /// A config document that does not read or validate: 422 with every error.
    #[error("{}", invalid_config_message(.0))]
    InvalidConfig(Vec<crate::domain::pipeline_config::SourcedIssue>),
    /// A limit of the server's is reached (too many streams from one address): 503, try later.
    #[error("{0}")]
    Unavailable(String),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration error: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

fn invalid_config_message(issues: &[crate::domain::pipeline_config::SourcedIssue]) -> String {
    let mut message = String::from("the config is not valid");
    for (i, sourced) in issues.iter().enumerate() {
        message.push_str(if i == 0 { ": " } else { "; " });
        message.push_str(&format!("{}: {}", sourced.file, sourced.issue));
    }
    message
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<crate::domain::Rejection> for Error {
    fn from(rejection: crate::domain::Rejection) -> Error {
        use crate::domain::Rejection;
        match rejection {
            Rejection::Invalid(message) => Error::Unprocessable(message),
            Rejection::Conflict(message) => Error::Conflict(message),
            Rejection::Forbidden(message) => Error::Forbidden(message),
        }
    }
}
