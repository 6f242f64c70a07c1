//! Failed logins slow down: after a few wrong passwords for one user from one address, the
//! next try must wait, twice as long after each further failure (up to a minute). A right
//! password clears the count. Guessing is slowed per user and per address, so one attacker
//! cannot lock a user out from everywhere else.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Failures allowed before any wait.
const FREE_TRIES: u32 = 3;
const LONGEST_WAIT: Duration = Duration::from_secs(60);
/// A count left alone this long is forgotten.
const FORGET_AFTER: Duration = Duration::from_secs(15 * 60);

#[derive(Default)]
pub struct LoginThrottle {
    failures: Mutex<HashMap<(String, IpAddr), Failures>>,
}

struct Failures {
    count: u32,
    last: Instant,
}

fn wait_after(count: u32) -> Duration {
    if count < FREE_TRIES {
        return Duration::ZERO;
    }
    let doublings = (count - FREE_TRIES).min(6);
    (Duration::from_secs(1) * 2u32.pow(doublings)).min(LONGEST_WAIT)
}

impl LoginThrottle {
    /// `Err(wait)` while `user` from `from` must still wait before another try.
    pub fn check(&self, user: &str, from: IpAddr) -> Result<(), Duration> {
        let failures = self.failures.lock().expect("throttle lock");
        match failures.get(&(user.to_string(), from)) {
            Some(f) => {
                let wait = wait_after(f.count);
                let waited = f.last.elapsed();
                if waited < wait {
                    Err(wait - waited)
                } else {
                    Ok(())
                }
            }
            None => Ok(()),
        }
    }

    pub fn failed(&self, user: &str, from: IpAddr) {
        let mut failures = self.failures.lock().expect("throttle lock");
        if failures.len() > 10_000 {
            failures.retain(|_, f| f.last.elapsed() < FORGET_AFTER);
        }
        let entry = failures
            .entry((user.to_string(), from))
            .or_insert(Failures {
                count: 0,
                last: Instant::now(),
            });
        if entry.last.elapsed() >= FORGET_AFTER {
            entry.count = 0;
        }
        entry.count += 1;
        entry.last = Instant::now();
    }

    pub fn succeeded(&self, user: &str, from: IpAddr) {
        self.failures
            .lock()
            .expect("throttle lock")
            .remove(&(user.to_string(), from));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_grow_after_the_free_tries_and_a_success_clears_them() {
        let throttle = LoginThrottle::default();
        let here: IpAddr = "10.0.0.1".parse().unwrap();
        let there: IpAddr = "10.0.0.2".parse().unwrap();
        for _ in 0..FREE_TRIES - 1 {
            throttle.failed("alice", here);
            assert!(throttle.check("alice", here).is_ok());
        }
        throttle.failed("alice", here);
        let wait = throttle.check("alice", here).unwrap_err();
        assert!(wait > Duration::from_millis(500) && wait <= Duration::from_secs(1));
        assert!(throttle.check("alice", there).is_ok(), "another address");
        assert!(throttle.check("bob", here).is_ok(), "another user");
        throttle.failed("alice", here);
        assert!(throttle.check("alice", here).unwrap_err() > Duration::from_secs(1));
        throttle.succeeded("alice", here);
        assert!(throttle.check("alice", here).is_ok());
        assert_eq!(wait_after(100), LONGEST_WAIT);
    }
}
