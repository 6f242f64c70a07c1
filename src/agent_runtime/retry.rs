//! The agent's retry policy: which failures are worth another try, doubling delays, and how
//! long a call keeps trying (until the agent stops, or a deadline for a job's reports).

use std::fmt;
use std::future::Future;
use std::time::Duration;

use reqwest::header::HeaderMap;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

/// Why a call failed.
#[derive(Debug, Clone)]
pub enum ApiError {
    /// No answer: connection refused or reset, timeout, broken body.
    Transport(String),
    /// The server answered with an error status.
    Status {
        status: u16,
        message: String,
        body: Value,
        headers: Box<HeaderMap>,
    },
    /// A success status with a body the agent cannot read.
    Decode(String),
    /// The TLS handshake failed: a certificate the agent does not trust, or a server that
    /// does not speak TLS on an `https://` URL. Retrying meets the same certificate.
    Tls(String),
}

impl ApiError {
    /// Worth retrying: the server may answer differently in a moment.
    pub fn is_transient(&self) -> bool {
        match self {
            ApiError::Transport(_) => true,
            ApiError::Status { status, .. } => *status >= 500 || *status == 408 || *status == 429,
            ApiError::Decode(_) | ApiError::Tls(_) => false,
        }
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ApiError::Transport(e) => write!(f, "no answer from the server: {e}"),
            ApiError::Status {
                status, message, ..
            } => write!(f, "the server answered {status}: {message}"),
            ApiError::Decode(e) => write!(f, "unreadable answer from the server: {e}"),
            ApiError::Tls(e) => write!(f, "no secure connection to the server: {e}"),
        }
    }
}

impl std::error::Error for ApiError {}

/// Doubling delays between `min` and `max`.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Self {
        Backoff {
            min,
            max,
            next: min,
        }
    }

    /// The delay to wait now; the following one is twice as long (up to `max`).
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(self.max);
        delay
    }

    pub fn reset(&mut self) {
        self.next = self.min;
    }
}

/// How long a failing call is retried.
#[derive(Debug, Clone)]
pub struct Patience {
    /// Ends the retries at once, even a request in flight (the agent is exiting).
    pub give_up: CancellationToken,
    /// Once this has fired, a failed attempt is not retried (each call is still tried once).
    pub stop_retrying: CancellationToken,
    /// Failing continuously for this long ends the retries.
    pub fail_after: Duration,
}

/// How long a job's status reports and console uploads keep failing before the agent gives up.
pub const FAIL_AFTER: Duration = Duration::from_secs(180);

impl Patience {
    /// Retries until `give_up`, however long that takes.
    pub fn until(give_up: &CancellationToken) -> Patience {
        Patience {
            give_up: give_up.clone(),
            stop_retrying: CancellationToken::new(),
            fail_after: Duration::MAX,
        }
    }

    /// Whether a call failing since `since` should be given up.
    pub fn exhausted(&self, since: tokio::time::Instant) -> bool {
        self.give_up.is_cancelled()
            || self.stop_retrying.is_cancelled()
            || since.elapsed() >= self.fail_after
    }

    /// Waits `delay` before the next attempt; false if the retries should end instead.
    pub async fn wait(&self, delay: Duration) -> bool {
        tokio::select! {
            _ = tokio::time::sleep(delay) => true,
            _ = self.give_up.cancelled() => false,
            _ = self.stop_retrying.cancelled() => false,
        }
    }
}

/// Calls `attempt` until it succeeds, fails for good (a non-transient error), or `give_up`
/// fires (then the last error is returned). Transient failures are logged, not every one.
pub async fn retry<T, F, Fut>(
    what: &str,
    give_up: &CancellationToken,
    attempt: F,
) -> Result<T, ApiError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, ApiError>>,
{
    retry_within(what, &Patience::until(give_up), attempt).await
}

/// [`retry`] within `patience`: the last error is returned once it is exhausted.
pub async fn retry_within<T, F, Fut>(
    what: &str,
    patience: &Patience,
    mut attempt: F,
) -> Result<T, ApiError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, ApiError>>,
{
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    let mut failures = 0u32;
    let mut failing_since = None;
    loop {
        let outcome = tokio::select! {
            outcome = attempt() => outcome,
            _ = patience.give_up.cancelled() => Err(ApiError::Transport(format!("gave up: {what}"))),
        };
        match outcome {
            Ok(value) => {
                if failures > 0 {
                    tracing::info!("{what}: succeeded after {failures} failed attempt(s)");
                }
                return Ok(value);
            }
            Err(error) if error.is_transient() => {
                failures += 1;
                let since = *failing_since.get_or_insert_with(tokio::time::Instant::now);
                if patience.exhausted(since) {
                    tracing::warn!(%error, attempts = failures, "{what}: giving up");
                    return Err(error);
                }
                if failures == 1 || failures.is_power_of_two() {
                    tracing::warn!(%error, attempts = failures, "{what}: will retry");
                }
                if !patience.wait(backoff.next_delay()).await {
                    return Err(error);
                }
            }
            Err(error) => return Err(error),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
        let delays: Vec<u128> = (0..7).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(delays, vec![200, 400, 800, 1600, 3200, 5000, 5000]);
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_millis(200));
    }

    #[test]
    fn transient_errors_are_transport_and_5xx() {
        let status = |status| ApiError::Status {
            status,
            message: String::new(),
            body: Value::Null,
            headers: Default::default(),
        };
        assert!(ApiError::Transport("reset".into()).is_transient());
        assert!(status(500).is_transient());
        assert!(status(503).is_transient());
        assert!(status(429).is_transient());
        assert!(!status(409).is_transient());
        assert!(!status(403).is_transient());
        assert!(!status(404).is_transient());
        assert!(!ApiError::Decode("x".into()).is_transient());
        assert!(!ApiError::Tls("invalid peer certificate: UnknownIssuer".into()).is_transient());
    }

    #[tokio::test]
    async fn retry_stops_at_a_permanent_error_and_retries_transient_ones() {
        let give_up = CancellationToken::new();
        let mut calls = 0;
        let outcome: Result<u32, ApiError> = retry("test", &give_up, || {
            calls += 1;
            let n = calls;
            async move {
                if n < 3 {
                    Err(ApiError::Transport("refused".into()))
                } else {
                    Ok(n)
                }
            }
        })
        .await;
        assert_eq!(outcome.unwrap(), 3);

        let mut calls = 0;
        let outcome: Result<(), ApiError> = retry("test", &give_up, || {
            calls += 1;
            async {
                Err(ApiError::Status {
                    status: 409,
                    message: "no".into(),
                    body: Value::Null,
                    headers: Default::default(),
                })
            }
        })
        .await;
        assert!(matches!(outcome, Err(ApiError::Status { status: 409, .. })));
        assert_eq!(calls, 1);
    }

    #[tokio::test]
    async fn retries_end_after_the_failure_deadline_or_once_told_to_stop() {
        let failing = || async { Err::<(), _>(ApiError::Transport("refused".into())) };
        let patience = Patience {
            give_up: CancellationToken::new(),
            stop_retrying: CancellationToken::new(),
            fail_after: Duration::from_millis(300),
        };
        let started = tokio::time::Instant::now();
        assert!(retry_within("test", &patience, failing).await.is_err());
        assert!(started.elapsed() < Duration::from_secs(5));

        let patience = Patience {
            fail_after: FAIL_AFTER,
            ..patience
        };
        let stop = patience.stop_retrying.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            stop.cancel();
        });
        let started = tokio::time::Instant::now();
        let mut calls = 0;
        let outcome = retry_within("test", &patience, || {
            calls += 1;
            failing()
        })
        .await;
        assert!(outcome.is_err());
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(calls >= 1);

        // Once stopped, a call is still tried once: a working server still hears it.
        let outcome = retry_within("test", &patience, || async { Ok(7) }).await;
        assert_eq!(outcome.unwrap(), 7);
    }

    #[tokio::test]
    async fn retry_returns_when_given_up() {
        let give_up = CancellationToken::new();
        give_up.cancel();
        let outcome: Result<(), ApiError> = retry("test", &give_up, || async {
            Err(ApiError::Transport("refused".into()))
        })
        .await;
        assert!(outcome.is_err());
    }
}
