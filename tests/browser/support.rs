//! The browser rig: finds Chromium and chromedriver, runs chromedriver on a free port, opens
//! headless sessions with fresh profiles, and polls the page for conditions.
//!
//! Nothing here sleeps for a fixed time to "let things settle": every wait polls a condition
//! (every `POLL`) until a generous deadline, and says what it saw when it gives up.

use std::fs::File;
use std::future::Future;
use std::io::Write;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use futures::FutureExt;
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::time::Instant;

use crate::helpers::{DEADLINE, TestApp};

/// How often a wait looks again.
const POLL: Duration = Duration::from_millis(50);

/// How long chromedriver may take to answer at all (a cold start on a loaded machine).
const DRIVER_STARTUP: Duration = Duration::from_secs(60);

/// Cargo runs tests on threads; browsers are heavy and chromedriver ports are shared
/// resources, so browser tests take turns. (A tokio mutex: a panicking test cannot poison it.)
static BROWSER_LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const CHROMIUM_ARGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--window-size=1280,900",
];

/// Runs `body` with a browser rig, one test at a time. Skips (or, with `CI=true`, fails)
/// when Chromium or chromedriver is missing. Sessions are closed and chromedriver stopped
/// whether the body passes or panics.
pub async fn browser_test<F, Fut>(test: &str, body: F)
where
    F: FnOnce(Rig) -> Fut,
    Fut: Future<Output = ()>,
{
    let _turn = BROWSER_LOCK.lock().await;
    let Some((chromium, chromedriver)) = find_browser(test) else {
        return;
    };
    let driver = Driver::start(&chromedriver).await;
    let rig = Rig(Arc::new(RigInner {
        webdriver: driver.url.clone(),
        chromium,
        sessions: Mutex::new(Vec::new()),
        profiles: Mutex::new(Vec::new()),
    }));
    let outcome = AssertUnwindSafe(body(rig.clone())).catch_unwind().await;
    // Every browser test also checks that the pages needed nothing the policy forbids.
    let violations = rig.csp_violations().await;
    rig.close_all().await;
    drop(driver);
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
    assert!(
        violations.is_empty(),
        "{test}: the Content-Security-Policy stopped something:\n{}",
        violations.join("\n")
    );
}

/// `chromium` and `chromedriver` from `PATH`, or `None` after a loud banner (a panic with
/// `CI=true`, where a missing browser must not pass as a skip).
fn find_browser(test: &str) -> Option<(PathBuf, PathBuf)> {
    let chromium = on_path("chromium");
    let chromedriver = on_path("chromedriver");
    if let (Some(chromium), Some(chromedriver)) = (&chromium, &chromedriver) {
        return Some((chromium.clone(), chromedriver.clone()));
    }
    let missing: Vec<&str> = [("chromium", &chromium), ("chromedriver", &chromedriver)]
        .into_iter()
        .filter(|(_, found)| found.is_none())
        .map(|(name, _)| name)
        .collect();
    let missing = missing.join(" and ");
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!(
            "browser test {test}: {missing} not found on PATH, and CI=true requires the browser \
             tests to run (Debian: apt-get install chromium chromium-driver)"
        );
    }
    // Straight to the process's stderr: `eprintln!` in a passing test is captured by the
    // test harness, and a skip must not go unnoticed.
    let bar = "!".repeat(78);
    let banner = format!(
        "\n{bar}\n!!  BROWSER TEST SKIPPED: {test}\n!!  {missing} not found on PATH.\n!!  \
         Install them to run the browser tests (Debian: apt-get install chromium \
         chromium-driver).\n!!  With CI=true a missing browser fails the test instead.\n{bar}\n"
    );
    let _ = std::io::stderr().write_all(banner.as_bytes());
    None
}

fn on_path(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| {
            candidate
                .metadata()
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        })
}

/// A chromedriver we started; killed (with any browser it left behind) when dropped.
struct Driver {
    child: Child,
    url: String,
    _logs: Option<TempDir>,
}

impl Driver {
    async fn start(chromedriver: &Path) -> Driver {
        let logs = tempfile::tempdir().expect("temp dir for chromedriver's log");
        // The free port is found by binding and releasing it, so another process may take it
        // in between: then chromedriver exits, and we try again on another port.
        for attempt in 1..=3 {
            let port = free_port();
            let log_path = logs.path().join(format!("chromedriver-{attempt}.log"));
            let log = File::create(&log_path).expect("chromedriver log file");
            let child = Command::new(chromedriver)
                .arg(format!("--port={port}"))
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("log file handle"))
                .stderr(log)
                // Its own process group, so a browser it leaves behind goes with it.
                .process_group(0)
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {}: {e}", chromedriver.display()));
            let mut driver = Driver {
                child,
                url: format!("http://127.0.0.1:{port}"),
                _logs: None,
            };
            if driver.wait_ready(&log_path).await {
                driver._logs = Some(logs);
                return driver;
            }
            eprintln!(
                "chromedriver exited on port {port} (attempt {attempt}):\n{}",
                std::fs::read_to_string(&log_path).unwrap_or_default()
            );
        }
        panic!("chromedriver did not start in three attempts");
    }

    /// Polls `GET /status` until chromedriver says it is ready (`true`), or it exited
    /// (`false`); panics at the deadline with its log.
    async fn wait_ready(&mut self, log_path: &Path) -> bool {
        let client = crate::helpers::http_client();
        let deadline = Instant::now() + DRIVER_STARTUP;
        loop {
            if let Ok(Some(_)) = self.child.try_wait() {
                return false;
            }
            let answer = client
                .get(format!("{}/status", self.url))
                .timeout(Duration::from_secs(2))
                .send()
                .await;
            if let Ok(response) = answer
                && let Ok(status) = response.json::<Value>().await
                && status["value"]["ready"] == json!(true)
            {
                return true;
            }
            if Instant::now() > deadline {
                panic!(
                    "chromedriver at {} did not become ready within {DRIVER_STARTUP:?}; its log:\n{}",
                    self.url,
                    std::fs::read_to_string(log_path).unwrap_or_default()
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // Sessions were closed already; this is for a browser a failed close left running.
        // The group id is chromedriver's pid (`process_group(0)`), so this reaches only it and
        // the browsers it started.
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill")
            .args(["-s", "KILL", "--", &group])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free local port")
        .port()
}

/// Opens browser sessions on one chromedriver and closes them all at the end.
#[derive(Clone)]
pub struct Rig(Arc<RigInner>);

struct RigInner {
    webdriver: String,
    chromium: PathBuf,
    sessions: Mutex<Vec<Client>>,
    profiles: Mutex<Vec<TempDir>>,
}

impl Rig {
    /// A new headless Chromium (its own fresh profile) showing `url`. `name` labels failures.
    pub async fn open(&self, name: &str, url: &str) -> Page {
        let profile = tempfile::tempdir().expect("temp dir for a browser profile");
        let mut args: Vec<String> = CHROMIUM_ARGS.iter().map(|a| a.to_string()).collect();
        args.push(format!("--user-data-dir={}", profile.path().display()));
        let mut capabilities = serde_json::Map::new();
        capabilities.insert("browserName".into(), json!("chrome"));
        capabilities.insert(
            "goog:chromeOptions".into(),
            json!({ "binary": self.0.chromium, "args": args }),
        );
        let client = ClientBuilder::new(HttpConnector::new())
            .capabilities(capabilities)
            .connect(&self.0.webdriver)
            .await
            .unwrap_or_else(|e| panic!("[{name}] chromedriver could not start Chromium: {e}"));
        self.0.sessions.lock().unwrap().push(client.clone());
        self.0.profiles.lock().unwrap().push(profile);
        // Its own window's handle: once `open_window` adds others beside it, every call
        // through this page switches back to it first.
        let window = client
            .window()
            .await
            .unwrap_or_else(|e| panic!("[{name}] has no window: {e}"));
        let page = Page {
            client,
            name: name.to_string(),
            window: Some(window),
        };
        page.client
            .goto(url)
            .await
            .unwrap_or_else(|e| panic!("[{name}] cannot open {url}: {e}"));
        page
    }

    /// Another window of `beside`'s browser (the same Chromium, profile and connection
    /// limits) showing `url`. Every call through the returned page switches to its window.
    pub async fn open_window(&self, beside: &Page, name: &str, url: &str) -> Page {
        let opened = beside
            .client
            .new_window(false)
            .await
            .unwrap_or_else(|e| panic!("[{name}] cannot open a window: {e}"));
        let page = Page {
            client: beside.client.clone(),
            name: name.to_string(),
            window: Some(opened.handle),
        };
        page.focus().await;
        page.client
            .goto(url)
            .await
            .unwrap_or_else(|e| panic!("[{name}] cannot open {url}: {e}"));
        page
    }

    /// What `live.js` kept of the policy's violations, in every window of every session.
    async fn csp_violations(&self) -> Vec<String> {
        let sessions: Vec<Client> = self.0.sessions.lock().unwrap().clone();
        let mut found = Vec::new();
        for session in sessions {
            let Ok(Ok(windows)) = tokio::time::timeout(DEADLINE, session.windows()).await else {
                continue;
            };
            for window in windows {
                if session.switch_to_window(window).await.is_err() {
                    continue;
                }
                let kept = session
                    .execute(
                        "try { return sessionStorage.getItem('ferrocd.csp') || ''; } \
                         catch (_) { return ''; }",
                        vec![],
                    )
                    .await
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default();
                found.extend(kept.lines().map(str::to_string));
            }
        }
        found
    }

    async fn close_all(&self) {
        let sessions = std::mem::take(&mut *self.0.sessions.lock().unwrap());
        for session in sessions {
            let _ = tokio::time::timeout(DEADLINE, session.close()).await;
        }
    }
}

/// One browser session (one tab), with the waits and probes the tests use.
pub struct Page {
    pub client: Client,
    name: String,
    /// Its window in its browser (which `Rig::open_window` may share with other pages).
    window: Option<fantoccini::wd::WindowHandle>,
}

/// A script's answer that counts as "not yet".
fn falsy(value: &Value) -> bool {
    matches!(value, Value::Null | Value::Bool(false))
        || value.as_str() == Some("")
        || value.as_u64() == Some(0)
}

impl Page {
    /// Makes this page's window the one its browser's commands go to.
    async fn focus(&self) {
        // Only when another window is current: switching resets the frame a test entered.
        if let Some(window) = &self.window
            && self.client.window().await.ok().as_ref() != Some(window)
        {
            self.client
                .switch_to_window(window.clone())
                .await
                .unwrap_or_else(|e| panic!("[{}] cannot switch to its window: {e}", self.name));
        }
    }

    /// Runs `script` (a function body: use `return`, read `arguments[i]`).
    pub async fn js(&self, script: &str, args: Vec<Value>) -> Value {
        self.focus().await;
        self.client
            .execute(script, args)
            .await
            .unwrap_or_else(|e| panic!("[{}] script failed: {e}\n{script}", self.name))
    }

    /// Polls `script` until it returns something truthy, and returns that.
    pub async fn wait_js(&self, what: &str, script: &str, args: Vec<Value>) -> Value {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let value = self.js(script, args.clone()).await;
            if !falsy(&value) {
                return value;
            }
            if Instant::now() > deadline {
                panic!(
                    "[{}] {what}: not within {DEADLINE:?}; last answer {value}\n{}",
                    self.name,
                    self.describe().await
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// What the page shows, for failure messages.
    pub async fn describe(&self) -> String {
        let script = r##"
            const text = (sel) => { const e = document.querySelector(sel); return e ? e.textContent.trim() : "(absent)"; };
            const filter = document.getElementById("agent-filter");
            const rows = Array.from(document.querySelectorAll("#agents-body > tr")).map((r) => {
                const box = r.querySelector(".agent-select");
                const host = r.querySelector(".hostname");
                return r.id + " " + (host ? host.textContent : "?") + " agent=" + r.dataset.agentState +
                    " config=" + r.dataset.configState + " hidden=" + r.hidden +
                    " checked=" + (box ? box.checked : "?");
            });
            const badge = document.getElementById("live-badge");
            const live = "\n  stream=" + (badge ? badge.dataset.state : "(no badge)");
            const pre = document.getElementById("console");
            if (pre) {
                const status = document.getElementById("run-status");
                return "page " + location.href + live + "\n  run-status=" +
                    (status ? status.dataset.state + "/" + status.dataset.result : "(absent)") +
                    " console data-end=" + pre.dataset.end +
                    "\n  console text=" + JSON.stringify(pre.textContent);
            }
            return "page " + location.href + live + "\n  queued=" + text("#queued-count") +
                " filter=" + JSON.stringify(filter ? filter.value : null) +
                "\n  flash=" + JSON.stringify(text("#flash")) +
                "\n  rows:\n    " + rows.join("\n    ");
        "##;
        match self.client.execute(script, vec![]).await {
            Ok(Value::String(s)) => s,
            Ok(other) => other.to_string(),
            Err(e) => format!("(could not read the page: {e})"),
        }
    }

    /// Finds and clicks the element. A live swap may replace it between the two (a stale
    /// element), so this tries again, up to the deadline.
    pub async fn click(&self, locator: Locator<'_>) {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let attempt = match self.client.find(locator).await {
                Ok(element) => element.click().await,
                Err(e) => Err(e),
            };
            match attempt {
                Ok(()) => return,
                Err(e) if Instant::now() > deadline => panic!(
                    "[{}] cannot click {locator:?}: {e}\n{}",
                    self.name,
                    self.describe().await
                ),
                Err(_) => tokio::time::sleep(POLL).await,
            }
        }
    }

    /// Types `text` into the field, key by key, as a person would.
    pub async fn type_into(&self, css: &str, text: &str) {
        let element = self
            .client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("[{}] no {css}: {e}", self.name));
        element
            .send_keys(text)
            .await
            .unwrap_or_else(|e| panic!("[{}] cannot type into {css}: {e}", self.name));
    }

    /// Clicks the toolbar button labelled `label` (Enable, Disable, Delete), once the
    /// selection has enabled it.
    pub async fn click_toolbar(&self, label: &str) {
        let xpath = format!(
            "//section[contains(@class,'toolbar')]//div[contains(@class,'actions')]\
             /button[normalize-space()='{label}']"
        );
        self.wait_js(
            &format!("the {label} button to be enabled"),
            "const b = document.evaluate(arguments[0], document, null, \
             XPathResult.FIRST_ORDERED_NODE_TYPE, null).singleNodeValue; \
             return b !== null && !b.disabled;",
            vec![json!(xpath)],
        )
        .await;
        self.click(Locator::XPath(&xpath)).await;
    }

    /// Ticks agent `uuid`'s checkbox by clicking it.
    pub async fn select_agent(&self, uuid: &str) {
        let css = format!("#agent-{uuid} .agent-select");
        self.click(Locator::Css(&css)).await;
        assert!(
            self.is_checked(uuid).await,
            "[{}] clicking {css} did not check it",
            self.name
        );
    }

    pub async fn text(&self, css: &str) -> String {
        let value = self
            .js(
                "const e = document.querySelector(arguments[0]); \
                 return e === null ? null : e.textContent.trim();",
                vec![json!(css)],
            )
            .await;
        value.as_str().map(str::to_string).unwrap_or_else(|| {
            panic!("[{}] no element {css}", self.name);
        })
    }

    pub async fn wait_text(&self, css: &str, expected: &str) {
        self.wait_js(
            &format!("{css} to read {expected:?}"),
            "const e = document.querySelector(arguments[0]); \
             return e !== null && e.textContent.trim() === arguments[1];",
            vec![json!(css), json!(expected)],
        )
        .await;
    }

    pub async fn wait_text_contains(&self, css: &str, expected: &str) {
        self.wait_js(
            &format!("{css} to contain {expected:?}"),
            "const e = document.querySelector(arguments[0]); \
             return e !== null && e.textContent.includes(arguments[1]);",
            vec![json!(css), json!(expected)],
        )
        .await;
    }

    /// Waits until agent `uuid`'s row has `attribute` equal to `expected`.
    pub async fn wait_row_attr(&self, uuid: &str, attribute: &str, expected: &str) {
        self.wait_js(
            &format!("row {uuid} to have {attribute}={expected:?}"),
            "const r = document.getElementById('agent-' + arguments[0]); \
             return r !== null && r.getAttribute(arguments[1]) === arguments[2];",
            vec![json!(uuid), json!(attribute), json!(expected)],
        )
        .await;
    }

    pub async fn wait_row_present(&self, uuid: &str) {
        self.wait_js(
            &format!("row {uuid} to appear"),
            "return document.getElementById('agent-' + arguments[0]) !== null;",
            vec![json!(uuid)],
        )
        .await;
    }

    pub async fn wait_row_gone(&self, uuid: &str) {
        self.wait_js(
            &format!("row {uuid} to disappear"),
            "return document.getElementById('agent-' + arguments[0]) === null;",
            vec![json!(uuid)],
        )
        .await;
    }

    pub async fn row_attr(&self, uuid: &str, attribute: &str) -> Option<String> {
        self.js(
            "const r = document.getElementById('agent-' + arguments[0]); \
             return r === null ? null : r.getAttribute(arguments[1]);",
            vec![json!(uuid), json!(attribute)],
        )
        .await
        .as_str()
        .map(str::to_string)
    }

    pub async fn is_checked(&self, uuid: &str) -> bool {
        let value = self
            .js(
                "const b = document.querySelector('#agent-' + arguments[0] + ' .agent-select'); \
                 return b === null ? null : b.checked;",
                vec![json!(uuid)],
            )
            .await;
        value
            .as_bool()
            .unwrap_or_else(|| panic!("[{}] agent {uuid} has no row/checkbox", self.name))
    }

    /// Whether a person sees agent `uuid`'s row (it is rendered: not `display: none`, in
    /// itself or an ancestor). Checked in one script, so a concurrent swap cannot leave a
    /// stale element between finding the row and asking about it.
    pub async fn row_shown(&self, uuid: &str) -> bool {
        let value = self
            .js(
                "const r = document.getElementById('agent-' + arguments[0]); \
                 return r === null ? null : r.getClientRects().length > 0;",
                vec![json!(uuid)],
            )
            .await;
        value
            .as_bool()
            .unwrap_or_else(|| panic!("[{}] agent {uuid} has no row", self.name))
    }

    /// Tags every row element now in the table, so `row_replaced` can tell later whether a
    /// swap put a new element in its place (state re-applied) or left the old one alone.
    pub async fn tag_rows(&self) {
        self.js(
            "document.querySelectorAll('#agents-body > tr').forEach((r) => { r.__oldRow = true; }); \
             return null;",
            vec![],
        )
        .await;
    }

    pub async fn row_replaced(&self, uuid: &str) -> bool {
        self.js(
            "const r = document.getElementById('agent-' + arguments[0]); \
             return r !== null && r.__oldRow !== true;",
            vec![json!(uuid)],
        )
        .await
        .as_bool()
        .unwrap_or(false)
    }

    pub async fn filter_value(&self) -> String {
        self.js(
            "return document.getElementById('agent-filter').value;",
            vec![],
        )
        .await
        .as_str()
        .unwrap_or_default()
        .to_string()
    }
}

/// Makes sure each page's event stream is open and being swapped before a test changes
/// anything, so a change cannot fall between page load and stream connect unnoticed.
///
/// How: queue a job no agent can take (a fresh pending count) and wait until every page's
/// `#queued-count` shows it. The pages were rendered before the job was queued, so their
/// HTML holds an older number; the new one can only arrive through `/agents/events`, either
/// as a live `queued` event or in the state sent on connect. Either way the stream is then
/// connected and subscribed (the server subscribes before it sends state), and the state it
/// sent on connect (`agents`, `counts`, then `queued`) has been swapped already, so it cannot
/// later overwrite what the test does. Tagging a DOM node and waiting for the first swap
/// would race with a stream that connected before the tag was set; htmx's EventSource is
/// internal and not worth reaching into. Returns the pending count the pages show now (the
/// marker job stays queued).
pub async fn sync_streams(app: &TestApp, pages: &[&Page]) -> u64 {
    let token = app.queue_marker().await;
    for page in pages {
        page.wait_text("#queued-count", &token.to_string()).await;
    }
    token
}

/// Run-page and stream helpers.
impl Page {
    /// Waits until the page's event stream is open: the header's badge says `live` (set on
    /// `htmx:sseOpen`, when the response headers arrived; the server subscribes the
    /// connection before it answers, so what happens from here reaches the page live).
    pub async fn wait_live(&self) {
        self.wait_js(
            "the event stream to be open (#live-badge live)",
            "const b = document.getElementById('live-badge'); \
             return b !== null && b.dataset.state === 'live';",
            vec![],
        )
        .await;
    }

    /// Waits until the element `css` has every attribute in `expected` with that value.
    pub async fn wait_attrs(&self, css: &str, expected: &[(&str, &str)]) {
        let pairs: Vec<Value> = expected.iter().map(|(a, v)| json!([a, v])).collect();
        self.wait_js(
            &format!("{css} to have {expected:?}"),
            "const e = document.querySelector(arguments[0]); \
             return e !== null && arguments[1].every(([a, v]) => e.getAttribute(a) === v);",
            vec![json!(css), json!(pairs)],
        )
        .await;
    }

    /// Leaves a mark on this document's `window`; `assert_not_reloaded` checks it is still
    /// there (a reload or navigation would have lost it).
    pub async fn mark_document(&self) {
        self.js("window.__testMarker = 42; return null;", vec![])
            .await;
    }

    pub async fn assert_not_reloaded(&self) {
        let marker = self
            .js(
                "return window.__testMarker === undefined ? null : window.__testMarker;",
                vec![],
            )
            .await;
        assert_eq!(
            marker,
            json!(42),
            "[{}] the page was reloaded\n{}",
            self.name,
            self.describe().await
        );
    }

    /// The console's text content (what `#console` holds, hidden parts included).
    pub async fn console_text(&self) -> String {
        self.js(
            "const e = document.getElementById('console'); return e === null ? null : e.textContent;",
            vec![],
        )
        .await
        .as_str()
        .unwrap_or_else(|| panic!("[{}] no #console", self.name))
        .to_string()
    }

    /// Waits until `#console` shows the log up to byte `offset` (its `data-end`, which the
    /// page advances as it takes in `console` events).
    pub async fn wait_console_end(&self, offset: i64) {
        self.wait_js(
            &format!("#console to show the log up to byte {offset}"),
            "const e = document.getElementById('console'); \
             return e !== null && Number(e.dataset.end) >= arguments[0];",
            vec![json!(offset)],
        )
        .await;
    }
}

/// What a browser's `#console` text content should be for `log`: the stored bytes as lossy
/// UTF-8 with the given escape sequences (which the page drops) taken out.
pub fn console_text_of(log: &[u8], escapes: &[&str]) -> String {
    let mut text = String::from_utf8_lossy(log).into_owned();
    for escape in escapes {
        text = text.replace(escape, "");
    }
    text
}

/// One event-stream request that reached a `FaultyProxy`.
#[derive(Debug, Clone)]
pub struct StreamRequest {
    /// The request target (path and query).
    pub target: String,
    /// Its `Last-Event-ID` header, if it sent one.
    pub last_event_id: Option<String>,
    /// Whether the proxy answered `503` instead of passing it on.
    pub refused: bool,
}

/// An HTTP/1.1 proxy in front of the app that the test can make drop event streams and
/// refuse new ones, to bring about what a flaky network does to a page, in a real browser.
///
/// Each client connection carries one request (the proxy asks the app for
/// `Connection: close`, so the browser opens a new connection for the next one); a request
/// whose `Accept` names `text/event-stream` is an event stream: recorded, and refused or cut
/// on demand. Everything else passes through untouched.
pub struct FaultyProxy {
    pub base: String,
    inner: Arc<ProxyInner>,
    stop: tokio_util::sync::CancellationToken,
}

struct ProxyInner {
    upstream: String,
    refuse: std::sync::atomic::AtomicBool,
    /// While set, what the app sends on event streams is kept in `held`, not forwarded.
    hold: std::sync::atomic::AtomicBool,
    held: Mutex<Vec<u8>>,
    released: tokio::sync::Notify,
    streams: Mutex<Vec<StreamRequest>>,
    open: Mutex<Vec<tokio_util::sync::CancellationToken>>,
}

impl Drop for FaultyProxy {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl FaultyProxy {
    /// A proxy on a free port forwarding to `app`.
    pub async fn start(app: &TestApp) -> FaultyProxy {
        let upstream = app
            .base
            .strip_prefix("http://")
            .expect("the app's base is http://host:port")
            .to_string();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a port for the proxy");
        let base = format!("http://{}", listener.local_addr().expect("proxy address"));
        let inner = Arc::new(ProxyInner {
            upstream,
            refuse: Default::default(),
            hold: Default::default(),
            held: Mutex::new(Vec::new()),
            released: tokio::sync::Notify::new(),
            streams: Mutex::new(Vec::new()),
            open: Mutex::new(Vec::new()),
        });
        let stop = tokio_util::sync::CancellationToken::new();
        let (task_inner, task_stop) = (Arc::clone(&inner), stop.clone());
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = task_stop.cancelled() => break,
                    accepted = listener.accept() => {
                        let Ok((client, _)) = accepted else { continue };
                        let (inner, stop) = (Arc::clone(&task_inner), task_stop.clone());
                        tokio::spawn(async move {
                            tokio::select! {
                                _ = stop.cancelled() => {}
                                _ = proxy_connection(inner, client) => {}
                            }
                        });
                    }
                }
            }
        });
        FaultyProxy { base, inner, stop }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// From now on, answer event-stream requests `503` (`false`: pass them on again).
    pub fn refuse_streams(&self, refuse: bool) {
        self.inner.refuse.store(refuse, Ordering::SeqCst);
    }

    /// From now on, keep what the app sends on event streams (response head included)
    /// instead of passing it on, until `release`.
    pub fn hold_streams(&self) {
        self.inner.hold.store(true, Ordering::SeqCst);
    }

    /// What is held so far, as text.
    pub fn held_text(&self) -> String {
        String::from_utf8_lossy(&self.inner.held.lock().unwrap()).into_owned()
    }

    /// Polls until the held bytes contain `needle` `times` times or more.
    pub async fn wait_held(&self, needle: &str, times: usize) {
        let deadline = Instant::now() + DEADLINE;
        while self.held_text().matches(needle).count() < times {
            if Instant::now() > deadline {
                panic!(
                    "proxy: {needle:?} not held {times} times within {DEADLINE:?}; held:\n{}",
                    self.held_text()
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Sends everything held to the browser in one write, and passes streams on again.
    pub fn release(&self) {
        self.inner.hold.store(false, Ordering::SeqCst);
        self.inner.released.notify_one();
    }

    /// Drops every open event-stream connection, as a network failure would; returns how
    /// many there were.
    pub fn cut_streams(&self) -> usize {
        let open = std::mem::take(&mut *self.inner.open.lock().unwrap());
        let live = open.iter().filter(|t| !t.is_cancelled()).count();
        for token in open {
            token.cancel();
        }
        live
    }

    /// The event-stream requests seen so far, oldest first.
    pub fn stream_requests(&self) -> Vec<StreamRequest> {
        self.inner.streams.lock().unwrap().clone()
    }

    /// Polls until an event-stream request satisfying `matches` arrives after the first
    /// `seen` ones; returns it.
    pub async fn wait_stream_request(
        &self,
        what: &str,
        seen: usize,
        matches: impl Fn(&StreamRequest) -> bool,
    ) -> StreamRequest {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let requests = self.stream_requests();
            if let Some(found) = requests.iter().skip(seen).find(|r| matches(r)) {
                return found.clone();
            }
            if Instant::now() > deadline {
                panic!("proxy: no {what} within {DEADLINE:?}; stream requests: {requests:#?}");
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

/// Serves one client connection: reads the request head, then refuses it, or forwards it
/// (as `Connection: close`) and copies bytes both ways until either side is done.
async fn proxy_connection(inner: Arc<ProxyInner>, mut client: tokio::net::TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = Vec::new();
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        let mut chunk = [0u8; 8192];
        match client.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        if buf.len() > 256 * 1024 {
            return;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default().to_string();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        .collect();
    let header = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    };
    let is_stream = header("accept").is_some_and(|a| a.contains("text/event-stream"));
    let cut = tokio_util::sync::CancellationToken::new();
    if is_stream {
        let refused = inner.refuse.load(Ordering::SeqCst);
        inner.streams.lock().unwrap().push(StreamRequest {
            target: request_line
                .split(' ')
                .nth(1)
                .unwrap_or_default()
                .to_string(),
            last_event_id: header("last-event-id"),
            refused,
        });
        if refused {
            let _ = client
                .write_all(
                    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\n\
                      Content-Length: 7\r\nConnection: close\r\n\r\nrefused",
                )
                .await;
            let _ = client.shutdown().await;
            return;
        }
        inner.open.lock().unwrap().push(cut.clone());
    }
    // However the connection ends, it no longer counts as open.
    let _closed = cut.clone().drop_guard();
    let Ok(mut upstream) = tokio::net::TcpStream::connect(&inner.upstream).await else {
        return;
    };
    let mut forwarded = request_line;
    forwarded.push_str("\r\n");
    for (name, value) in &headers {
        if !name.eq_ignore_ascii_case("connection") && !name.eq_ignore_ascii_case("keep-alive") {
            forwarded.push_str(&format!("{name}: {value}\r\n"));
        }
    }
    forwarded.push_str("Connection: close\r\n\r\n");
    if upstream.write_all(forwarded.as_bytes()).await.is_err()
        || upstream.write_all(&buf[head_end + 4..]).await.is_err()
    {
        return;
    }
    let (mut client_read, mut client_write) = client.split();
    let (mut upstream_read, mut upstream_write) = upstream.split();
    let downstream = async {
        if is_stream {
            forward_stream(&inner, &mut upstream_read, &mut client_write).await;
        } else {
            let _ = tokio::io::copy(&mut upstream_read, &mut client_write).await;
        }
    };
    tokio::select! {
        _ = cut.cancelled() => {}
        _ = downstream => {}
        _ = tokio::io::copy(&mut client_read, &mut upstream_write) => {}
    }
    // Both sockets close here: a cut stream ends mid-body, as a network failure ends it.
}

/// Copies an event stream from the app to the browser, keeping it back while the proxy holds
/// streams; what was held goes out in one write, before anything newer.
async fn forward_stream(
    inner: &ProxyInner,
    from: &mut (impl tokio::io::AsyncRead + Unpin),
    to: &mut (impl tokio::io::AsyncWrite + Unpin),
) {
    use tokio::io::AsyncReadExt;
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        tokio::select! {
            read = from.read(&mut chunk) => {
                let n = match read {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                if inner.hold.load(Ordering::SeqCst) {
                    inner.held.lock().unwrap().extend_from_slice(&chunk[..n]);
                } else if !flush_held(inner, to).await || !write(to, &chunk[..n]).await {
                    return;
                }
            }
            _ = inner.released.notified() => {
                if !flush_held(inner, to).await {
                    return;
                }
            }
        }
    }
}

/// Writes what is held, all of it in one write; false if the browser has gone.
async fn flush_held(inner: &ProxyInner, to: &mut (impl tokio::io::AsyncWrite + Unpin)) -> bool {
    let held = std::mem::take(&mut *inner.held.lock().unwrap());
    held.is_empty() || write(to, &held).await
}

async fn write(to: &mut (impl tokio::io::AsyncWrite + Unpin), bytes: &[u8]) -> bool {
    use tokio::io::AsyncWriteExt;
    to.write_all(bytes).await.is_ok() && to.flush().await.is_ok()
}
