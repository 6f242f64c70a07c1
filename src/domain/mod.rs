//! The domain: ferrocd's entities, their vocabulary and the rules on them, as plain data.
//!
//! Pure: it imports nothing of ours and does no I/O, so the hub, every context, the agent
//! protocol and the views can all build on it, and what is made of it (events) can be
//! serialized and cross a process. Its serde shapes are its own; the API's JSON quirks (GoCD's
//! `free_space: "unknown"`, environment objects, RFC 3339 times) live beside the API in `web`.

/// GoCD's vocabulary enums travel as their exact names (`LostContact`, `Completed`): `as_str`,
/// `Display`, and a case-insensitive `FromStr` whose error lists the accepted names.
macro_rules! text_enum {
    ($ty:ident { $($variant:ident),+ }) => {
        impl $ty {
            pub fn as_str(self) -> &'static str {
                match self { $($ty::$variant => stringify!($variant)),+ }
            }
        }
        impl std::fmt::Display for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result { f.write_str(self.as_str()) }
        }
        /// Case-insensitive, as GoCD accepts `enabled` as well as `Enabled`.
        impl std::str::FromStr for $ty {
            type Err = String;
            fn from_str(s: &str) -> std::result::Result<Self, String> {
                $(if s.eq_ignore_ascii_case(stringify!($variant)) { return Ok($ty::$variant); })+
                Err(format!(
                    "{s:?} is not one of {}",
                    [$(stringify!($variant)),+].join(", ")
                ))
            }
        }
    };
}

pub mod agent;
pub mod artifact;
pub mod audit;
pub mod job_run;
pub mod material;
pub mod pipeline;
pub mod pipeline_config;
pub mod test_report;
pub mod timer;
pub mod user;

/// A rule the input or the current state broke; the message names the field or the state.
/// The error type of the contexts maps each kind to its own (and so to a status code).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// Well-formed but not allowed: a field out of its range or shape (422).
    #[error("{0}")]
    Invalid(String),
    /// Not allowed in the current state (409).
    #[error("{0}")]
    Conflict(String),
    /// Not the caller's to change (403).
    #[error("{0}")]
    Forbidden(String),
}

pub type Checked<T> = Result<T, Rejection>;
