//! The load generator (`cargo run --release --bin loadgen`, BENCHMARKS.md) runs each of its
//! scenarios end to end at a small size, against a `ferrocd serve` it starts itself and
//! against its floor server, and reports what BENCHMARKS.md reads: every subscriber got
//! every change, nothing was handed out twice, every console byte arrived in order.

use std::process::Command;

use crate::helpers::{Server, TEST_DATABASE_URL, test_config};

fn loadgen(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(args)
        .output()
        .expect("the loadgen runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{args:?}: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

const SMALL: [&str; 6] = [
    "--subscribers",
    "5",
    "--changes",
    "3",
    "--interval-ms",
    "20",
];

#[test]
fn the_fan_out_scenarios_see_every_change_at_every_subscriber() {
    for floor in [false, true] {
        let mut args = vec!["queue"];
        args.extend(SMALL);
        if floor {
            args.push("--floor");
        }
        let report = loadgen(&args);
        assert!(report.contains("missed: 0 of 15"), "{report}");
        assert!(report.contains("from the answer: min "), "{report}");
        assert!(report.contains("from the send:   min "), "{report}");
        // Both servers are child processes whose memory can be read.
        assert!(report.contains("server RSS: "), "{report}");
    }
    // Changes 20 ms apart fold into one render that sends several rows, in any order.
    let mut args = vec!["agents", "--agents", "8"];
    args.extend(SMALL);
    let report = loadgen(&args);
    assert!(report.contains("missed: 0 of 15"), "{report}");
    assert!(
        report.contains("bytes per change per subscriber: "),
        "{report}"
    );
}

#[test]
fn idle_streams_are_measured_on_both_servers() {
    for floor in [false, true] {
        let mut args = vec!["idle", "--subscribers", "10"];
        if floor {
            args.push("--floor");
        }
        let report = loadgen(&args);
        assert!(report.contains("idle: 10 open streams"), "{report}");
        assert!(report.contains("per stream: "), "{report}");
    }
}

#[test]
fn the_scheduler_scenario_hands_every_job_out_once() {
    let report = loadgen(&["scheduler", "--jobs", "60", "--agents", "6"]);
    assert!(report.contains("assigned 60 in "), "{report}");
    assert!(report.contains("assigned twice: 0"), "{report}");
    assert!(report.contains("left unassigned: 0"), "{report}");
}

#[test]
fn the_console_scenario_delivers_every_byte_in_order() {
    let report = loadgen(&[
        "console",
        "--bytes",
        "400000",
        "--chunk",
        "16384",
        "--followers",
        "3",
        "--replay-bytes",
        "200000",
        "--replay-followers",
        "4",
    ]);
    assert!(report.contains("ingest: "), "{report}");
    assert!(
        report.contains("followers missing bytes or out of order: 0 of 3"),
        "{report}"
    );
    assert!(
        report.contains("readers missing bytes or out of order: 0"),
        "{report}"
    );
}

#[test]
fn every_churn_subscriber_ends_equal_to_a_fresh_load_even_beside_slow_readers() {
    let report = loadgen(&[
        "churn",
        "--subscribers",
        "5",
        "--rate",
        "20",
        "--seconds",
        "2",
        "--slow-readers",
        "3",
    ]);
    assert!(
        report.contains("ended equal to a fresh load (21 rows and the counts): 5 of 5"),
        "{report}"
    );
    assert!(report.contains("missed: 0 of 205"), "{report}");
    assert!(
        report.contains("server RSS peak during the churn: "),
        "{report}"
    );
}

#[test]
fn the_dashboard_scenario_sees_every_trigger_at_every_subscriber() {
    let report = loadgen(&[
        "dashboard",
        "--pipelines",
        "20",
        "--subscribers",
        "4",
        "--changes",
        "30",
        "--rate",
        "50",
    ]);
    // 30 triggers of 20 pipelines: ten of them run a second instance.
    assert!(report.contains("missed: 0 of 120"), "{report}");
    assert!(report.contains("GET /pipelines ("), "{report}");
}

#[test]
fn the_fleet_scenario_measures_pings_and_polls_of_every_agent() {
    let report = loadgen(&[
        "fleet",
        "--agents",
        "20",
        "--interval-ms",
        "500",
        "--seconds",
        "2",
    ]);
    // Each agent has 4 turns in 2 s, its first spread over the first 500 ms.
    assert!(
        report.contains("calls: 80 pings, 80 work polls"),
        "{report}"
    );
    assert!(report.contains("% of one core"), "{report}");
}

#[test]
fn a_real_agent_s_lines_reach_the_follower_in_order() {
    let report = loadgen(&[
        "lines",
        "--lines",
        "100",
        "--every-ms",
        "5",
        "--followers",
        "2",
    ]);
    assert!(
        report.contains("followers with every line in order: 2 of 2"),
        "{report}"
    );
    assert!(report.contains("print to parse: min "), "{report}");
}

/// `--subscribe-to` and `--also-server` drive two running nodes. On PostgreSQL they are two
/// nodes on one database (changes through one, subscribers and half the agents on the other);
/// in the SQLite pass one server is given as both, which runs the same code in the loadgen.
#[tokio::test]
async fn the_two_node_flags_drive_a_second_running_node() {
    let failed = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(["queue", "--subscribe-to", "http://127.0.0.1:1"])
        .output()
        .expect("the loadgen runs");
    assert!(!failed.status.success());
    let error = String::from_utf8_lossy(&failed.stderr);
    assert!(
        error.contains("--subscribe-to needs --server too"),
        "{error}"
    );

    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let node = |dir: &tempfile::TempDir, database_url: Option<String>| {
        let mut config = test_config(dir.path());
        if let Some(url) = database_url {
            config.database_url = url;
        }
        config.agent_registration_key = Some("loadgen-key".into());
        config.registrations_per_second = 0;
        config.max_streams_per_address = 0;
        config
    };
    let config_a = node(&dir_a, None);
    let shared = config_a.database_url.clone();
    let a = Server::start(config_a).await;
    let b = match std::env::var(TEST_DATABASE_URL) {
        Ok(_) => Some(Server::start(node(&dir_b, Some(shared))).await),
        Err(_) => None,
    };
    let url_a = a.base.clone();
    let url_b = b.as_ref().map_or(url_a.clone(), |b| b.base.clone());
    let run = |args: Vec<String>| {
        tokio::task::spawn_blocking(move || {
            loadgen(&args.iter().map(String::as_str).collect::<Vec<_>>())
        })
    };
    let two = |scenario: &[&str], flag: &str| {
        let mut args: Vec<String> = scenario.iter().map(|s| s.to_string()).collect();
        args.extend(["--server".into(), url_a.clone(), flag.into(), url_b.clone()]);
        args
    };

    let mut queue = vec!["queue"];
    queue.extend(SMALL);
    let report = run(two(&queue, "--subscribe-to")).await.unwrap();
    assert!(report.contains("missed: 0 of 15"), "{report}");
    let mut agents = vec!["agents", "--agents", "8"];
    agents.extend(SMALL);
    let report = run(two(&agents, "--subscribe-to")).await.unwrap();
    assert!(report.contains("missed: 0 of 15"), "{report}");
    let console = [
        "console",
        "--bytes",
        "200000",
        "--chunk",
        "16384",
        "--followers",
        "2",
        "--replay-bytes",
        "100000",
        "--replay-followers",
        "2",
    ];
    let report = run(two(&console, "--subscribe-to")).await.unwrap();
    assert!(
        report.contains("followers missing bytes or out of order: 0 of 2"),
        "{report}"
    );
    assert!(
        report.contains("readers missing bytes or out of order: 0"),
        "{report}"
    );
    let scheduler = ["scheduler", "--jobs", "40", "--agents", "4"];
    let report = run(two(&scheduler, "--also-server")).await.unwrap();
    assert!(report.contains("assigned 40 in "), "{report}");
    assert!(report.contains("assigned twice: 0"), "{report}");
    assert!(report.contains("left unassigned: 0"), "{report}");
    // Servers the loadgen did not start: their memory is not known.
    assert!(!report.contains("server RSS"), "{report}");
}
