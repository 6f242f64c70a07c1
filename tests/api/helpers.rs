//! The harness: a real server on a free port with a fresh database per test, one typed client
//! for its API (every request a test makes goes through [`Api::send`], so a credential or a
//! header that all calls need is added in one place), and an SSE reader that parses the
//! stream as `curl -N` shows it (`event:`, `id:`, `data:` lines).

use std::ops::Deref;
use std::time::Duration;

use ferrocd::config::Config;
use ferrocd::{AppState, Application};
use futures::StreamExt;
use reqwest::Method;
use reqwest::header::HeaderMap;
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Long enough for a loaded CI machine; conditions are polled, never slept for.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// The tests' HTTP client. reqwest is built with rustls but no crypto provider of its own
/// (the agent names ring in its client, src/agent_runtime/tls.rs), and a client built with
/// neither panics; so the test process installs ring as its default first.
pub fn http_client() -> reqwest::Client {
    // An error only says another test installed it already.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

pub struct TestApp {
    api: Api,
    pub state: AppState,
    shutdown: CancellationToken,
    _data: TempDir,
}

impl TestApp {
    /// The server's data directory (its database, the test's password file).
    pub fn data_dir(&self) -> &std::path::Path {
        self._data.path()
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A test speaks to its server through the typed client, whichever way the server was started.
impl Deref for TestApp {
    type Target = Api;

    fn deref(&self) -> &Api {
        &self.api
    }
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// The variable naming a PostgreSQL cluster (an admin URL, `postgres://user@host:port/db`)
/// for the Postgres pass: every test server then gets a database of its own in it.
pub const TEST_DATABASE_URL: &str = "FERROCD_TEST_DATABASE_URL";

/// A server's configuration on the data directory `dir`, on the database this pass of the
/// suite runs on: SQLite in `dir`, or under [`TEST_DATABASE_URL`] a PostgreSQL database named
/// after `dir`, created on first use, so a server started again on the same `dir` finds its
/// data as it would in its SQLite file.
pub fn test_config(dir: &std::path::Path) -> Config {
    let mut config = Config::for_data_dir(dir);
    if let Ok(admin_url) = std::env::var(TEST_DATABASE_URL) {
        config.database_url = postgres_database_for(&admin_url, dir);
    }
    config
}

/// The URL of `dir`'s database in the cluster at `admin_url`, created if it does not exist.
/// On a thread of its own with its own runtime, so sync code (a config closure) can call it.
fn postgres_database_for(admin_url: &str, dir: &std::path::Path) -> String {
    use sha2::{Digest, Sha256};
    use sqlx::Connection;
    let digest = Sha256::digest(dir.as_os_str().as_encoded_bytes());
    let name = format!("ferrocd_test_{}", &hex::encode(digest)[..16]);
    let (base, _) = admin_url
        .rsplit_once('/')
        .unwrap_or_else(|| panic!("{TEST_DATABASE_URL} is postgres://user@host:port/db"));
    let url = format!("{base}/{name}");
    let admin_url = admin_url.to_string();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        runtime.block_on(async {
            let mut admin = sqlx::PgConnection::connect(&admin_url)
                .await
                .unwrap_or_else(|e| {
                    panic!(
                        "{TEST_DATABASE_URL}={}: {e}",
                        ferrocd::db::redact_password(&admin_url)
                    )
                });
            let exists: Option<i32> =
                sqlx::query_scalar("SELECT 1 FROM pg_database WHERE datname = $1")
                    .bind(&name)
                    .fetch_optional(&mut admin)
                    .await
                    .expect("pg_database reads");
            if exists.is_none() {
                // The name is ours (hex), so it needs no quoting.
                sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                    .execute(&mut admin)
                    .await
                    .expect("the test database is created");
            }
            admin.close().await.ok();
        })
    })
    .join()
    .expect("the database is made");
    url
}

/// Builds the server, and checks it runs on the database this pass of the suite is for, so a
/// Postgres pass cannot quietly test SQLite.
pub async fn build_app(config: Config) -> Application {
    let app = Application::build(config).await.expect("the server builds");
    assert_eq!(
        app.state().db.backend(),
        expected_backend(),
        "the server's database"
    );
    app
}

/// The database this pass of the suite is for.
fn expected_backend() -> ferrocd::db::Backend {
    if std::env::var(TEST_DATABASE_URL).is_ok() {
        ferrocd::db::Backend::Postgres
    } else {
        ferrocd::db::Backend::Sqlite
    }
}

/// `ferrocd serve --data-dir DIR` as a process of its own, on this pass's database; the caller
/// adds the other flags.
pub fn serve_command(data_dir: &std::path::Path) -> std::process::Command {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_ferrocd"));
    command.arg("serve").arg("--data-dir").arg(data_dir);
    let config = test_config(data_dir);
    command.env("DATABASE_URL", config.database_url);
    command
}

/// `ferrocd serve` as a process of its own, listening on a free loopback port; killed
/// (SIGKILL, as a crash would) when dropped or by [`NodeProcess::kill`].
pub struct NodeProcess {
    child: std::process::Child,
    /// `http://127.0.0.1:PORT`
    pub base: String,
    /// What it logged until it said where it listens.
    pub log: String,
}

impl NodeProcess {
    /// Starts `command` (from [`serve_command`]; `--listen` is added here) and waits until it
    /// says where it listens.
    pub fn start(mut command: std::process::Command) -> NodeProcess {
        use std::io::{BufRead, BufReader};
        let mut child = command
            .args(["--listen", "127.0.0.1:0"])
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("the server starts");
        let stdout = child.stdout.take().expect("its output");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut log = String::new();
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                log.push_str(&line);
                log.push('\n');
                if let Some(at) = line.find("listening on http://") {
                    let base: String = line[at + "listening on ".len()..]
                        .chars()
                        .take_while(|c| !c.is_whitespace())
                        .collect();
                    let _ = tx.send((base, log.clone()));
                }
            }
        });
        let (base, log) = rx
            .recv_timeout(DEADLINE)
            .expect("the node says where it listens");
        NodeProcess { child, base, log }
    }

    pub fn api(&self) -> Api {
        Api::new(self.base.clone())
    }

    /// SIGKILL, and waits for it to be gone.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Checks that a server started as a process runs on this pass's database: `/go/about` names
/// it.
pub async fn expect_backend(api: &Api) {
    let reply = api.get("/go/about").await;
    assert_eq!(reply.status, 200, "/go/about");
    let about = reply.text();
    let name = expected_backend().name();
    assert!(
        about.contains(&format!("<td>Database</td><td>{name}</td>")),
        "/go/about names {name}: {about}"
    );
}

pub async fn spawn_app_with(configure: impl FnOnce(&mut Config)) -> TestApp {
    let data = tempfile::tempdir().expect("temp dir");
    let mut config = test_config(data.path());
    // Tests register hundreds of agents from one address; the limit's own test sets it.
    config.registrations_per_second = 0;
    configure(&mut config);
    let app = build_app(config).await;
    let api = Api::new(format!("http://{}", app.local_addr()));
    let state = app.state();
    let shutdown = app.shutdown_token();
    tokio::spawn(app.run_until_stopped());
    TestApp {
        api,
        state,
        shutdown,
        _data: data,
    }
}

/// A server on a data directory the test keeps, so it can be stopped and started again
/// (restarts, Missing agents). Stopped when dropped.
pub struct Server {
    pub base: String,
    stop: CancellationToken,
    running: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl Server {
    pub async fn start(config: Config) -> Server {
        let app = build_app(config).await;
        let base = format!("http://{}", app.local_addr());
        let stop = app.shutdown_token();
        let running = Some(tokio::spawn(app.run_until_stopped()));
        Server {
            base,
            stop,
            running,
        }
    }

    /// The same typed client a [`TestApp`] has; it outlives a stop, so a test can keep it.
    pub fn api(&self) -> Api {
        Api::new(self.base.clone())
    }

    /// Stops it gracefully and waits until it has.
    pub async fn stop(mut self) {
        self.stop.cancel();
        if let Some(running) = self.running.take() {
            running
                .await
                .expect("the server task")
                .expect("a clean stop");
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// An agent as registration returned it.
pub struct Registered {
    pub uuid: String,
    pub token: String,
}

impl Registered {
    /// The identity in a registration answer.
    pub fn from_body(body: &Value) -> Registered {
        Registered {
            uuid: body["uuid"].as_str().expect("a uuid").to_string(),
            token: body["token"].as_str().expect("a token").to_string(),
        }
    }
}

/// The `message` of a JSON error body. Every error the API answers has one, so a missing one
/// fails the test here rather than as a confusing `contains` further on.
pub fn message(body: &Value) -> &str {
    body["message"]
        .as_str()
        .unwrap_or_else(|| panic!("an error body is {{\"message\": …}}, got {body}"))
}

/// A schedule request body for an ad-hoc job running `echo`.
pub fn job_body(pipeline: &str, job: &str) -> Value {
    json!({
        "pipeline_name": pipeline,
        "stage_name": "build",
        "job_name": job,
        "tasks": [{"command": "echo", "args": ["hello", job]}],
        "resources": [],
    })
}

/// What the server answered: kept whole, so a test can read it as JSON, text or bytes, and a
/// failed expectation can show what came back.
pub struct Reply {
    /// `METHOD /path`, for failure messages.
    pub what: String,
    pub status: u16,
    pub headers: HeaderMap,
    /// The body as JSON, `null` when it is not JSON.
    pub body: Value,
    pub bytes: Vec<u8>,
}

impl Reply {
    /// The JSON body, after checking the status; a wrong status panics showing the body.
    pub fn expect(self, status: u16) -> Value {
        assert_eq!(
            self.status,
            status,
            "{} answered {}: {}",
            self.what,
            self.status,
            self.shown()
        );
        self.body
    }

    /// Checks for a 2xx, whichever; returns the JSON body.
    pub fn expect_success(self) -> Value {
        assert!(
            (200..300).contains(&self.status),
            "{} answered {}: {}",
            self.what,
            self.status,
            self.shown()
        );
        self.body
    }

    /// The `message` of an error body.
    pub fn message(&self) -> &str {
        message(&self.body)
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }

    /// A header's value, `""` when absent.
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    /// Status and JSON body, for tests that compare both.
    pub fn parts(self) -> (u16, Value) {
        (self.status, self.body)
    }

    /// The body as a failure message shows it: JSON if it is, else the first of the text.
    fn shown(&self) -> String {
        if self.body.is_null() {
            self.text().chars().take(500).collect()
        } else {
            self.body.to_string()
        }
    }
}

/// The typed client of one server: what a user's script or the UI asks.
#[derive(Clone)]
pub struct Api {
    pub base: String,
    pub client: reqwest::Client,
    /// Sent with every request that does not set them itself (a credential, say).
    headers: Vec<(String, String)>,
}

impl Api {
    pub fn new(base: String) -> Api {
        Api {
            base,
            client: http_client(),
            headers: Vec::new(),
        }
    }

    /// The same client, sending `name: value` on every request.
    pub fn with_header(&self, name: &str, value: &str) -> Api {
        let mut api = self.clone();
        api.headers.push((name.to_string(), value.to_string()));
        api
    }

    /// What [`Api::with_header`] added.
    pub fn default_headers(&self) -> impl Iterator<Item = (&str, &str)> {
        self.headers.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }

    /// Speaks as a user of the password file, with HTTP Basic.
    pub fn as_basic(&self, user: &str, password: &str) -> Api {
        use base64::Engine;
        let encoded =
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        self.with_header("Authorization", &format!("Basic {encoded}"))
    }

    /// Speaks with a personal access token.
    pub fn as_bearer(&self, token: &str) -> Api {
        self.with_header("Authorization", &format!("Bearer {token}"))
    }

    /// A client that shows redirects instead of following them (the login flow).
    pub fn without_redirects(&self) -> Api {
        let mut api = self.clone();
        let _ = rustls::crypto::ring::default_provider().install_default();
        api.client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("a client");
        api
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// Sends a request and reads the whole answer: the one place a request leaves a test.
    pub async fn send(&self, request: reqwest::RequestBuilder) -> Reply {
        let mut request = request.build().expect("a well-formed request");
        for (name, value) in &self.headers {
            if !request.headers().contains_key(name.as_str()) {
                request.headers_mut().insert(
                    reqwest::header::HeaderName::from_bytes(name.as_bytes())
                        .expect("a header name"),
                    value.parse().expect("a header value"),
                );
            }
        }
        let what = format!("{} {}", request.method(), request.url().path());
        let response = self
            .client
            .execute(request)
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let bytes = response
            .bytes()
            .await
            .unwrap_or_else(|e| panic!("{what}: reading the body: {e}"))
            .to_vec();
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Reply {
            what,
            status,
            headers,
            body,
            bytes,
        }
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.send(self.client.get(self.url(path))).await
    }

    /// A request with a JSON body.
    pub async fn call(&self, method: Method, path: &str, body: Value) -> Reply {
        self.call_raw(method, path, body.to_string()).await
    }

    /// A request that says it carries JSON, with whatever bytes a test wants to send: malformed
    /// or oversized bodies.
    pub async fn call_raw(
        &self,
        method: Method,
        path: &str,
        body: impl Into<reqwest::Body>,
    ) -> Reply {
        self.send(
            self.client
                .request(method, self.url(path))
                .header("Content-Type", "application/json")
                .body(body),
        )
        .await
    }

    /// `POST`s `{}` to `path` and expects a 2xx; returns the body.
    pub async fn post_json_ok(&self, path: &str) -> Value {
        self.call(Method::POST, path, json!({}))
            .await
            .expect_success()
    }

    /// Stores a GoCD YAML document through `PUT /api/config/{name}`.
    pub async fn put_config(&self, name: &str, yaml: &str) -> Reply {
        self.send(
            self.client
                .put(self.url(&format!("/api/config/{name}")))
                .header("Content-Type", "application/x-yaml")
                .body(yaml.to_string()),
        )
        .await
    }

    /// A page form posted as a browser posts it.
    pub async fn post_form(&self, path: &str, body: impl Into<String>) -> Reply {
        self.send(
            self.client
                .post(self.url(path))
                .header("Content-Type", "application/x-www-form-urlencoded")
                .body(body.into()),
        )
        .await
    }

    /// A GET with an `Accept` header, as GoCD clients send one.
    pub async fn get_accepting(&self, path: &str, accept: &str) -> Reply {
        self.send(self.client.get(self.url(path)).header("Accept", accept))
            .await
    }

    pub async fn get_json(&self, path: &str) -> (u16, Value) {
        self.get(path).await.parts()
    }

    pub async fn send_json(&self, method: Method, path: &str, body: Value) -> (u16, Value) {
        self.call(method, path, body).await.parts()
    }

    /// A PUT without a body (the enable and disable shortcuts).
    pub async fn put(&self, path: &str) -> (u16, Value) {
        self.send(self.client.put(self.url(path))).await.parts()
    }

    pub async fn register_with(&self, body: Value, key: Option<&str>) -> (u16, Value) {
        let mut request = self
            .client
            .post(self.url("/api/agents/register"))
            .header("Content-Type", "application/json")
            .body(body.to_string());
        if let Some(key) = key {
            request = request.header("X-Agent-Registration-Key", key);
        }
        self.send(request).await.parts()
    }

    /// Registers a Pending agent called `hostname`.
    pub async fn register(&self, hostname: &str) -> Registered {
        let (status, body) = self
            .register_with(
                json!({"hostname": hostname, "ip_address": "10.0.0.7", "operating_system": "Linux",
                       "sandbox": "/var/lib/agent", "free_space": 1_000_000_000u64,
                       "resources": ["linux"], "agent_version": "test"}),
                None,
            )
            .await;
        assert_eq!(status, 201, "registration failed: {body}");
        Registered::from_body(&body)
    }

    /// Registers an agent and enables it.
    pub async fn register_enabled(&self, hostname: &str) -> Registered {
        let agent = self.register(hostname).await;
        let (status, body) = self
            .put(&format!("/api/agents/{}/enable", agent.uuid))
            .await;
        assert_eq!(status, 200, "enable failed: {body}");
        agent
    }

    /// Speaks as `agent`, with its own token.
    pub fn as_agent(&self, agent: &Registered) -> AgentClient<'_> {
        AgentClient {
            api: self,
            uuid: agent.uuid.clone(),
            token: Some(agent.token.clone()),
        }
    }

    pub async fn agent(&self, uuid: &str) -> Value {
        self.get(&format!("/api/agents/{uuid}")).await.expect(200)
    }

    /// The uuids of every agent listed, in the list's order.
    pub async fn agent_uuids(&self) -> Vec<String> {
        let body = self.get("/api/agents").await.expect(200);
        body["_embedded"]["agents"]
            .as_array()
            .expect("_embedded.agents")
            .iter()
            .map(|a| a["uuid"].as_str().unwrap().to_string())
            .collect()
    }

    pub async fn patch_agent(&self, uuid: &str, body: Value) -> Reply {
        self.call(Method::PATCH, &format!("/api/agents/{uuid}"), body)
            .await
    }

    pub async fn delete_agent(&self, uuid: &str) -> Reply {
        self.call(Method::DELETE, &format!("/api/agents/{uuid}"), json!({}))
            .await
    }

    pub async fn schedule(&self, body: Value) -> Reply {
        self.call(Method::POST, "/api/jobs/schedule", body).await
    }

    /// Schedules `body`, expects a Scheduled run; returns its build id.
    pub async fn schedule_ok(&self, body: Value) -> i64 {
        let run = self.schedule(body).await.expect(201);
        assert_eq!(run["state"], "Scheduled", "{run}");
        run["build_id"].as_i64().expect("a numeric build_id")
    }

    /// Schedules an ad-hoc job running `echo`; returns its build id.
    pub async fn schedule_job(&self, pipeline: &str, job: &str) -> i64 {
        self.schedule_ok(job_body(pipeline, job)).await
    }

    /// A marker for the streams: queues a job no agent can take (it needs a resource nobody
    /// offers) and returns the pending count that follows. Once a stream shows that count, it
    /// has everything its view rendered before the marker.
    pub async fn queue_marker(&self) -> u64 {
        self.schedule_ok(json!({"pipeline_name": "marker", "stage_name": "s", "job_name": "j",
                                "tasks": [{"command": "true"}], "resources": ["no-agent-has-this"]}))
            .await;
        self.pending_count().await
    }

    pub async fn pending_count(&self) -> u64 {
        let body = self.get("/api/scheduler").await.expect(200);
        body["pending_count"].as_u64().expect("a pending count")
    }

    /// `GET /api/builds/{id}`; expects the run.
    pub async fn build(&self, build_id: i64) -> Value {
        self.get(&format!("/api/builds/{build_id}"))
            .await
            .expect(200)
    }

    pub async fn cancel(&self, build_id: i64) -> Reply {
        self.call(
            Method::POST,
            &format!("/api/builds/{build_id}/cancel"),
            json!({}),
        )
        .await
    }

    /// `GET /api/builds/{id}/console[?from=N]`: the raw bytes and `X-Console-Length`.
    pub async fn console(&self, build_id: i64, from: Option<u64>) -> (Vec<u8>, String) {
        let path = match from {
            Some(from) => format!("/api/builds/{build_id}/console?from={from}"),
            None => format!("/api/builds/{build_id}/console"),
        };
        let reply = self.get(&path).await;
        assert_eq!(
            reply.status,
            200,
            "console of {build_id}: {}",
            reply.shown()
        );
        let length = match reply.header("x-console-length") {
            "" => "<missing>".to_string(),
            length => length.to_string(),
        };
        (reply.bytes, length)
    }

    /// An enabled agent holding a fresh run it has been handed (Assigned); returns both.
    pub async fn assigned_build(&self, hostname: &str) -> (Registered, i64) {
        let agent = self.register_enabled(hostname).await;
        let build_id = self.schedule_job("console", "job").await;
        let work = self.as_agent(&agent).take_work().await;
        assert_eq!(work["build_id"], build_id);
        (agent, build_id)
    }

    /// An enabled agent holding a fresh run that it has started building; returns both.
    pub async fn running_build(&self, hostname: &str) -> (Registered, i64) {
        let (agent, build_id) = self.assigned_build(hostname).await;
        self.as_agent(&agent)
            .report_ok(build_id, "Building", None)
            .await;
        (agent, build_id)
    }

    pub async fn subscribe(&self, path: &str) -> SseClient {
        SseClient::connect(&self.url(path), None).await
    }
}

/// The agent protocol, spoken as an agent would: its uuid in the path, a bearer token (its
/// own, another agent's, or none, for the tests of who may do what).
pub struct AgentClient<'a> {
    api: &'a Api,
    uuid: String,
    token: Option<String>,
}

impl AgentClient<'_> {
    pub fn with_token(mut self, token: &str) -> Self {
        self.token = Some(token.to_string());
        self
    }

    pub fn without_token(mut self) -> Self {
        self.token = None;
        self
    }

    async fn post(
        &self,
        path: &str,
        request: impl FnOnce(reqwest::RequestBuilder) -> reqwest::RequestBuilder,
    ) -> Reply {
        let mut builder = self.api.client.post(self.api.url(path));
        if let Some(token) = &self.token {
            builder = builder.bearer_auth(token);
        }
        self.api.send(request(builder)).await
    }

    async fn post_json(&self, path: &str, body: Value) -> Reply {
        self.post(path, |r| {
            r.header("Content-Type", "application/json")
                .body(body.to_string())
        })
        .await
    }

    /// `POST /api/agents/{uuid}/work`.
    pub async fn work(&self) -> Reply {
        self.post_json(&format!("/api/agents/{}/work", self.uuid), json!({}))
            .await
    }

    /// Asks for work and expects some; returns the WORK.
    pub async fn take_work(&self) -> Value {
        self.work().await.expect(200)
    }

    /// Reports `job_state` (and `result`) for a build.
    pub async fn report(&self, build_id: i64, job_state: &str, result: Option<&str>) -> Reply {
        let mut body = json!({ "job_state": job_state });
        if let Some(result) = result {
            body["result"] = json!(result);
        }
        self.post_json(&format!("/api/builds/{build_id}/status"), body)
            .await
    }

    /// Reports and expects the run back.
    pub async fn report_ok(&self, build_id: i64, job_state: &str, result: Option<&str>) -> Value {
        self.report(build_id, job_state, result).await.expect(200)
    }

    /// Raw console bytes at `X-Console-Offset: offset` (no header when `None`).
    pub async fn append(&self, build_id: i64, offset: Option<u64>, bytes: &[u8]) -> Reply {
        self.post(&format!("/api/builds/{build_id}/console"), |r| {
            let r = r.header("Content-Type", "text/plain").body(bytes.to_vec());
            match offset {
                Some(offset) => r.header("X-Console-Offset", offset.to_string()),
                None => r,
            }
        })
        .await
    }

    /// Appends and expects it stored; returns the new stored length.
    pub async fn append_ok(&self, build_id: i64, offset: usize, bytes: &[u8]) -> i64 {
        let body = self
            .append(build_id, Some(offset as u64), bytes)
            .await
            .expect(200);
        body["offset"].as_i64().expect("offset")
    }

    pub async fn ping(&self, body: Value) -> Reply {
        self.post_json(&format!("/api/agents/{}/ping", self.uuid), body)
            .await
    }

    /// Re-registration: `POST /api/agents/register` with the token.
    pub async fn register(&self, body: Value) -> Reply {
        self.post_json("/api/agents/register", body).await
    }
}

#[derive(Debug, Clone, Default)]
pub struct SseEvent {
    pub event: String,
    pub id: String,
    pub data: String,
}

/// Reads a `text/event-stream` response line by line, as the SSE spec parses it.
pub struct SseClient {
    events: mpsc::UnboundedReceiver<SseEvent>,
    pub comments: mpsc::UnboundedReceiver<String>,
    pub content_type: String,
    pub cache_control: String,
}

impl SseClient {
    pub async fn connect(url: &str, last_event_id: Option<&str>) -> SseClient {
        let mut request = http_client().get(url).header("Accept", "text/event-stream");
        if let Some(id) = last_event_id {
            request = request.header("Last-Event-ID", id);
        }
        let response = request.send().await.expect("stream request");
        assert_eq!(
            response.status(),
            200,
            "stream {url} answered {}",
            response.status()
        );
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string()
        };
        let content_type = header("content-type");
        let cache_control = header("cache-control");
        let (tx, events) = mpsc::unbounded_channel();
        let (comment_tx, comments) = mpsc::unbounded_channel();
        let mut body = response.bytes_stream();
        tokio::spawn(async move {
            let mut buffer: Vec<u8> = Vec::new();
            let mut current = SseEvent::default();
            let mut has_data = false;
            while let Some(Ok(chunk)) = body.next().await {
                buffer.extend_from_slice(&chunk);
                while let Some(end) = buffer.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = buffer.drain(..=end).collect();
                    let line = String::from_utf8_lossy(&line[..line.len() - 1]).to_string();
                    let line = line.strip_suffix('\r').unwrap_or(&line).to_string();
                    if line.is_empty() {
                        if has_data && tx.send(std::mem::take(&mut current)).is_err() {
                            return;
                        }
                        current = SseEvent {
                            id: String::new(),
                            ..Default::default()
                        };
                        has_data = false;
                    } else if let Some(comment) = line.strip_prefix(':') {
                        let _ = comment_tx.send(comment.trim().to_string());
                    } else {
                        let (field, value) = line.split_once(':').unwrap_or((&line, ""));
                        let value = value.strip_prefix(' ').unwrap_or(value);
                        match field {
                            "event" => current.event = value.to_string(),
                            "id" => current.id = value.to_string(),
                            "data" => {
                                if has_data {
                                    current.data.push('\n');
                                }
                                current.data.push_str(value);
                                has_data = true;
                            }
                            _ => {}
                        }
                    }
                }
            }
        });
        SseClient {
            events,
            comments,
            content_type,
            cache_control,
        }
    }

    /// The next event, or `None` once the stream has ended.
    pub async fn next(&mut self) -> Option<SseEvent> {
        tokio::time::timeout(DEADLINE, self.events.recv())
            .await
            .expect("no event within the deadline")
    }

    /// Reads events until one satisfies `matches`; panics at the deadline.
    pub async fn wait_for(&mut self, what: &str, matches: impl Fn(&SseEvent) -> bool) -> SseEvent {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
            match tokio::time::timeout(remaining, self.events.recv()).await {
                Ok(Some(event)) if matches(&event) => return event,
                Ok(Some(other)) => {
                    // SSE_DEBUG=1 shows what a waiting test passed over.
                    if std::env::var("SSE_DEBUG").is_ok() {
                        let head: String = other.data.chars().take(150).collect();
                        eprintln!("skipped {}: {head}", other.event);
                    }
                    continue;
                }
                Ok(None) => panic!("stream ended while waiting for {what}"),
                Err(_) => panic!("no {what} within {DEADLINE:?}"),
            }
        }
    }

    /// Events already received, without waiting.
    pub fn drain(&mut self) -> Vec<SseEvent> {
        let mut out = Vec::new();
        while let Ok(event) = self.events.try_recv() {
            out.push(event);
        }
        out
    }
}

/// Polls `check` until it returns `Some`, or panics at the deadline.
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("{what}: not within {DEADLINE:?}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// What a browser's `textContent` of console HTML would be: tags dropped, the entities our
/// fragments use decoded (`&#13;` is a carriage return).
pub fn text_content(html: &str) -> String {
    let mut out = String::new();
    let mut rest = html;
    while let Some(c) = rest.chars().next() {
        if c == '<' {
            let end = rest.find('>').expect("a closed tag");
            rest = &rest[end + 1..];
        } else if c == '&' {
            let end = rest.find(';').expect("a closed entity");
            out.push_str(match &rest[1..end] {
                "amp" => "&",
                "lt" => "<",
                "gt" => ">",
                "quot" => "\"",
                "#39" => "'",
                "#13" => "\r",
                other => panic!("unexpected entity &{other};"),
            });
            rest = &rest[end + 1..];
        } else {
            out.push(c);
            rest = &rest[c.len_utf8()..];
        }
    }
    out
}

/// `/agents` as a fresh load shows it: the table's rows in order (the `<tr>` markup of each),
/// the counts strip's text and the queued count.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AgentsPage {
    pub rows: Vec<AgentRow>,
    pub counts: String,
    pub queued: String,
}

/// One `<tr id="agent-…">` of the agents table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentRow {
    pub id: String,
    pub config_state: String,
    pub agent_state: String,
    /// The row's whole markup, as the page or a fragment holds it.
    pub html: String,
}

impl AgentRow {
    /// What a browser test can read of a row: its id and its two states.
    pub fn summary(&self) -> (String, String, String) {
        (
            self.id.clone(),
            self.config_state.clone(),
            self.agent_state.clone(),
        )
    }
}

/// The value of `name="…"` in the first tag of `html`.
pub fn attribute(html: &str, name: &str) -> Option<String> {
    let tag_end = html.find('>')?;
    let tag = &html[..tag_end];
    let needle = format!(" {name}=\"");
    let start = tag.find(&needle)? + needle.len();
    let len = tag[start..].find('"')?;
    Some(tag[start..start + len].to_string())
}

/// Every `<tr … id="agent-…">…</tr>` in `html`, in order. Our rows hold no nested table, and
/// every text in them is escaped, so the next `</tr>` ends each one.
pub fn agent_rows(html: &str) -> Vec<AgentRow> {
    let mut rows = Vec::new();
    let mut rest = html;
    while let Some(start) = rest.find("<tr ") {
        let tail = &rest[start..];
        let tag = &tail[..tail.find('>').expect("a closed tag")];
        if !tag.contains(" id=\"agent-") {
            rest = &tail[4..];
            continue;
        }
        let end = tail.find("</tr>").expect("a closed row") + "</tr>".len();
        let row = &tail[..end];
        rows.push(AgentRow {
            id: attribute(row, "id").expect("a row id"),
            config_state: attribute(row, "data-config-state").unwrap_or_default(),
            agent_state: attribute(row, "data-agent-state").unwrap_or_default(),
            html: row.to_string(),
        });
        rest = &tail[end..];
    }
    rows
}

/// The inner markup of the element that opens with `open` (e.g. `<div id="agent-counts"`),
/// up to the first `close` after it.
fn inner<'a>(html: &'a str, open: &str, close: &str) -> &'a str {
    let start = html
        .find(open)
        .unwrap_or_else(|| panic!("no {open} in the page"));
    let body_start = start + html[start..].find('>').expect("a closed tag") + 1;
    let len = html[body_start..]
        .find(close)
        .unwrap_or_else(|| panic!("{open} is not closed by {close}"));
    &html[body_start..body_start + len]
}

impl AgentsPage {
    /// Parses a full `/agents` page.
    pub fn parse(html: &str) -> AgentsPage {
        AgentsPage {
            rows: agent_rows(inner(html, "<tbody id=\"agents-body\"", "</tbody>")),
            counts: text_content(inner(html, "<div id=\"agent-counts\"", "</div>")),
            queued: text_content(inner(html, "<span id=\"queued-count\"", "</span>")),
        }
    }

    /// The row ids with their states, in order.
    pub fn summary(&self) -> Vec<(String, String, String)> {
        self.rows.iter().map(AgentRow::summary).collect()
    }
}

impl Api {
    /// `GET /agents`, parsed.
    pub async fn fresh_agents_page(&self) -> AgentsPage {
        let reply = self.get("/agents").await;
        assert_eq!(reply.status, 200, "GET /agents");
        AgentsPage::parse(&reply.text())
    }
}

/// What a script reading `/agents/events` builds: rows by id from `agents` (all rows),
/// `agent-added` and `agent-{uuid}` (one row; empty data removes it), plus the last `counts`
/// and `queued`. Applied by a task as events arrive; `bytes` counts what the stream carried.
#[derive(Clone, Default)]
pub struct AgentsMirror {
    state: std::sync::Arc<std::sync::Mutex<MirrorState>>,
}

#[derive(Default)]
struct MirrorState {
    rows: std::collections::BTreeMap<String, AgentRow>,
    counts: String,
    queued: String,
    events: Vec<(String, usize)>,
}

impl AgentsMirror {
    /// Follows `/agents/events` of `app` until the test ends.
    pub async fn follow(app: &TestApp) -> AgentsMirror {
        let mut stream = app.subscribe("/agents/events").await;
        let mirror = AgentsMirror::default();
        let state = std::sync::Arc::clone(&mirror.state);
        tokio::spawn(async move {
            while let Some(event) = stream.events.recv().await {
                let mut state = state.lock().unwrap();
                state.events.push((event.event.clone(), event.data.len()));
                state.apply(&event);
            }
        });
        mirror
    }

    /// Rows (by id), counts and queued as this client has them now.
    pub fn page(&self) -> (Vec<AgentRow>, String, String) {
        let state = self.state.lock().unwrap();
        (
            state.rows.values().cloned().collect(),
            state.counts.clone(),
            state.queued.clone(),
        )
    }

    /// The names and data sizes of every event received so far.
    pub fn events(&self) -> Vec<(String, usize)> {
        self.state.lock().unwrap().events.clone()
    }

    /// How it differs from a fresh load (rows compared by id, markup and all); empty if equal.
    pub fn differences(&self, fresh: &AgentsPage) -> Vec<String> {
        let (rows, counts, queued) = self.page();
        let mut out = Vec::new();
        let mine: std::collections::BTreeMap<_, _> =
            rows.iter().map(|r| (r.id.clone(), r)).collect();
        let theirs: std::collections::BTreeMap<_, _> =
            fresh.rows.iter().map(|r| (r.id.clone(), r)).collect();
        for (id, row) in &theirs {
            match mine.get(id) {
                None => out.push(format!(
                    "missing {id} ({}/{})",
                    row.config_state, row.agent_state
                )),
                Some(have) if have.html != row.html => out.push(format!(
                    "{id} differs:\n      stream: {}\n      fresh:  {}",
                    have.html, row.html
                )),
                Some(_) => {}
            }
        }
        for id in mine.keys().filter(|id| !theirs.contains_key(*id)) {
            out.push(format!("extra {id}"));
        }
        if counts != fresh.counts {
            out.push(format!("counts {counts:?}, fresh {:?}", fresh.counts));
        }
        if queued != fresh.queued {
            out.push(format!("queued {queued:?}, fresh {:?}", fresh.queued));
        }
        out
    }
}

impl MirrorState {
    fn apply(&mut self, event: &SseEvent) {
        match event.event.as_str() {
            "agents" => {
                self.rows = agent_rows(&event.data)
                    .into_iter()
                    .map(|r| (r.id.clone(), r))
                    .collect();
            }
            "counts" => self.counts = text_content(&event.data),
            "queued" => self.queued = event.data.clone(),
            "agent-added" => {
                for row in agent_rows(&event.data) {
                    self.rows.insert(row.id.clone(), row);
                }
            }
            name if name.starts_with("agent-") => {
                if event.data.trim().is_empty() {
                    self.rows.remove(name);
                } else {
                    for row in agent_rows(&event.data) {
                        self.rows.insert(row.id.clone(), row);
                    }
                }
            }
            _ => {}
        }
    }
}

/// The users of [`spawn_team_app`]: alice is an admin, bob is not.
pub const ALICE: (&str, &str) = ("alice", "alice-secret");
pub const BOB: (&str, &str) = ("bob", "bob-secret");

/// An htpasswd file's text for `users` (bcrypt at the lowest cost, to keep tests quick).
pub fn htpasswd(users: &[(&str, &str)]) -> String {
    users
        .iter()
        .map(|(user, password)| {
            format!(
                "{user}:{}\n",
                bcrypt::hash(password, 4).expect("a bcrypt hash")
            )
        })
        .collect()
}

/// A server with a password file (alice, an admin, and bob) and `configure` on top.
pub async fn spawn_team_app_with(configure: impl FnOnce(&mut Config)) -> TestApp {
    spawn_app_with(|config| {
        let file = config.data_dir.join("passwords");
        std::fs::write(&file, htpasswd(&[ALICE, BOB])).expect("the password file is written");
        config.password_file = Some(file);
        config.admins = vec![ALICE.0.to_string()];
        configure(config);
    })
    .await
}

pub async fn spawn_team_app() -> TestApp {
    spawn_team_app_with(|_| {}).await
}
