//! Browser tests: the live pages in a real headless Chromium, driven over WebDriver
//! (chromedriver + fantoccini), against the in-process server of `tests/api/helpers.rs`.
//!
//! They need `chromium` and `chromedriver` on `PATH`. Without them each test prints a loud
//! banner and passes as skipped, except with `CI=true`, where a missing browser fails it.
//! The tests run one at a time (a global lock), whatever `--test-threads` says.

#[path = "../api/helpers.rs"]
#[allow(dead_code)]
mod helpers;

mod agents_page;
mod artifacts_convergence;
mod convergence;
mod cross_origin;
mod dashboard;
mod dashboard_convergence;
mod listener_gap;
mod nodes;
mod pipeline_pages_convergence;
mod run_page;
mod support;
