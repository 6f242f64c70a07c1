//! Integration tests: the real server on a free port, spoken to over HTTP.

mod agents_api;
mod helpers;
mod lifecycle;
mod registration;
mod streams;
