//! The materials context (the materials issue): git materials polled by the server. So far
//! the git program's side (`git.rs`): a mirror per repository and branch, fetched, and the
//! commits since the last revision read from it.

pub mod git;
