//! Pages from elsewhere cannot act for a logged-in person (the security issue, "Tests"): with
//! alice signed in through the login page, the attacker's pages auto-submit a form POST as the
//! whole window (approve a Pending agent; schedule a job with a `text/plain` form whose body
//! is JSON), send a `no-cors` `text/plain` `fetch` with credentials, and lay a see-through
//! frame of our `/agents` over the window and click where its Approve button is. Nothing
//! changes, and the same actions do work from our own page in the same session.
//!
//! The attacker's server is reached under two names, so each defence meets the attack it is
//! for (what Chromium sends is asserted, so a browser that behaves otherwise fails loudly):
//! - `http://localhost:PORT`, another *site* than our `http://127.0.0.1:PORT` (a site is the
//!   scheme and the registrable domain, or the IP; ports do not count). Chromium marks its
//!   requests `Sec-Fetch-Site: cross-site` and, the cookie being `SameSite=Lax`, sends none of
//!   them with the session; the cross-site check refuses the POSTs (403) all the same.
//! - `http://127.0.0.1:OTHERPORT`, another *origin* on the same site (another service on the
//!   same host). Chromium says `same-site` and sends the session cookie with everything, so
//!   `SameSite` stops nothing: the cross-site check (its `Origin` is not our `Host`) refuses
//!   the POSTs, and `X-Frame-Options`/`frame-ancestors` keep the logged-in page out of the
//!   frame, whose click the check could not tell from alice's own (it is our page's request).
//!
//! Taken out one at a time: without the cross-site check the same-site approve form enables
//! the agent; without the framing headers the framed click does; with the check gone and the
//! cookie `SameSite=None`, so does the cross-site form. The JSON-only API (415) stops both
//! schedule attempts on its own.
//!
//! The browser reaches our server through a recording relay, so the test sees what Chromium
//! sent with each attempt (origin, fetch site, whether the cookie went along) and what the
//! server answered, also to the `no-cors` fetch whose answer the page cannot read.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use fantoccini::Locator;
use fantoccini::actions::{InputSource, MOUSE_BUTTON_LEFT, MouseActions, PointerAction};
use ferrocd::web::auth::SESSION_COOKIE;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::helpers::{ALICE, DEADLINE, TestApp, job_body, spawn_team_app};
use crate::support::{Page, browser_test};

#[tokio::test]
async fn pages_from_another_origin_change_nothing_in_a_logged_in_session() {
    browser_test(
        "pages_from_another_origin_change_nothing_in_a_logged_in_session",
        |rig| async move {
            let app = spawn_team_app().await;
            let alice = app.as_basic(ALICE.0, ALICE.1);
            let victim = alice.register("pending-victim").await;
            let queued_before = alice.pending_count().await;

            let ours = Relay::start(&app).await;
            let attacker = Attacker::start(attack_pages(&ours.base, &victim.uuid)).await;

            let page = rig.open("alice", &ours.url("/agents")).await;
            log_in(&page, ALICE).await;
            // Where the Approve button is on our page: the framed copy is laid out the same
            // (the frame fills the same viewport), so a click there would hit it.
            let approve = page
                .wait_js(
                    "the Pending agent's Approve button",
                    "const b = document.querySelector('#agent-' + arguments[0] + ' .approve'); \
                     if (b === null || b.getClientRects().length === 0) return null; \
                     const r = b.getBoundingClientRect(); \
                     return [r.x + r.width / 2, r.y + r.height / 2];",
                    vec![json!(victim.uuid)],
                )
                .await;
            let at = (approve[0].as_f64().unwrap(), approve[1].as_f64().unwrap());

            let passes = [
                Pass {
                    name: "another site",
                    origin: format!("http://localhost:{}", attacker.port),
                    fetch_site: "cross-site",
                    cookie_sent: false,
                },
                Pass {
                    name: "another origin on the same site",
                    origin: format!("http://127.0.0.1:{}", attacker.port),
                    fetch_site: "same-site",
                    cookie_sent: true,
                },
            ];
            for pass in &passes {
                let landed = attack(&page, &ours, pass, at).await;
                // Nothing changed, whatever the answers were.
                assert_eq!(
                    alice.agent(&victim.uuid).await["agent_config_state"],
                    "Pending",
                    "{}: the agent was approved; requests seen:\n{}",
                    pass.name,
                    ours.describe()
                );
                assert_eq!(
                    alice.pending_count().await,
                    queued_before,
                    "{}: a job was scheduled; requests seen:\n{}",
                    pass.name,
                    ours.describe()
                );
                check_answers(&ours, pass, &landed);
            }

            // The same session can do both from our own page: it was logged in all along.
            page.client
                .goto(&ours.url("/agents"))
                .await
                .expect("back to our /agents");
            page.wait_row_attr(&victim.uuid, "data-config-state", "Pending")
                .await;
            page.click(Locator::Css(&format!("#agent-{} .approve", victim.uuid)))
                .await;
            page.wait_row_attr(&victim.uuid, "data-config-state", "Enabled")
                .await;
            page.wait_text_contains("#flash", "Enabled 1 agent(s).")
                .await;
            assert_eq!(
                alice.agent(&victim.uuid).await["agent_config_state"],
                "Enabled"
            );
            let status = page
                .js(
                    "return fetch('/api/jobs/schedule', {method: 'POST', \
                     headers: {'Content-Type': 'application/json'}, body: arguments[0]}) \
                     .then((r) => r.status);",
                    vec![json!(job_body("own-page", "job").to_string())],
                )
                .await;
            assert_eq!(status, json!(201), "our own page schedules a job");
            assert_eq!(alice.pending_count().await, queued_before + 1);
            let own = ours.seen();
            let approved = own
                .iter()
                .find(|s| {
                    s.method == "POST"
                        && s.path == "/agents/actions"
                        && s.origin.as_deref() == Some(ours.base.as_str())
                })
                .expect("the Approve click's request");
            assert_eq!(
                (
                    approved.fetch_site.as_deref(),
                    approved.cookie,
                    approved.status
                ),
                (Some("same-origin"), true, Some(200)),
                "{approved:?}"
            );
        },
    )
    .await;
}

/// One attacker origin and what Chromium does with its requests.
struct Pass {
    name: &'static str,
    /// `http://host:port`, as its requests' `Origin` says.
    origin: String,
    /// The `Sec-Fetch-Site` Chromium sends with them.
    fetch_site: &'static str,
    /// Whether the `SameSite=Lax` session cookie goes along.
    cookie_sent: bool,
}

/// Opens the attacker's pages at `pass.origin` in alice's tab: the first one's fetch and frame,
/// and a click where the framed Approve button would be; then each form, waiting until the
/// tab shows our server's answer to it. Returns that answer's text for each form.
async fn attack(page: &Page, ours: &Relay, pass: &Pass, at: (f64, f64)) -> Vec<(String, String)> {
    let name = pass.name;
    page.client
        .goto(&format!("{}/", pass.origin))
        .await
        .unwrap_or_else(|e| panic!("{name}: cannot open the attacker's page: {e}"));
    page.wait_js(
        &format!("{name}: the fetch and the frame to finish"),
        "const t = document.getElementById('log').textContent; \
         return t.includes('fetch answered') && t.includes('frame loaded') ? t : null;",
        vec![],
    )
    .await;

    // The click lands on the frame, where the Approve button would be.
    let target = page
        .js(
            "const e = document.elementFromPoint(arguments[0], arguments[1]); \
             return e === null ? null : e.id;",
            vec![json!(at.0), json!(at.1)],
        )
        .await;
    assert_eq!(
        target,
        json!("frame"),
        "{name}: the click would miss the frame"
    );
    let click = MouseActions::new("mouse".to_string())
        .then(PointerAction::MoveTo {
            duration: None,
            x: at.0,
            y: at.1,
        })
        .then(PointerAction::Down {
            button: MOUSE_BUTTON_LEFT,
        })
        .then(PointerAction::Up {
            button: MOUSE_BUTTON_LEFT,
        });
    page.client
        .perform_actions(click)
        .await
        .unwrap_or_else(|e| panic!("{name}: cannot click into the frame: {e}"));
    page.client.release_actions().await.ok();

    // Chromium refused to show our page in the frame: it holds the browser's error page,
    // which has no Approve button to click.
    page.client
        .enter_frame(0)
        .await
        .unwrap_or_else(|e| panic!("{name}: cannot enter the frame: {e}"));
    let framed = page.js("return location.href;", vec![]).await;
    page.client
        .enter_parent_frame()
        .await
        .expect("back out of the frame");
    assert!(
        framed
            .as_str()
            .is_some_and(|u| u.starts_with("chrome-error://")),
        "{name}: the frame shows {framed}, not the browser's refusal; requests seen:\n{}",
        ours.describe()
    );

    let mut landed = Vec::new();
    for form in ["/schedule", "/approve"] {
        page.client
            .goto(&format!("{}{form}", pass.origin))
            .await
            .unwrap_or_else(|e| panic!("{name}: cannot open the attacker's {form}: {e}"));
        let text = answer_shown(page, &ours.base, &format!("{name}: {form}'s answer")).await;
        landed.push((form.to_string(), text));
    }
    landed
}

/// Waits until the tab shows a document of ours (where a form's POST leads), and returns its
/// address and text. Polled through the driver itself: during the navigation a script may
/// not run.
async fn answer_shown(page: &Page, base: &str, what: &str) -> String {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let url = page.client.current_url().await.map(|u| u.to_string());
        if let Ok(url) = &url
            && url.starts_with(&format!("{base}/"))
            && let Ok(Value::String(text)) = page
                .client
                .execute(
                    "return document.readyState === 'complete' ? document.body.innerText : null;",
                    vec![],
                )
                .await
        {
            return format!("{url}\n{text}");
        }
        if Instant::now() > deadline {
            panic!("{what}: not shown within {DEADLINE:?}; the tab is at {url:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What the server answered to each attempt from `pass.origin`, and what Chromium sent.
fn check_answers(ours: &Relay, pass: &Pass, landed: &[(String, String)]) {
    let name = pass.name;
    for (form, text) in landed {
        assert!(
            text.contains("cross-site request refused"),
            "{name}: the tab shows this answer to {form}'s form, not the cross-site check's \
             refusal:\n{text}\nrequests seen:\n{}",
            ours.describe()
        );
    }
    let from_attacker: Vec<Seen> = ours
        .seen()
        .into_iter()
        .filter(|s| {
            s.referer
                .as_deref()
                .is_some_and(|r| r.starts_with(&format!("{}/", pass.origin)))
        })
        .collect();
    let all = ours.describe();
    let find = |method: &str, path: &str| -> Vec<&Seen> {
        from_attacker
            .iter()
            .filter(|s| s.method == method && s.path == path)
            .collect()
    };
    let mode = |seen: &[&Seen], wanted: &str| {
        seen.iter()
            .filter(|s| s.fetch_mode.as_deref() == Some(wanted))
            .count()
    };
    let enables = find("POST", "/agents/actions");
    let schedules = find("POST", "/api/jobs/schedule");
    assert_eq!(
        (
            mode(&enables, "navigate"),
            mode(&schedules, "navigate"),
            mode(&schedules, "no-cors")
        ),
        (1, 1, 1),
        "{name}: the enable form, the schedule form and the fetch each reached the server once; \
         seen:\n{all}"
    );
    let posts: Vec<&Seen> = enables.into_iter().chain(schedules).collect();
    assert_eq!(posts.len(), 3, "{name}: no other POST; seen:\n{all}");
    for post in &posts {
        assert_eq!(
            (post.fetch_site.as_deref(), post.cookie),
            (Some(pass.fetch_site), pass.cookie_sent),
            "{name}: what Chromium sent with {post:?}"
        );
        assert_eq!(
            post.origin.as_deref(),
            Some(pass.origin.as_str()),
            "{name}: {post:?}"
        );
        assert_eq!(
            post.status,
            Some(403),
            "{name}: the cross-site check refuses {post:?}; seen:\n{all}"
        );
    }
    let framed = find("GET", "/agents");
    let framed = framed
        .first()
        .unwrap_or_else(|| panic!("{name}: the frame asked for /agents; seen:\n{all}"));
    assert_eq!(
        (framed.fetch_site.as_deref(), framed.cookie),
        (Some(pass.fetch_site), pass.cookie_sent),
        "{name}: what Chromium sent for the frame: {framed:?}"
    );
    // Without the cookie the frame is sent to the login page; with it, it gets the page,
    // which the browser then refuses to show in a frame.
    let expected = if pass.cookie_sent { 200 } else { 303 };
    assert_eq!(framed.status, Some(expected), "{name}: {framed:?}");
}

/// Signs in through the login page, as a person does.
async fn log_in(page: &Page, (user, password): (&str, &str)) {
    page.wait_js(
        "the login page",
        "return document.getElementById('login-form') !== null;",
        vec![],
    )
    .await;
    page.type_into("#username", user).await;
    page.type_into("#password", password).await;
    page.click(Locator::Css("#login-form button[type=submit]"))
        .await;
    page.wait_js(
        "/agents after signing in",
        "return location.pathname === '/agents' && document.getElementById('agents-body') !== null;",
        vec![],
    )
    .await;
}

/// The attacker's pages, by path. `/` starts the fetch and the frame and writes a line to
/// `#log` as each is over; `/schedule` and `/approve` submit a form as soon as they load, as
/// the whole window (a top-level POST, the one `SameSite=None` would send the cookie with).
/// Inline script is fine here: this is the attacker's origin, not ours.
fn attack_pages(server: &str, uuid: &str) -> Vec<(&'static str, String)> {
    let server_js = json!(server);
    let fetched_js = json!(job_body("cross-site", "fetch").to_string());
    let start = format!(
        r#"<!doctype html>
<html><head><meta charset="utf-8"><title>attacker</title>
<style>
  body {{ margin: 0; }}
  #frame {{ position: fixed; top: 0; left: 0; width: 100vw; height: 100vh; border: 0;
            opacity: 0.3; z-index: 1; }}
</style></head>
<body>
<pre id="log"></pre>
<script>
  const server = {server_js};
  const log = (line) => {{ document.getElementById("log").textContent += line + "\n"; }};
  // A body that needs no preflight, with the viewer's cookies if the browser sends them.
  fetch(server + "/api/jobs/schedule", {{
    method: "POST", mode: "no-cors", credentials: "include",
    headers: {{ "Content-Type": "text/plain" }}, body: {fetched_js},
  }}).then((r) => log("fetch answered: " + r.type), (e) => log("fetch answered: failed " + e));
  // Our agents page in a see-through frame the size of the window, to be clicked.
  const frame = document.createElement("iframe");
  frame.id = "frame";
  frame.addEventListener("load", () => log("frame loaded"), {{ once: true }});
  frame.src = server + "/agents";
  document.body.appendChild(frame);
</script>
</body></html>
"#
    );
    // A `text/plain` form sends `name=value`: a name that opens JSON and a value that closes
    // it make the body one JSON document.
    let job = job_body("cross-site", "form").to_string();
    let opened = format!(
        "{},\"pad\":\"",
        job.strip_suffix('}').expect("a JSON object")
    );
    let schedule = auto_submit(
        &format!("{server}/api/jobs/schedule"),
        "text/plain",
        &[(&opened, "\"}")],
    );
    let approve = auto_submit(
        &format!("{server}/agents/actions"),
        "application/x-www-form-urlencoded",
        &[("action", "enable"), ("uuid", uuid)],
    );
    vec![("/", start), ("/schedule", schedule), ("/approve", approve)]
}

/// A page that posts `fields` to `action` as soon as it loads.
fn auto_submit(action: &str, enctype: &str, fields: &[(&str, &str)]) -> String {
    // Single-quoted attributes: the values hold double quotes (JSON), never single ones.
    let inputs: String = fields
        .iter()
        .map(|(name, value)| format!("<input type='hidden' name='{name}' value='{value}'>\n"))
        .collect();
    format!(
        r#"<!doctype html>
<html><head><meta charset="utf-8"><title>attacker</title></head>
<body>
<form id="attack" method="post" action="{action}" enctype="{enctype}">
{inputs}</form>
<script>document.getElementById("attack").submit();</script>
</body></html>
"#
    )
}

/// The attacker's web server: answers every request with the same page.
struct Attacker {
    port: u16,
    stop: CancellationToken,
}

impl Drop for Attacker {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Attacker {
    async fn start(pages: Vec<(&'static str, String)>) -> Attacker {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a port for the attacker");
        let port = listener.local_addr().expect("its address").port();
        let pages = Arc::new(pages);
        let stop = CancellationToken::new();
        let task_stop = stop.clone();
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    _ = task_stop.cancelled() => break,
                    accepted = listener.accept() => accepted,
                };
                let Ok((mut client, _)) = accepted else {
                    continue;
                };
                let pages = Arc::clone(&pages);
                tokio::spawn(async move {
                    let Some((head, _)) = read_head(&mut client).await else {
                        return;
                    };
                    let path = head.split(' ').nth(1).unwrap_or_default();
                    let answer = match pages.iter().find(|(p, _)| *p == path) {
                        Some((_, page)) => format!(
                            "HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\n\
                             Cache-Control: no-store\r\nContent-Length: {}\r\n\
                             Connection: close\r\n\r\n{page}",
                            page.len()
                        ),
                        None => "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\
                                 Connection: close\r\n\r\n"
                            .to_string(),
                    };
                    let _ = client.write_all(answer.as_bytes()).await;
                    let _ = client.shutdown().await;
                });
            }
        });
        Attacker { port, stop }
    }
}

/// One request that went through the relay, and the status it was answered with.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    origin: Option<String>,
    referer: Option<String>,
    fetch_site: Option<String>,
    /// `Sec-Fetch-Mode`: `navigate` for a form or a frame, `no-cors` for the fetch.
    fetch_mode: Option<String>,
    /// Whether it carried the session cookie.
    cookie: bool,
    status: Option<u16>,
}

/// An HTTP/1.1 relay in front of the app that keeps a note of every request and its answer's
/// status. One request per connection: it asks the app for `Connection: close`.
struct Relay {
    base: String,
    seen: Arc<Mutex<Vec<Seen>>>,
    stop: CancellationToken,
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Relay {
    async fn start(app: &TestApp) -> Relay {
        let upstream = app
            .base
            .strip_prefix("http://")
            .expect("the app's base is http://host:port")
            .to_string();
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a port for the relay");
        let base = format!("http://{}", listener.local_addr().expect("its address"));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = CancellationToken::new();
        let (task_seen, task_stop) = (Arc::clone(&seen), stop.clone());
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    _ = task_stop.cancelled() => break,
                    accepted = listener.accept() => accepted,
                };
                let Ok((client, _)) = accepted else {
                    continue;
                };
                let (seen, stop, upstream) =
                    (Arc::clone(&task_seen), task_stop.clone(), upstream.clone());
                tokio::spawn(async move {
                    tokio::select! {
                        _ = stop.cancelled() => {}
                        _ = relay(seen, upstream, client) => {}
                    }
                });
            }
        });
        Relay { base, seen, stop }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// Every request seen, one a line, for failure messages.
    fn describe(&self) -> String {
        self.seen()
            .iter()
            .map(|s| format!("  {s:?}"))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// Reads a request head; returns it and whatever of the body came with it.
async fn read_head(client: &mut TcpStream) -> Option<(String, Vec<u8>)> {
    let mut buf = Vec::new();
    loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..i]).into_owned();
            return Some((head, buf[i + 4..].to_vec()));
        }
        let mut chunk = [0u8; 8192];
        match client.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        if buf.len() > 256 * 1024 {
            return None;
        }
    }
}

/// Serves one connection: notes the request, forwards it, notes the answer's status line, and
/// copies bytes both ways until either side is done.
async fn relay(seen: Arc<Mutex<Vec<Seen>>>, upstream: String, mut client: TcpStream) {
    let Some((head, body_start)) = read_head(&mut client).await else {
        return;
    };
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
    let mut parts = request_line.split(' ');
    let method = parts.next().unwrap_or_default().to_string();
    let target = parts.next().unwrap_or_default();
    let index = {
        let mut seen = seen.lock().unwrap();
        seen.push(Seen {
            method,
            path: target.split('?').next().unwrap_or_default().to_string(),
            origin: header("origin"),
            referer: header("referer"),
            fetch_site: header("sec-fetch-site"),
            fetch_mode: header("sec-fetch-mode"),
            cookie: header("cookie").is_some_and(|c| {
                c.split(';')
                    .any(|p| p.trim().starts_with(&format!("{SESSION_COOKIE}=")))
            }),
            status: None,
        });
        seen.len() - 1
    };
    let Ok(mut server) = TcpStream::connect(&upstream).await else {
        return;
    };
    let mut forwarded = format!("{request_line}\r\n");
    for (name, value) in &headers {
        if !name.eq_ignore_ascii_case("connection") && !name.eq_ignore_ascii_case("keep-alive") {
            forwarded.push_str(&format!("{name}: {value}\r\n"));
        }
    }
    forwarded.push_str("Connection: close\r\n\r\n");
    if server.write_all(forwarded.as_bytes()).await.is_err()
        || server.write_all(&body_start).await.is_err()
    {
        return;
    }
    let (mut client_read, mut client_write) = client.split();
    let (mut server_read, mut server_write) = server.split();
    let download = async {
        let mut first = Vec::new();
        while !first.windows(2).any(|w| w == b"\r\n") {
            let mut chunk = [0u8; 8192];
            match server_read.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => first.extend_from_slice(&chunk[..n]),
            }
        }
        let status = String::from_utf8_lossy(&first)
            .split(' ')
            .nth(1)
            .and_then(|code| code.parse().ok());
        seen.lock().unwrap()[index].status = status;
        if client_write.write_all(&first).await.is_ok() {
            let _ = tokio::io::copy(&mut server_read, &mut client_write).await;
        }
    };
    tokio::select! {
        _ = download => {}
        _ = tokio::io::copy(&mut client_read, &mut server_write) => {}
    }
}
