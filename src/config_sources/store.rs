//! The config sources store: the documents stored through the API, whichever backend holds
//! them (the `--config` files and config repositories are read where they are).

use super::{postgres, sqlite};
use crate::db::{Conn, backend};
use crate::error::Result;

/// Every stored document, `(name, text)`, by name.
pub async fn documents(conn: Conn<'_>) -> Result<Vec<(String, String)>> {
    backend!(conn, documents())
}

/// Whether a document of this name is stored.
pub async fn exists(conn: Conn<'_>, name: &str) -> Result<bool> {
    backend!(conn, exists(name))
}

/// Stores `text` as the document `name`, replacing one of that name.
pub async fn put(conn: Conn<'_>, name: &str, text: &str, now: i64) -> Result<()> {
    backend!(conn, put(name, text, now))
}

/// Removes the document; whether there was one.
pub async fn remove(conn: Conn<'_>, name: &str) -> Result<bool> {
    backend!(conn, remove(name))
}

/// Records the hash of the `--config` files `node` started with.
pub async fn put_node_config(conn: Conn<'_>, node: &str, hash: &str, now: i64) -> Result<()> {
    backend!(conn, put_node_config(node, hash, now))
}

/// Every node's recorded hash: `(node, hash, started_at)`.
pub async fn node_configs(conn: Conn<'_>) -> Result<Vec<(String, String, i64)>> {
    backend!(conn, node_configs())
}

/// Forgets the nodes not among `live`.
pub async fn forget_nodes_but(conn: Conn<'_>, live: &[String]) -> Result<()> {
    backend!(conn, forget_nodes_but(live))
}
