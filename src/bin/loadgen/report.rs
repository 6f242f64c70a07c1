//! How figures are summarised and printed: min / p50 / p99 / max of a set of samples, and
//! one `key: value` line per figure, so BENCHMARKS.md and the smoke test read the same text.

use std::time::Instant;

/// min / p50 / p99 / max of samples.
pub struct Spread {
    pub min: f64,
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

impl Spread {
    pub fn of(values: &[f64]) -> Option<Spread> {
        if values.is_empty() {
            return None;
        }
        let mut sorted = values.to_vec();
        sorted.sort_by(f64::total_cmp);
        let at = |q: f64| sorted[((sorted.len() - 1) as f64 * q).round() as usize];
        Some(Spread {
            min: sorted[0],
            p50: at(0.5),
            p99: at(0.99),
            max: sorted[sorted.len() - 1],
        })
    }
}

/// `values` in ms as `min … / p50 … / p99 … / max … ms`, or `none`.
pub fn ms(values: &[f64]) -> String {
    match Spread::of(values) {
        None => "none".into(),
        Some(s) => format!(
            "min {:.2} / p50 {:.2} / p99 {:.2} / max {:.2} ms",
            s.min, s.p50, s.p99, s.max
        ),
    }
}

/// `later - earlier` in ms, negative when `later` came first.
pub fn ms_between(later: Instant, earlier: Instant) -> f64 {
    if later >= earlier {
        (later - earlier).as_secs_f64() * 1000.0
    } else {
        -(earlier - later).as_secs_f64() * 1000.0
    }
}

pub fn mb(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1_048_576.0)
}

/// The server's memory and CPU around a scenario's measured part.
pub struct Usage {
    pub rss_before: Option<u64>,
    pub rss_after: Option<u64>,
    pub cpu_seconds: Option<f64>,
    /// The loadgen's own CPU time meanwhile: its clients share the machine with the server.
    pub own_cpu_seconds: Option<f64>,
}

impl Usage {
    pub fn print(&self, during: &str) {
        if let (Some(before), Some(after)) = (self.rss_before, self.rss_after) {
            println!("  server RSS: {} → {}", mb(before), mb(after));
        }
        if let Some(cpu) = self.cpu_seconds {
            println!("  server CPU {during}: {cpu:.3} s");
        }
        if let Some(cpu) = self.own_cpu_seconds {
            println!("  loadgen CPU {during}: {cpu:.3} s");
        }
    }
}

/// Samples the server's RSS and CPU before a measured part; `end` samples them after.
pub struct Meter<'a> {
    target: &'a crate::target::Target,
    rss_before: Option<u64>,
    cpu_before: Option<f64>,
    own_cpu_before: Option<f64>,
}

impl<'a> Meter<'a> {
    pub fn start(target: &'a crate::target::Target) -> Meter<'a> {
        Meter {
            target,
            rss_before: target.rss_bytes(),
            cpu_before: target.cpu_seconds(),
            own_cpu_before: crate::target::cpu_seconds_of("self"),
        }
    }

    pub fn end(self) -> Usage {
        Usage {
            rss_before: self.rss_before,
            rss_after: self.target.rss_bytes(),
            cpu_seconds: match (self.cpu_before, self.target.cpu_seconds()) {
                (Some(before), Some(after)) => Some(after - before),
                _ => None,
            },
            own_cpu_seconds: match (self.own_cpu_before, crate::target::cpu_seconds_of("self")) {
                (Some(before), Some(after)) => Some(after - before),
                _ => None,
            },
        }
    }
}
