//! A token bucket per client address: `rate` requests a second on average, `burst` at once.
//! Registration without the key goes through one, so a flood of fake agents from one address
//! is refused (429 with `Retry-After`) long before it fills the Pending list.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Instant;

pub struct RateLimit {
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

impl RateLimit {
    pub fn new(rate_per_second: f64, burst: u32) -> RateLimit {
        RateLimit {
            rate: rate_per_second,
            burst: f64::from(burst),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one token for `from`; `Err(seconds)` to wait when there is none.
    pub fn take(&self, from: IpAddr) -> Result<(), u64> {
        let now = Instant::now();
        let mut buckets = self.buckets.lock().expect("rate limit lock");
        if buckets.len() > 10_000 {
            // Full buckets say nothing a fresh one would not.
            let (rate, burst) = (self.rate, self.burst);
            buckets.retain(|_, b| b.tokens + now.duration_since(b.at).as_secs_f64() * rate < burst);
        }
        let bucket = buckets.entry(from).or_insert(Bucket {
            tokens: self.burst,
            at: now,
        });
        let refilled = now.duration_since(bucket.at).as_secs_f64() * self.rate;
        bucket.tokens = (bucket.tokens + refilled).min(self.burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(((1.0 - bucket.tokens) / self.rate).ceil().max(1.0) as u64)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_passes_then_the_rate_holds_per_address() {
        let limit = RateLimit::new(10.0, 50);
        let here: IpAddr = "10.0.0.1".parse().unwrap();
        for _ in 0..50 {
            assert!(limit.take(here).is_ok());
        }
        assert_eq!(limit.take(here), Err(1));
        assert!(
            limit.take("10.0.0.2".parse().unwrap()).is_ok(),
            "another address"
        );
    }
}
