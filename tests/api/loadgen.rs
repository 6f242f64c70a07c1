//! The load generator (`cargo run --release --bin loadgen`, BENCHMARKS.md) runs its scenarios
//! end to end: against a `ferrocd serve` it starts itself and against its own bare floor
//! server, every subscriber parses every change, and the report says so.

use std::process::Command;

fn loadgen(scenario: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args([
            scenario,
            "--subscribers",
            "5",
            "--changes",
            "3",
            "--interval-ms",
            "20",
        ])
        .output()
        .expect("the loadgen runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{scenario}: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

#[test]
fn the_queue_and_floor_scenarios_see_every_change_at_every_subscriber() {
    for scenario in ["queue", "floor"] {
        let report = loadgen(scenario);
        assert!(report.contains("missed: 0 of 15"), "{report}");
        assert!(report.contains("from the answer: min "), "{report}");
        assert!(report.contains("from the send:   min "), "{report}");
    }
    // Only the server it started has a process to read.
    assert!(loadgen("queue").contains("server RSS: "));
}
