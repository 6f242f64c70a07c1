//! The agent's side of the agent protocol (docs/API.md, "The agent protocol"): one HTTP client
//! holding the agent's identity, with a call per endpoint. The messages are in `wire.rs`, the
//! retry policy the calls share in `retry.rs`, the accepted URLs and the TLS in `tls.rs`.
//!
//! Every call after registration carries `Authorization: Bearer TOKEN`. A `401` means the server
//! no longer knows the token (an admin deleted the agent): the client re-registers once with
//! its uuid and token, as a GoCD agent does, and repeats the call.
//!
//! A `409` to a re-registration (at start or after a 401) means the server knows the uuid but
//! not the token: the uuid was taken over, or the agent was deleted and the server keeps it
//! refused until an administrator approves it. The agent neither stops nor quietly registers
//! as someone else: it keeps its identity, says so loudly, and asks again, backing off from
//! [`REFUSED_RETRY_MIN`] to [`REFUSED_RETRY_MAX`], until the server takes it back or the agent
//! is stopped. Meanwhile the calls that need the identity fail with that `409` at once.

use std::path::Path;
use std::sync::{Mutex, RwLock};
use std::time::Duration;

use bytes::Bytes;
use reqwest::header::HeaderMap;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::identity::{Identity, IdentityStore, MachineFacts};
use super::retry::{ApiError, Backoff, retry};
use super::tls;
use super::wire::{
    BuildId, ConsoleAck, JobResult, JobState, PingReply, RegisterReply, Work, WorkOffer,
};
use crate::domain::pipeline_config::ArtifactKind;

/// Longest wait for any one request (a hung server must not hang the agent).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// A registration the server refused (`409`) is asked again after these delays, doubling.
pub const REFUSED_RETRY_MIN: Duration = Duration::from_secs(1);
pub const REFUSED_RETRY_MAX: Duration = Duration::from_secs(30);

/// The identity in use; `generation` grows with every new token.
struct Auth {
    identity: Option<Identity>,
    generation: u64,
}

/// While the server refuses this agent's identity: when to ask again, and the refusal that
/// calls get until then (so a refused agent does not re-register on every ping).
struct Refusal {
    backoff: Backoff,
    next_try: tokio::time::Instant,
    answer: ApiError,
}

/// The server's base URL and an HTTP client for it, checked before the agent touches its
/// work dir: a URL or a CA file it cannot use ends the agent at once.
pub struct Endpoint {
    base: String,
    http: reqwest::Client,
}

impl Endpoint {
    pub fn new(
        server: &str,
        ca_cert: Option<&Path>,
    ) -> Result<Endpoint, Box<dyn std::error::Error + Send + Sync>> {
        let url = tls::server_url(server)?;
        let tls = tls::client_config(&url, ca_cert)?;
        let base = server.trim_end_matches('/').to_string();
        if tls::is_cleartext_over_a_network(&url) {
            tracing::warn!(
                "--server {base} is plain HTTP: this agent's token, the commands it runs and the \
                 jobs' secrets cross the network unencrypted; put the server behind a TLS proxy \
                 and use https:// (README, \"TLS\")"
            );
        }
        if ca_cert.is_some() && url.scheme() == "http" {
            tracing::warn!("--ca-cert is not used: --server {base} is plain HTTP");
        }
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(CONNECT_TIMEOUT)
            .user_agent(concat!("ferrocd-agent/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("the agent's HTTP client cannot be built: {e}"))?;
        Ok(Endpoint { base, http })
    }
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
    refusal: Mutex<Option<Refusal>>,
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
        endpoint: Endpoint,
        registration_key: Option<String>,
        facts: MachineFacts,
        store: IdentityStore,
    ) -> Client {
        Client {
            http: endpoint.http,
            base: endpoint.base,
            registration_key: registration_key.filter(|k| !k.is_empty()),
            facts,
            store,
            auth: RwLock::new(Auth {
                identity: None,
                generation: 0,
            }),
            reauth: tokio::sync::Mutex::new(()),
            refusal: Mutex::new(None),
            fatal: CancellationToken::new(),
            fatal_error: Mutex::new(None),
        }
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

    /// Fires when the agent cannot go on (its registration key was refused, or its identity
    /// cannot be saved).
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
    /// needs its token) or as a new agent. Retries while the server is unreachable, and while
    /// it refuses the saved identity (`409`); a refused key, a certificate the agent does not
    /// trust or any other answer it cannot act on ends the agent with the reason.
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
        loop {
            let outcome = retry("registering", shutdown, || self.register(saved.as_ref())).await;
            let error = match outcome {
                Ok(reply) => {
                    let state = reply.agent_config_state.clone().unwrap_or_default();
                    let uuid = reply.uuid.clone();
                    self.adopt(reply)?;
                    self.accepted();
                    tracing::info!(%uuid, agent_config_state = %state, "registered with {}", self.base);
                    return Ok(Registered::Ok {
                        agent_config_state: state,
                    });
                }
                Err(_) if shutdown.is_cancelled() => return Ok(Registered::Stopped),
                Err(error) => error,
            };
            let uuid = saved.as_ref().map(|s| s.uuid.as_str());
            let message = match (&error, uuid) {
                (ApiError::Status { status: 409, .. }, Some(uuid)) => {
                    let delay = self.refused(uuid, &error);
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = shutdown.cancelled() => return Ok(Registered::Stopped),
                    }
                    continue;
                }
                (ApiError::Status { status: 403, .. }, _) => format!(
                    "the server {} refused the agent registration key (403): check \
                     --registration-key",
                    self.base
                ),
                (ApiError::Tls(tls), _) => format!(
                    "cannot connect securely to {}: {tls}. If its certificate comes from a \
                     private CA, name that CA with --ca-cert FILE (FERROCD_AGENT_CA_CERT)",
                    self.base
                ),
                _ => format!("registration failed: {error}"),
            };
            return Err(message.into());
        }
    }

    /// Notes that the server refused to register agent `uuid` (`409`), says what that means
    /// and what to do, and returns how long to wait before asking again.
    fn refused(&self, uuid: &str, error: &ApiError) -> Duration {
        let mut refusal = self.refusal.lock().expect("refusal lock");
        let first = refusal.is_none();
        let refusal = refusal.get_or_insert_with(|| Refusal {
            backoff: Backoff::new(REFUSED_RETRY_MIN, REFUSED_RETRY_MAX),
            next_try: tokio::time::Instant::now(),
            answer: error.clone(),
        });
        let delay = refusal.backoff.next_delay();
        refusal.next_try = tokio::time::Instant::now() + delay;
        refusal.answer = error.clone();
        if first {
            tracing::warn!(
                %uuid,
                "AGENT IDENTITY REFUSED: registering agent {uuid} was answered {error}. Its uuid \
                 was taken over, or its token no longer matches (the agent was deleted on the \
                 server). An administrator must approve or enable agent {uuid} on the server. \
                 The agent keeps the identity saved in {} and asks again in {}s, then at most \
                 every {}s.",
                self.store.path().display(),
                delay.as_secs(),
                REFUSED_RETRY_MAX.as_secs()
            );
        } else {
            tracing::warn!(
                %uuid,
                "the server still refuses agent {uuid} ({error}); an administrator must approve \
                 or enable it. Asking again in {}s.",
                delay.as_secs()
            );
        }
        delay
    }

    /// The server took the identity: no more refusal.
    fn accepted(&self) {
        if self.refusal.lock().expect("refusal lock").take().is_some() {
            tracing::info!("the server accepts this agent's identity again");
        }
    }

    /// While refused and not yet time to ask again: the refusal to answer with.
    fn still_refused(&self) -> Option<ApiError> {
        let refusal = self.refusal.lock().expect("refusal lock");
        refusal
            .as_ref()
            .filter(|r| tokio::time::Instant::now() < r.next_try)
            .map(|r| r.answer.clone())
    }

    fn is_refused(&self) -> bool {
        self.refusal.lock().expect("refusal lock").is_some()
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

    /// After a 401: re-register with the current identity, unless another caller already did
    /// or the server refused it a moment ago (then that refusal is the answer, until it is
    /// time to ask again).
    async fn reauthenticate(&self, failed_generation: u64) -> Result<(), ApiError> {
        let _one_at_a_time = self.reauth.lock().await;
        let current = {
            let auth = self.auth.read().expect("auth lock");
            if auth.generation != failed_generation {
                return Ok(());
            }
            auth.identity.clone()
        };
        if let Some(refusal) = self.still_refused() {
            return Err(refusal);
        }
        if !self.is_refused() {
            tracing::warn!("the server no longer accepts this agent's token; re-registering");
        }
        match self.register(current.as_ref()).await {
            Ok(reply) => {
                self.adopt(reply).map_err(|e| {
                    self.die(format!("cannot save the agent identity: {e}"));
                    ApiError::Transport(e.to_string())
                })?;
                self.accepted();
                Ok(())
            }
            Err(error @ ApiError::Status { status: 409, .. }) => {
                let uuid = current.map(|i| i.uuid).unwrap_or_default();
                self.refused(&uuid, &error);
                Err(error)
            }
            Err(ApiError::Status { status: 403, .. }) => {
                self.die("the server refused the agent registration key (403)".into());
                Err(ApiError::Transport("registration key refused".into()))
            }
            Err(error) => Err(error),
        }
    }

    /// An authenticated POST: `build` adds the body; a 401 re-registers once and repeats.
    async fn call(
        &self,
        path: &str,
        timeout: Option<Duration>,
        build: impl Fn(reqwest::RequestBuilder) -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, ApiError> {
        self.call_with(reqwest::Method::POST, path, timeout, build)
            .await
    }

    /// An authenticated call of `method`, as `call`.
    async fn call_with(
        &self,
        method: reqwest::Method,
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
            let mut request =
                build(self.http.request(method.clone(), self.url(path))).bearer_auth(token);
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

    /// Uploads `file` as artifact `path` of `build`, streamed from disk (opened afresh for a
    /// repeat after re-registering), with its SHA-256. Answers the status (201 or 200).
    pub async fn upload_artifact(
        &self,
        build: &BuildId,
        (path, kind): (&str, ArtifactKind),
        file: &std::path::Path,
        sha256: &str,
    ) -> Result<u16, ApiError> {
        let url_path = artifact_path(&build.path_segment(), path);
        let size = std::fs::metadata(file).map(|m| m.len()).unwrap_or(0);
        let response = self
            .call_with(
                reqwest::Method::PUT,
                &url_path,
                Some(transfer_timeout(size)),
                |r| {
                    let body = match std::fs::File::open(file) {
                        Ok(opened) => reqwest::Body::wrap_stream(
                            tokio_util::io::ReaderStream::new(tokio::fs::File::from_std(opened)),
                        ),
                        // Gone since it was hashed: the server sees an empty body and refuses
                        // its checksum.
                        Err(_) => reqwest::Body::from(Vec::new()),
                    };
                    r.header("X-Checksum-SHA256", sha256)
                        .header(
                            "X-Artifact-Kind",
                            match kind {
                                ArtifactKind::Build => "build",
                                ArtifactKind::Test => "test",
                            },
                        )
                        .header("Content-Type", "application/octet-stream")
                        .body(body)
                },
            )
            .await?;
        Ok(response.status().as_u16())
    }

    /// Asks for artifact `path` of build `build_id` (about `size` bytes): the answer, its body
    /// still to be read.
    pub async fn artifact(
        &self,
        build_id: i64,
        path: &str,
        size: u64,
    ) -> Result<reqwest::Response, ApiError> {
        let url_path = artifact_path(&build_id.to_string(), path);
        self.call_with(
            reqwest::Method::GET,
            &url_path,
            Some(transfer_timeout(size)),
            |r| r,
        )
        .await
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
                let offset = ack
                    .get("offset")
                    .and_then(Value::as_u64)
                    .ok_or_else(|| ApiError::Decode(format!("no \"offset\" in {ack}")))?;
                Ok(
                    if ack.get("truncated").and_then(Value::as_bool) == Some(true) {
                        ConsoleAck::Truncated(offset)
                    } else {
                        ConsoleAck::Stored(offset)
                    },
                )
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

/// A transport error with its causes ("error sending request" alone says little); a TLS
/// failure is told apart, as retrying the same handshake meets the same certificate.
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
    if tls::tls_failure(&error).is_some() {
        return ApiError::Tls(text);
    }
    ApiError::Transport(text)
}

/// Success passes; an error status becomes `ApiError::Status` with the server's message.
/// `/builds/{build}/artifacts/{path}`, each segment of `path` percent-encoded.
fn artifact_path(build: &str, path: &str) -> String {
    let encoded: Vec<String> = path
        .split('/')
        .map(|segment| {
            form_urlencoded::byte_serialize(segment.as_bytes())
                .collect::<String>()
                .replace('+', "%20")
        })
        .collect();
    format!("/builds/{build}/artifacts/{}", encoded.join("/"))
}

/// How long one artifact transfer of `size` bytes may take: the usual limit, plus a second
/// per MiB (a slow link still moves a large file; a hung one is still given up on).
fn transfer_timeout(size: u64) -> Duration {
    REQUEST_TIMEOUT + Duration::from_secs(size / (1024 * 1024))
}

/// A transport error as the agent says it.
pub fn transport_error(error: reqwest::Error) -> ApiError {
    transport(error)
}

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
        assert_eq!(
            work.tasks[1].kind,
            super::super::wire::TaskKind::Exec {
                command: "make".into(),
                args: vec![],
                working_dir: Some("src".into()),
            }
        );
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
}
