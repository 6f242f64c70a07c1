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
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use futures::FutureExt;
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::time::Instant;

use crate::helpers::{DEADLINE, TestApp};
use ferrocd::events::{DomainEvent, Topic};

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
    rig.close_all().await;
    drop(driver);
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
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
        let client = reqwest::Client::new();
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
        let page = Page {
            client,
            name: name.to_string(),
        };
        page.client
            .goto(url)
            .await
            .unwrap_or_else(|e| panic!("[{name}] cannot open {url}: {e}"));
        page
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
}

/// A script's answer that counts as "not yet".
fn falsy(value: &Value) -> bool {
    matches!(value, Value::Null | Value::Bool(false))
        || value.as_str() == Some("")
        || value.as_u64() == Some(0)
}

impl Page {
    /// Runs `script` (a function body: use `return`, read `arguments[i]`).
    pub async fn js(&self, script: &str, args: Vec<Value>) -> Value {
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
            return "page " + location.href + "\n  queued=" + text("#queued-count") +
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
/// How: publish a fresh pending count on the hub (the scheduler's topic) and wait until every
/// page's `#queued-count` shows it. The pages were rendered before the publish, so their
/// HTML holds an older number; the new one can only arrive through `/agents/events`, either
/// as a live `queued` event or in the state sent on connect. Either way the stream is then
/// connected and subscribed (the server subscribes before it sends state), and the state it
/// sent on connect (`agents`, `counts`, then `queued`) has been swapped already, so it cannot
/// later overwrite what the test does. Tagging a DOM node and waiting for the first swap
/// would race with a stream that connected before the tag was set; htmx's EventSource is
/// internal and not worth reaching into.
pub async fn sync_streams(app: &TestApp, pages: &[&Page]) {
    static NEXT: AtomicU64 = AtomicU64::new(1_000);
    let token = NEXT.fetch_add(1, Ordering::Relaxed);
    app.state.hub.publish(
        &Topic::SchedulerUpdates,
        DomainEvent::PendingCount { count: token },
    );
    for page in pages {
        page.wait_text("#queued-count", &token.to_string()).await;
    }
}
