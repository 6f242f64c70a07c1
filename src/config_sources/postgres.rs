//! The config sources store on PostgreSQL: the statements of `sql.rs` on a PostgreSQL connection,
//! with PostgreSQL's spelling where the two engines differ (`db::dialect::postgres`).

use sqlx::PgConnection as Connection;

#[path = "sql.rs"]
#[allow(
    clippy::duplicate_mod,
    reason = "sql.rs is compiled once per backend, on purpose"
)]
mod sql;
pub use sql::*;
