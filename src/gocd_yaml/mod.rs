//! GoCD's YAML config format (`*.gocd.yaml`) → ferrocd's pipeline config model, read the way
//! GoCD's YAML plugin and server read it, but refusing what GoCD would silently drop (unknown
//! keys in tasks and materials, extra keys on one-key maps) and what ferrocd cannot act on
//! (templates, elastic agents, ciphertext of a GoCD server's key, plugins' materials).
//!
//! Pure: text in, model or issues out; no I/O. `loader` turns YAML into a node tree (aliases,
//! merge keys, duplicate keys), `read` and its helpers turn that into a `ConfigDocument`, and
//! `sources` checks what only all the documents together can tell.

mod fields;
mod loader;
mod materials;
mod read;
mod sources;
mod tasks;

#[cfg(test)]
mod tests;

pub use read::parse_document;
pub use sources::check_sources;
