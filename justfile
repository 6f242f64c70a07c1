# Convenience recipes; nothing essential depends on `just` (cargo install just).

# The server on http://127.0.0.1:8153 with the embedded database in ./ferrocd-data
run:
    cargo run --release

# The whole suite, as CI runs it
test:
    cargo test

# Only the browser tests (headless Chromium through chromedriver)
e2e:
    cargo test --test browser -- --test-threads=1

# Formatting and lints
check:
    cargo fmt --all -- --check
    cargo clippy --all-targets -- -D warnings
