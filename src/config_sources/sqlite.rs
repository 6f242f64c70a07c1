//! The config sources store on SQLite: the statements of `sql.rs` on a SQLite connection, with
//! SQLite's spelling where the two engines differ (`db::dialect::sqlite`).

use sqlx::SqliteConnection as Connection;

#[path = "sql.rs"]
#[allow(
    clippy::duplicate_mod,
    reason = "sql.rs is compiled once per backend, on purpose"
)]
mod sql;
pub use sql::*;
