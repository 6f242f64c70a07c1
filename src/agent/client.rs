//! The agent's side of the agent protocol (CONTRACT.md, "The agent protocol"): one HTTP client
//! holding the agent's identity, with a call per endpoint and the retry policy they share.
//!
//! Every call after registration carries `Authorization: Bearer TOKEN`. A `401` means the server
//! no longer knows the token (an admin deleted the agent): the client re-registers once with
//! its uuid and token, as a GoCD agent does, and repeats the call. If that re-registration is
//! refused with `409` the identity is lost for good: the client fires its `fatal` token and the
//! agent stops instead of quietly becoming someone else.

use std::fmt;
use std::future::Future;
use std::sync::{Mutex, RwLock};
use std::time::Duration;

use bytes::Bytes;
use reqwest::header::HeaderMap;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::identity::{Identity, IdentityStore, MachineFacts};

/// Longest wait for any one request (a hung server must not hang the agent).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

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
}

impl ApiError {
    /// Worth retrying: the server may answer differently in a moment.
    pub fn is_transient(&self) -> bool {
        match self {
            ApiError::Transport(_) => true,
            ApiError::Status { status, .. } => *status >= 500 || *status == 408 || *status == 429,
            ApiError::Decode(_) => false,
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

/// A build's id as the server wrote it in `WORK` (a number per the contract; a string is
/// tolerated), echoed back in pings exactly as received.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum BuildId {
    Number(u64),
    Text(String),
}

impl fmt::Display for BuildId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BuildId::Number(n) => write!(f, "{n}"),
            BuildId::Text(s) => f.write_str(s),
        }
    }
}

impl BuildId {
    /// The id as one URL path segment.
    fn path_segment(&self) -> String {
        let text = self.to_string();
        let mut out = String::with_capacity(text.len());
        for byte in text.bytes() {
            if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
                out.push(byte as char);
            } else {
                out.push_str(&format!("%{byte:02X}"));
            }
        }
        out
    }
}

/// One task of a job: a command run directly (no shell), in `working_dir` below the sandbox.
#[derive(Debug, Clone, Deserialize)]
pub struct Task {
    pub command: String,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub working_dir: Option<String>,
}

/// `WORK`: the job the server assigned to this agent.
#[derive(Debug, Clone, Deserialize)]
pub struct Work {
    pub build_id: BuildId,
    pub pipeline_name: String,
    #[serde(default)]
    pub pipeline_counter: Value,
    pub stage_name: String,
    #[serde(default)]
    pub stage_counter: Value,
    pub job_name: String,
    #[serde(default)]
    pub tasks: Vec<Task>,
    #[serde(default)]
    pub environment_variables: serde_json::Map<String, Value>,
}

/// What `POST /work` handed out.
#[derive(Debug)]
pub enum WorkOffer {
    /// `204`: nothing to do.
    None,
    Job(Box<Work>),
    /// A job whose description the agent cannot read; it is failed so it does not hang.
    Malformed {
        build_id: BuildId,
        error: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum JobState {
    Preparing,
    Building,
    Completing,
    Completed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum JobResult {
    Passed,
    Failed,
    Cancelled,
}

impl fmt::Display for JobResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            JobResult::Passed => "Passed",
            JobResult::Failed => "Failed",
            JobResult::Cancelled => "Cancelled",
        })
    }
}

/// The server's answer to a console append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsoleAck {
    /// Stored; the log is now this long.
    Stored(u64),
    /// `409`: the agent believed more was stored than is; the log is this long.
    Gap(u64),
}

#[derive(Debug, Deserialize)]
pub struct PingReply {
    #[serde(default)]
    pub agent_config_state: Option<String>,
    #[serde(default)]
    pub instruction: Option<String>,
}

#[derive(Debug, Deserialize)]
struct RegisterReply {
    uuid: String,
    token: String,
    #[serde(default)]
    agent_config_state: Option<String>,
}

/// The identity in use; `generation` grows with every new token.
struct Auth {
    identity: Option<Identity>,
    generation: u64,
}

pub struct Client {
    http: reqwest::Client,
    base: String,
    registration_key: Option<String>,
    facts: MachineFacts,
    store: IdentityStore,
    auth: RwLock<Auth>,
    /// Serializes re-registrations (pinger and work loop may both see a 401).
    reauth: tokio::sync::Mutex<()>,
    fatal: CancellationToken,
    fatal_error: Mutex<Option<String>>,
}

/// How the first registration of this process ended.
pub enum Registered {
    Ok {
        agent_config_state: String,
    },
    /// Shutdown came before the server answered.
    Stopped,
}

impl Client {
    pub fn new(
        server: &str,
        registration_key: Option<String>,
        facts: MachineFacts,
        store: IdentityStore,
    ) -> Result<Client, Box<dyn std::error::Error + Send + Sync>> {
        let base = server.trim_end_matches('/').to_string();
        reqwest::Url::parse(&base).map_err(|e| format!("--server {server}: {e}"))?;
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(CONNECT_TIMEOUT)
            .user_agent(concat!("ferrocd-agent/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Client {
            http,
            base,
            registration_key: registration_key.filter(|k| !k.is_empty()),
            facts,
            store,
            auth: RwLock::new(Auth {
                identity: None,
                generation: 0,
            }),
            reauth: tokio::sync::Mutex::new(()),
            fatal: CancellationToken::new(),
            fatal_error: Mutex::new(None),
        })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    pub fn facts(&self) -> &MachineFacts {
        &self.facts
    }

    pub fn uuid(&self) -> Option<String> {
        let auth = self.auth.read().expect("auth lock");
        auth.identity.as_ref().map(|i| i.uuid.clone())
    }

    /// Fires when the agent cannot go on (its identity was refused).
    pub fn fatal(&self) -> &CancellationToken {
        &self.fatal
    }

    pub fn fatal_error(&self) -> Option<String> {
        self.fatal_error.lock().expect("fatal lock").clone()
    }

    fn die(&self, message: String) {
        tracing::error!("{message}");
        self.fatal_error
            .lock()
            .expect("fatal lock")
            .get_or_insert(message);
        self.fatal.cancel();
    }

    fn url(&self, path: &str) -> String {
        format!("{}/api{}", self.base, path)
    }

    /// Registers at start: with the identity saved in the work dir (re-registration, which
    /// needs its token) or as a new agent. Retries while the server is unreachable.
    pub async fn register_at_start(
        &self,
        shutdown: &CancellationToken,
    ) -> Result<Registered, Box<dyn std::error::Error + Send + Sync>> {
        let saved = self.store.load()?;
        match &saved {
            Some(identity) => tracing::info!(
                uuid = %identity.uuid,
                "re-registering with the identity saved in {}",
                self.store.path().display()
            ),
            None => tracing::info!("registering as a new agent with {}", self.base),
        }
        let outcome = retry("registering", shutdown, || self.register(saved.as_ref())).await;
        match outcome {
            Ok(reply) => {
                let state = reply.agent_config_state.clone().unwrap_or_default();
                let uuid = reply.uuid.clone();
                self.adopt(reply)?;
                tracing::info!(%uuid, agent_config_state = %state, "registered with {}", self.base);
                Ok(Registered::Ok {
                    agent_config_state: state,
                })
            }
            Err(_) if shutdown.is_cancelled() => Ok(Registered::Stopped),
            Err(ApiError::Status { status: 403, .. }) => Err(format!(
                "the server {} refused the agent registration key (403): check --registration-key",
                self.base
            )
            .into()),
            Err(error @ ApiError::Status { status: 409, .. }) if saved.is_some() => {
                let uuid = saved.map(|s| s.uuid).unwrap_or_default();
                let message = format!(
                    "AGENT IDENTITY REFUSED: the server knows agent {uuid} but did not accept the \
                     token saved in {} ({error}). Not registering as a new agent. Delete the agent \
                     on the server and remove that file to register afresh.",
                    self.store.path().display()
                );
                tracing::error!("{message}");
                Err(message.into())
            }
            Err(error) => Err(format!("registration failed: {error}").into()),
        }
    }

    /// Takes a registration answer as the identity in use, saving it first.
    fn adopt(&self, reply: RegisterReply) -> std::io::Result<()> {
        let identity = Identity {
            uuid: reply.uuid,
            token: reply.token,
        };
        self.store.save(&identity)?;
        let mut auth = self.auth.write().expect("auth lock");
        auth.identity = Some(identity);
        auth.generation += 1;
        Ok(())
    }

    async fn register(&self, saved: Option<&Identity>) -> Result<RegisterReply, ApiError> {
        let facts = &self.facts;
        let mut body = json!({
            "hostname": facts.hostname,
            "ip_address": facts.ip_address,
            "operating_system": facts.operating_system,
            "sandbox": facts.sandbox,
            "free_space": facts.free_space_json(),
            "resources": facts.resources,
            "environments": facts.environments,
            "agent_version": facts.agent_version,
        });
        let mut request = self.http.post(self.url("/agents/register"));
        if let Some(identity) = saved {
            body["uuid"] = json!(identity.uuid);
            request = request.bearer_auth(&identity.token);
        }
        if let Some(key) = &self.registration_key {
            request = request.header("X-Agent-Registration-Key", key);
        }
        let response = request.json(&body).send().await.map_err(transport)?;
        let response = check(response).await?;
        decode(response).await
    }

    /// After a 401: re-register with the current identity, unless another caller already did.
    async fn reauthenticate(&self, failed_generation: u64) -> Result<(), ApiError> {
        let _one_at_a_time = self.reauth.lock().await;
        let current = {
            let auth = self.auth.read().expect("auth lock");
            if auth.generation != failed_generation {
                return Ok(());
            }
            auth.identity.clone()
        };
        tracing::warn!("the server no longer accepts this agent's token; re-registering");
        match self.register(current.as_ref()).await {
            Ok(reply) => {
                self.adopt(reply).map_err(|e| {
                    self.die(format!("cannot save the agent identity: {e}"));
                    ApiError::Transport(e.to_string())
                })?;
                Ok(())
            }
            Err(error @ ApiError::Status { status: 409, .. }) => {
                self.die(format!(
                    "AGENT IDENTITY REFUSED: re-registering after a 401 was answered {error}; \
                     the agent stops rather than register as someone else"
                ));
                Err(error)
            }
            Err(ApiError::Status { status: 403, .. }) => {
                self.die("the server refused the agent registration key (403)".into());
                Err(ApiError::Transport("registration key refused".into()))
            }
            Err(error) => Err(error),
        }
    }

    /// An authenticated call: `build` adds the body; a 401 re-registers once and repeats.
    async fn call(
        &self,
        path: &str,
        timeout: Option<Duration>,
        build: impl Fn(reqwest::RequestBuilder) -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, ApiError> {
        let mut reauthenticated = false;
        loop {
            let (token, generation) = {
                let auth = self.auth.read().expect("auth lock");
                let token = auth
                    .identity
                    .as_ref()
                    .map(|i| i.token.clone())
                    .unwrap_or_default();
                (token, auth.generation)
            };
            let mut request = build(self.http.post(self.url(path))).bearer_auth(token);
            if let Some(timeout) = timeout {
                request = request.timeout(timeout);
            }
            let response = request.send().await.map_err(transport)?;
            if response.status() == reqwest::StatusCode::UNAUTHORIZED && !reauthenticated {
                reauthenticated = true;
                self.reauthenticate(generation).await?;
                continue;
            }
            return check(response).await;
        }
    }

    fn agent_path(&self, what: &str) -> String {
        format!("/agents/{}/{what}", self.uuid().unwrap_or_default())
    }

    pub async fn ping(
        &self,
        building: Option<&BuildId>,
        free_space: Option<u64>,
    ) -> Result<PingReply, ApiError> {
        let mut body = json!({
            "agent_state": if building.is_some() { "Building" } else { "Idle" },
        });
        if let Some(build) = building {
            body["build_id"] = json!(build);
        }
        if let Some(free) = free_space {
            body["free_space"] = json!(free);
        }
        let response = self
            .call(
                &self.agent_path("ping"),
                Some(Duration::from_secs(10)),
                |r| r.json(&body),
            )
            .await?;
        decode(response).await
    }

    pub async fn work(&self) -> Result<WorkOffer, ApiError> {
        let response = self.call(&self.agent_path("work"), None, |r| r).await?;
        if response.status() == reqwest::StatusCode::NO_CONTENT {
            return Ok(WorkOffer::None);
        }
        let value: Value = decode(response).await?;
        parse_work(value)
    }

    pub async fn status(
        &self,
        build: &BuildId,
        state: JobState,
        result: Option<JobResult>,
    ) -> Result<(), ApiError> {
        let mut body = json!({ "job_state": state });
        if let Some(result) = result {
            body["result"] = json!(result);
        }
        let path = format!("/builds/{}/status", build.path_segment());
        self.call(&path, None, |r| r.json(&body)).await?;
        Ok(())
    }

    pub async fn console(
        &self,
        build: &BuildId,
        offset: u64,
        chunk: Bytes,
    ) -> Result<ConsoleAck, ApiError> {
        let path = format!("/builds/{}/console", build.path_segment());
        let outcome = self
            .call(&path, None, |r| {
                r.header("Content-Type", "text/plain")
                    .header("X-Console-Offset", offset.to_string())
                    .body(chunk.clone())
            })
            .await;
        match outcome {
            Ok(response) => {
                let ack: Value = decode(response).await?;
                ack.get("offset")
                    .and_then(Value::as_u64)
                    .map(ConsoleAck::Stored)
                    .ok_or_else(|| ApiError::Decode(format!("no \"offset\" in {ack}")))
            }
            Err(ApiError::Status {
                status: 409,
                body,
                headers,
                message,
            }) => stored_length(&body, &headers)
                .map(ConsoleAck::Gap)
                .ok_or(ApiError::Status {
                    status: 409,
                    message,
                    body,
                    headers,
                }),
            Err(error) => Err(error),
        }
    }
}

/// The stored length a console `409` names: the body's `offset`, else `X-Console-Length`.
fn stored_length(body: &Value, headers: &HeaderMap) -> Option<u64> {
    body.get("offset").and_then(Value::as_u64).or_else(|| {
        headers
            .get("x-console-length")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse().ok())
    })
}

fn parse_work(value: Value) -> Result<WorkOffer, ApiError> {
    match serde_json::from_value::<Work>(value.clone()) {
        Ok(work) => Ok(WorkOffer::Job(Box::new(work))),
        Err(error) => match value
            .get("build_id")
            .and_then(|id| serde_json::from_value::<BuildId>(id.clone()).ok())
        {
            Some(build_id) => Ok(WorkOffer::Malformed {
                build_id,
                error: error.to_string(),
            }),
            None => Err(ApiError::Decode(format!(
                "WORK without a build_id: {error}"
            ))),
        },
    }
}

/// A transport error with its causes ("error sending request" alone says little).
fn transport(error: reqwest::Error) -> ApiError {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    ApiError::Transport(text)
}

/// Success passes; an error status becomes `ApiError::Status` with the server's message.
async fn check(response: reqwest::Response) -> Result<reqwest::Response, ApiError> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let headers = response.headers().clone();
    let text = response.text().await.unwrap_or_default();
    let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    let message = body
        .get("message")
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or_else(|| text.chars().take(200).collect());
    Err(ApiError::Status {
        status: status.as_u16(),
        message,
        body,
        headers: Box::new(headers),
    })
}

async fn decode<T: serde::de::DeserializeOwned>(
    response: reqwest::Response,
) -> Result<T, ApiError> {
    let bytes = response.bytes().await.map_err(transport)?;
    serde_json::from_slice(&bytes).map_err(|e| ApiError::Decode(e.to_string()))
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
    }

    #[test]
    fn work_parses_the_contract_shape() {
        let value = json!({
            "build_id": 17, "pipeline_name": "p", "pipeline_counter": 3, "stage_name": "s",
            "stage_counter": 1, "job_name": "j",
            "tasks": [{"command": "sh", "args": ["-c", "true"]}, {"command": "make", "working_dir": "src"}],
            "environment_variables": {"A": "1"}
        });
        let WorkOffer::Job(work) = parse_work(value).unwrap() else {
            panic!("not a job")
        };
        assert_eq!(work.build_id, BuildId::Number(17));
        assert_eq!(work.tasks.len(), 2);
        assert_eq!(work.tasks[1].args, Vec::<String>::new());
        assert_eq!(work.tasks[1].working_dir.as_deref(), Some("src"));
        assert_eq!(work.environment_variables["A"], json!("1"));
    }

    #[test]
    fn unreadable_work_with_a_build_id_is_failed_not_dropped() {
        let offer = parse_work(json!({"build_id": 5, "tasks": "nope"})).unwrap();
        assert!(matches!(
            offer,
            WorkOffer::Malformed {
                build_id: BuildId::Number(5),
                ..
            }
        ));
        assert!(parse_work(json!({"tasks": []})).is_err());
    }

    #[test]
    fn build_ids_echo_as_received_and_are_path_safe() {
        assert_eq!(json!(BuildId::Number(9)), json!(9));
        assert_eq!(json!(BuildId::Text("a b".into())), json!("a b"));
        assert_eq!(BuildId::Text("a/b c".into()).path_segment(), "a%2Fb%20c");
        assert_eq!(BuildId::Number(42).path_segment(), "42");
    }

    #[test]
    fn a_console_gap_names_the_stored_length_in_body_or_header() {
        let mut headers = HeaderMap::new();
        assert_eq!(stored_length(&json!({"offset": 12}), &headers), Some(12));
        headers.insert("x-console-length", "34".parse().unwrap());
        assert_eq!(
            stored_length(&json!({"message": "gap"}), &headers),
            Some(34)
        );
        assert_eq!(stored_length(&Value::Null, &HeaderMap::new()), None);
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
