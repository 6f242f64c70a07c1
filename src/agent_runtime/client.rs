//! The agent's side of the agent protocol (docs/API.md, "The agent protocol"): one HTTP client
//! holding the agent's identity, with a call per endpoint. The messages are in `wire.rs`, the
//! retry policy the calls share in `retry.rs`, the accepted URLs and the TLS in `tls.rs`.
//!
//! Every call after registration carries `Authorization: Bearer TOKEN`. A `401` means the server
//! no longer knows the token (an admin deleted the agent): the client re-registers once with
//! its uuid and token, as a GoCD agent does, and repeats the call. If that re-registration is
//! refused with `409` the identity is lost for good: the client fires its `fatal` token and the
//! agent stops instead of quietly becoming someone else.

use std::path::Path;
use std::sync::{Mutex, RwLock};
use std::time::Duration;

use bytes::Bytes;
use reqwest::header::HeaderMap;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::identity::{Identity, IdentityStore, MachineFacts};
use super::retry::{ApiError, retry};
use super::tls;
use super::wire::{
    BuildId, ConsoleAck, JobResult, JobState, PingReply, RegisterReply, Work, WorkOffer,
};

/// Longest wait for any one request (a hung server must not hang the agent).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The identity in use; `generation` grows with every new token.
struct Auth {
    identity: Option<Identity>,
    generation: u64,
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
    /// needs its token) or as a new agent. Retries while the server is unreachable; a
    /// certificate the agent does not trust ends it with the reason.
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
            Err(ApiError::Tls(tls)) => Err(format!(
                "cannot connect securely to {}: {tls}. If its certificate comes from a private \
                 CA, name that CA with --ca-cert FILE (FERROCD_AGENT_CA_CERT)",
                self.base
            )
            .into()),
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
                let offset = ack
                    .get("offset")
                    .and_then(Value::as_u64)
                    .ok_or_else(|| ApiError::Decode(format!("no \"offset\" in {ack}")))?;
                Ok(if ack.get("truncated").and_then(Value::as_bool) == Some(true) {
                    ConsoleAck::Truncated(offset)
                } else {
                    ConsoleAck::Stored(offset)
                })
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
