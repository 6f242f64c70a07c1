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

# The load generator's quick set (BENCHMARKS.md, "The load generator"): each scenario once at
# a small size against a release server it starts itself, and the floor beside the fan-out
bench:
    cargo build --release --bin ferrocd --bin loadgen
    ./target/release/loadgen queue --subscribers 100
    ./target/release/loadgen queue --floor --subscribers 100
    ./target/release/loadgen queue --subscribers 1000
    ./target/release/loadgen queue --floor --subscribers 1000
    ./target/release/loadgen agents --subscribers 100
    ./target/release/loadgen idle --subscribers 1000
    ./target/release/loadgen idle --floor --subscribers 1000
    ./target/release/loadgen scheduler --jobs 2000 --agents 100
    ./target/release/loadgen console --bytes 20971520 --replay-followers 20
    ./target/release/loadgen dashboard --pipelines 100 --subscribers 200 --changes 100
    ./target/release/loadgen churn --subscribers 100 --seconds 5 --slow-readers 10
    ./target/release/loadgen fleet --agents 500 --seconds 15
    ./target/release/loadgen lines --lines 500
