//! The run page (`/builds/{id}`) and the run's effect on `/agents`, in a real browser. The
//! agent's side is spoken through the API helpers, so each test decides exactly when bytes
//! and state changes arrive.

use fantoccini::Locator;
use serde_json::json;

use crate::helpers::{eventually, spawn_app};
use crate::support::{FaultyProxy, browser_test, console_text_of, sync_streams};

/// The ANSI codes the tests' logs hold; the page drops them (they are not text).
const RED: &str = "\x1b[31m";
const RESET: &str = "\x1b[0m";

/// Lines appear as the agent uploads them, coloured and with a progress line showing its
/// final text; the run's end shows in the badge; and the console's text is exactly the
/// stored log: no line twice, none missing, no reload.
#[tokio::test]
async fn the_run_page_shows_lines_as_they_arrive() {
    browser_test(
        "the_run_page_shows_lines_as_they_arrive",
        |rig| async move {
            let app = spawn_app().await;
            let (agent, id) = app.running_build("runner").await;

            let page = rig
                .open("run page", &app.url(&format!("/builds/{id}")))
                .await;
            page.mark_document().await;
            page.wait_live().await;
            page.wait_attrs(
                "#run-status",
                &[("data-state", "Building"), ("data-result", "Unknown")],
            )
            .await;
            assert_eq!(
                page.console_text().await.trim(),
                "",
                "a fresh run's console"
            );

            let mut offset = app.as_agent(&agent).append_ok(id, 0, b"line 1\n").await as usize;
            page.wait_text_contains("#console", "line 1\n").await;

            let more = format!("line 2 {RED}red{RESET}\n50%\r100%\n");
            offset = app
                .as_agent(&agent)
                .append_ok(id, offset, more.as_bytes())
                .await as usize;
            page.wait_text_contains("#console", "100%\n").await;
            page.wait_text_contains("#console", "line 2 red\n").await;

            // The red text is coloured by class.
            let red = page
                .js(
                    "const pre = document.getElementById('console'); \
                 const spans = Array.from(pre.querySelectorAll('span')) \
                     .filter((s) => s.textContent === 'red'); \
                 return spans.map((s) => s.closest('.ansi-fg-1') !== null);",
                    vec![],
                )
                .await;
            assert_eq!(
                red,
                json!([true]),
                "the red text is not (only once) inside .ansi-fg-1\n{}",
                page.describe().await
            );

            // The progress line: a reader sees "100%"; the overwritten "50%\r" is in the DOM,
            // in a `.cr` span that is not rendered.
            let progress = page
                .js(
                    "const ln = Array.from(document.querySelectorAll('#console .ln')) \
                     .find((l) => l.textContent.includes('100%')); \
                 if (!ln) return null; \
                 const cr = ln.querySelector('.cr'); \
                 return { visible: ln.innerText, \
                          hidden: cr ? cr.textContent : null, \
                          hidden_rendered: cr ? cr.getClientRects().length > 0 : null };",
                    vec![],
                )
                .await;
            assert_eq!(
                progress["visible"]
                    .as_str()
                    .map(|t| t.trim_end_matches('\n')),
                Some("100%"),
                "the progress line's visible text: {progress}"
            );
            assert_eq!(progress["hidden"], json!("50%\r"), "{progress}");
            assert_eq!(progress["hidden_rendered"], json!(false), "{progress}");

            app.as_agent(&agent)
                .report_ok(id, "Completed", Some("Passed"))
                .await;
            page.wait_attrs(
                "#run-status",
                &[("data-state", "Completed"), ("data-result", "Passed")],
            )
            .await;

            let stored = app.console(id, None).await.0;
            assert_eq!(stored.len(), offset, "the stored log's length");
            page.wait_console_end(offset as i64).await;
            let expected = console_text_of(&stored, &[RED, RESET]);
            let shown = page.console_text().await;
            assert_eq!(
                shown, expected,
                "#console's text is not the stored log (a line twice or missing?)"
            );
            page.assert_not_reloaded().await;
        },
    )
    .await;
}

/// The queued count on `/agents` goes up when a job is scheduled and down when an agent
/// takes it, and the agent's row turns Building, in every open session.
#[tokio::test]
async fn the_queued_count_drops_when_an_agent_takes_the_job() {
    browser_test(
        "the_queued_count_drops_when_an_agent_takes_the_job",
        |rig| async move {
            let app = spawn_app().await;
            let agent = app.register_enabled("worker").await;

            let a = rig.open("session A", &app.url("/agents")).await;
            let b = rig.open("session B", &app.url("/agents")).await;
            for page in [&a, &b] {
                page.mark_document().await;
            }
            let queued = sync_streams(&app, &[&a, &b]).await;
            for page in [&a, &b] {
                assert_eq!(
                    page.row_attr(&agent.uuid, "data-agent-state")
                        .await
                        .as_deref(),
                    Some("Idle"),
                    "{}",
                    page.describe().await
                );
            }

            let id = app.schedule_job("queue", "job").await;
            for page in [&a, &b] {
                page.wait_text("#queued-count", &(queued + 1).to_string())
                    .await;
            }

            let work = app.as_agent(&agent).take_work().await;
            assert_eq!(work["build_id"], id);
            for page in [&a, &b] {
                page.wait_text("#queued-count", &queued.to_string()).await;
                page.wait_row_attr(&agent.uuid, "data-agent-state", "Building")
                    .await;
                page.assert_not_reloaded().await;
            }
        },
    )
    .await;
}

/// The page's Cancel button asks the agent to stop (its next ping answers CANCEL); once the
/// agent reports it stopped, the badge says Completed/Cancelled, without a reload.
#[tokio::test]
async fn cancel_from_the_run_page_reaches_the_agent_and_the_badge() {
    browser_test(
        "cancel_from_the_run_page_reaches_the_agent_and_the_badge",
        |rig| async move {
            let app = spawn_app().await;
            let (agent, id) = app.running_build("runner").await;

            let page = rig
                .open("run page", &app.url(&format!("/builds/{id}")))
                .await;
            page.mark_document().await;
            page.wait_live().await;
            let reply = app
                .as_agent(&agent)
                .ping(json!({"agent_state": "Building"}))
                .await
                .expect(200);
            assert_eq!(reply["instruction"], "NONE", "before the click: {reply}");

            page.click(Locator::Css("#cancel-run")).await;
            let (app, agent) = (&app, &agent);
            eventually("the agent's ping to answer CANCEL", || async move {
                let reply = app
                    .as_agent(agent)
                    .ping(json!({"agent_state": "Building"}))
                    .await
                    .expect(200);
                (reply["instruction"] == "CANCEL").then_some(())
            })
            .await;
            // Still running until the agent says it stopped.
            page.wait_attrs("#run-status", &[("data-state", "Building")])
                .await;

            app.as_agent(agent)
                .report_ok(id, "Completed", Some("Failed"))
                .await;
            page.wait_attrs(
                "#run-status",
                &[("data-state", "Completed"), ("data-result", "Cancelled")],
            )
            .await;
            let (status, run) = app.get_json(&format!("/api/builds/{id}")).await;
            assert_eq!(status, 200, "{run}");
            assert_eq!(
                (run["state"].as_str(), run["result"].as_str()),
                (Some("Completed"), Some("Cancelled")),
                "{run}"
            );
            assert_eq!(
                page.js(
                    "return document.getElementById('cancel-run') === null;",
                    vec![]
                )
                .await,
                json!(true),
                "a finished run still offers Cancel\n{}",
                page.describe().await
            );
            page.assert_not_reloaded().await;
        },
    )
    .await;
}

/// A reconnect that lost its `Last-Event-ID` does not duplicate lines.
///
/// How it happens for real: when a stream drops, the browser's EventSource reconnects by
/// itself, with `Last-Event-ID`. If that reconnect fails outright (here: a `503`), the
/// EventSource is closed for good, and htmx-ext-sse opens a *new* one on the page's
/// `sse-connect` URL, which carries no `Last-Event-ID` and still says `?from=` the offset the
/// page was rendered at. The server then sends everything from there again, lines the page
/// shows already included; the page must drop those.
///
/// The test puts a `FaultyProxy` between the browser and the server to cut the stream and
/// refuse the browser's own reconnect, checks from the proxy's record that the final
/// reconnect really came without `Last-Event-ID`, and from the page's own events that the
/// server really resent lines already shown. It does so twice: once with nothing new (the
/// whole resent event is dropped), once with a line appended while the page was cut off
/// (only the new line is kept).
#[tokio::test]
async fn a_reconnect_without_last_event_id_does_not_duplicate_lines() {
    browser_test(
        "a_reconnect_without_last_event_id_does_not_duplicate_lines",
        |rig| async move {
            let app = spawn_app().await;
            let (agent, id) = app.running_build("runner").await;
            let proxy = FaultyProxy::start(&app).await;

            let page = rig
                .open("run page", &proxy.url(&format!("/builds/{id}")))
                .await;
            page.mark_document().await;
            page.wait_live().await;
            // Records each `console` event the page receives: its id (the end offset) and the
            // offset after its first line (at or below what is shown = it resends lines).
            page.js(
                "window.__consoleEvents = []; \
                 document.getElementById('console').addEventListener('htmx:sseBeforeMessage', (e) => { \
                     const t = document.createElement('template'); \
                     t.innerHTML = e.detail.data; \
                     const first = t.content.querySelector('.ln'); \
                     window.__consoleEvents.push({ id: Number(e.detail.lastEventId), \
                         first_end: first ? Number(first.dataset.end) : null }); \
                 }); \
                 return null;",
                vec![],
            )
            .await;
            let render_target = proxy
                .stream_requests()
                .first()
                .expect("the page's first stream request")
                .target
                .clone();
            assert!(
                render_target.ends_with("?from=0"),
                "the page was rendered with an empty log: {render_target}"
            );

            let mut offset = app
                .as_agent(&agent).append_ok(id, 0, b"one\ntwo\nthree\n")
                .await as usize;
            page.wait_console_end(offset as i64).await;

            // Round 1: nothing new while cut off. The fresh stream resends one..three.
            lose_the_stream_and_its_last_event_id(&proxy, &page).await;
            page.js("window.__consoleEvents = []; return null;", vec![])
                .await;
            let seen = proxy.stream_requests().len();
            proxy.refuse_streams(false);
            let reconnect = proxy
                .wait_stream_request("a passed-on reconnect", seen, |r| !r.refused)
                .await;
            assert_eq!(reconnect.last_event_id, None, "{reconnect:?}");
            assert_eq!(reconnect.target, render_target, "{reconnect:?}");
            page.wait_live().await;
            let resent = page
                .wait_js(
                    "the server to resend the lines shown",
                    "return window.__consoleEvents.find((e) => e.first_end !== null && \
                     e.first_end <= arguments[0]) || null;",
                    vec![json!(offset)],
                )
                .await;
            assert_eq!(resent["id"], json!(offset), "{resent}");
            assert_eq!(
                page.console_text().await,
                "one\ntwo\nthree\n",
                "after a reconnect that resent all the lines shown"
            );

            // Round 2: a line arrives while the page is cut off. The fresh stream resends
            // one..three with four; only four may be added.
            lose_the_stream_and_its_last_event_id(&proxy, &page).await;
            let shown_before = offset as i64;
            offset = app.as_agent(&agent).append_ok(id, offset, b"four\n").await as usize;
            page.js("window.__consoleEvents = []; return null;", vec![])
                .await;
            let seen = proxy.stream_requests().len();
            proxy.refuse_streams(false);
            let reconnect = proxy
                .wait_stream_request("a passed-on reconnect", seen, |r| !r.refused)
                .await;
            assert_eq!(reconnect.last_event_id, None, "{reconnect:?}");
            page.wait_console_end(offset as i64).await;
            let events = page.js("return window.__consoleEvents;", vec![]).await;
            assert!(
                events
                    .as_array()
                    .is_some_and(|es| es.iter().any(|e| {
                        e["first_end"].as_i64().is_some_and(|end| end <= shown_before)
                    })),
                "no console event resent the lines shown: {events}"
            );
            let stored = app.console(id, None).await.0;
            assert_eq!(
                page.console_text().await,
                console_text_of(&stored, &[]),
                "after a reconnect that resent the lines shown with a new one"
            );
            for line in ["one", "two", "three", "four"] {
                let text = page.console_text().await;
                assert_eq!(
                    text.lines().filter(|l| *l == line).count(),
                    1,
                    "{line:?} in {text:?}"
                );
            }
            page.assert_not_reloaded().await;
        },
    )
    .await;
}

/// Cuts the page's stream and refuses reconnects until the page has given up on its
/// EventSource: the browser's own reconnect (with `Last-Event-ID`) was refused, and then
/// htmx-ext-sse's fresh one (without it). Stream requests stay refused on return.
async fn lose_the_stream_and_its_last_event_id(proxy: &FaultyProxy, page: &crate::support::Page) {
    let seen = proxy.stream_requests().len();
    proxy.refuse_streams(true);
    assert_eq!(proxy.cut_streams(), 1, "the page had one open stream");
    let own = proxy
        .wait_stream_request("the browser's own reconnect", seen, |r| r.refused)
        .await;
    assert!(
        own.last_event_id.is_some(),
        "the browser reconnected without Last-Event-ID: {own:?}"
    );
    proxy
        .wait_stream_request("htmx-ext-sse's fresh EventSource", seen, |r| {
            r.refused && r.last_event_id.is_none()
        })
        .await;
    page.wait_js(
        "the badge to say the page is reconnecting",
        "return document.getElementById('live-badge').dataset.state === 'reconnecting';",
        vec![],
    )
    .await;
}
