//! The agents store: what the agents context asks of the database, whichever backend it is.
//! Each function hands its connection to the same-named function of the backend's module
//! (`sqlite.rs`); the service code in `mod.rs` and the other contexts call only these.

use uuid::Uuid;

use super::{postgres, sqlite};
use crate::db::{Conn, backend};
use crate::domain::agent::{Agent, AgentState};
use crate::error::Result;

/// The agent, with the run it holds (the newest not Completed), if any.
pub async fn fetch(conn: Conn<'_>, uuid: Uuid) -> Result<Option<Agent>> {
    backend!(conn, fetch(uuid))
}

/// Every agent, by hostname and then uuid (both compared bytewise).
pub async fn list(conn: Conn<'_>) -> Result<Vec<Agent>> {
    backend!(conn, list())
}

/// The agents among `uuids` that exist, in no particular order.
pub async fn find_many(conn: Conn<'_>, uuids: &[Uuid]) -> Result<Vec<Agent>> {
    backend!(conn, find_many(uuids))
}

/// Writes every field an agent can change (not its token or timestamps).
pub async fn save(conn: Conn<'_>, agent: &Agent) -> Result<()> {
    backend!(conn, save(agent))
}

/// A new agent, registered and last heard from `now`.
pub async fn insert(conn: Conn<'_>, agent: &Agent, token_hash: &str, now: i64) -> Result<()> {
    backend!(conn, insert(agent, token_hash, now))
}

/// Deletes the agent and remembers its uuid (a tombstone).
pub async fn delete(conn: Conn<'_>, uuid: Uuid, now: i64) -> Result<()> {
    backend!(conn, delete(uuid, now))
}

/// Whether an agent with this uuid was ever deleted.
pub async fn was_deleted(conn: Conn<'_>, uuid: Uuid) -> Result<bool> {
    backend!(conn, was_deleted(uuid))
}

/// How many agents wait for an admin's approval.
pub async fn count_pending(conn: Conn<'_>) -> Result<i64> {
    backend!(conn, count_pending())
}

/// The agent whose current token hashes to `token_hash`, and whether it still has a previous
/// token.
pub async fn by_token(conn: Conn<'_>, token_hash: &str) -> Result<Option<(Agent, bool)>> {
    backend!(conn, by_token(token_hash))
}

pub async fn forget_previous_token(conn: Conn<'_>, uuid: Uuid) -> Result<()> {
    backend!(conn, forget_previous_token(uuid))
}

/// The hashes of the agent's current and previous token.
pub async fn token_hashes(conn: Conn<'_>, uuid: Uuid) -> Result<(String, Option<String>)> {
    backend!(conn, token_hashes(uuid))
}

/// A re-registration's new token; the one presented becomes the previous one. Contact too.
pub async fn replace_token(
    conn: Conn<'_>,
    uuid: Uuid,
    new_hash: &str,
    previous_hash: &str,
    now: i64,
) -> Result<()> {
    backend!(conn, replace_token(uuid, new_hash, previous_hash, now))
}

pub async fn set_state(conn: Conn<'_>, uuid: Uuid, state: AgentState) -> Result<()> {
    backend!(conn, set_state(uuid, state))
}

/// Records contact at `now`.
pub async fn touch(conn: Conn<'_>, uuid: Uuid, now: i64) -> Result<()> {
    backend!(conn, touch(uuid, now))
}

pub async fn mark_all_missing(conn: Conn<'_>) -> Result<()> {
    backend!(conn, mark_all_missing())
}

/// Enabled agents in contact but not heard from since `silent_since` become LostContact;
/// returns them.
pub async fn mark_lost_contact(conn: Conn<'_>, silent_since: i64) -> Result<Vec<Uuid>> {
    backend!(conn, mark_lost_contact(silent_since))
}
