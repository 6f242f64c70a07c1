//! No update is lost in the browser, whatever the timing (DESIGN.md rule 8). A proxy holds a
//! page's stream while the server sends its first state and then a change, and releases all
//! of it in one write: the change arrives right behind the state it changes, and the page
//! must show it. (htmx makes swapped-in content live only when the swap settles, 20 ms later
//! by default: an event in that gap used to reach no listener and was dropped.)

use crate::helpers::spawn_app;
use crate::support::{FaultyProxy, browser_test};

/// `/agents`: the whole table, then at once a row event for one of its rows.
#[tokio::test]
async fn a_row_event_right_behind_the_first_table_is_shown() {
    browser_test(
        "a_row_event_right_behind_the_first_table_is_shown",
        |rig| async move {
            let app = spawn_app().await;
            let agent = app.register_enabled("right-behind").await;
            app.register_enabled("another").await;
            let proxy = FaultyProxy::start(&app).await;
            proxy.hold_streams();
            let page = rig.open("viewer", &proxy.url("/agents")).await;
            proxy.wait_held("event: queued\n", 1).await;

            let (status, body) = app
                .put(&format!("/api/agents/{}/disable", agent.uuid))
                .await;
            assert_eq!(status, 200, "{body}");
            proxy
                .wait_held(&format!("event: agent-{}\n", agent.uuid), 1)
                .await;
            assert_eq!(
                page.row_attr(&agent.uuid, "data-config-state")
                    .await
                    .as_deref(),
                Some("Enabled"),
                "the page is held back: it still shows what it loaded"
            );
            proxy.release();
            page.wait_row_attr(&agent.uuid, "data-config-state", "Disabled")
                .await;
        },
    )
    .await;
}

/// The run page: its first `status`, new lines, then at once the run's new status.
#[tokio::test]
async fn a_status_right_behind_the_console_snapshot_is_shown() {
    browser_test(
        "a_status_right_behind_the_console_snapshot_is_shown",
        |rig| async move {
            let app = spawn_app().await;
            let (agent, id) = app.running_build("runner").await;
            let offset = app.as_agent(&agent).append_ok(id, 0, b"one\ntwo\n").await;
            let proxy = FaultyProxy::start(&app).await;
            proxy.hold_streams();
            let page = rig
                .open("run page", &proxy.url(&format!("/builds/{id}")))
                .await;
            proxy.wait_held("event: status\n", 1).await;
            // Lines after the page was rendered come as a console event, then the new status.
            let stored = app
                .as_agent(&agent)
                .append_ok(id, offset as usize, b"three\n")
                .await;
            proxy.wait_held("event: console\n", 1).await;
            app.as_agent(&agent)
                .report_ok(id, "Completed", Some("Passed"))
                .await;
            proxy.wait_held("event: status\n", 2).await;
            proxy.release();
            page.wait_attrs(
                "#run-status",
                &[("data-state", "Completed"), ("data-result", "Passed")],
            )
            .await;
            page.wait_console_end(stored).await;
            assert_eq!(page.console_text().await, "one\ntwo\nthree\n");
            assert!(
                page.js(
                    "return document.getElementById('cancel-run') === null;",
                    vec![]
                )
                .await
                .as_bool()
                .unwrap_or(false),
                "a completed run shows no Cancel button\n{}",
                page.describe().await
            );
        },
    )
    .await;
}

/// The history page: `runs` twice in a row; the second one shows.
#[tokio::test]
async fn a_second_run_list_right_behind_the_first_is_shown() {
    browser_test(
        "a_second_run_list_right_behind_the_first_is_shown",
        |rig| async move {
            let app = spawn_app().await;
            let (agent, id) = app.running_build("historian").await;
            let proxy = FaultyProxy::start(&app).await;
            proxy.hold_streams();
            let page = rig
                .open(
                    "history",
                    &proxy.url(&format!("/agents/{}/job_run_history", agent.uuid)),
                )
                .await;
            proxy.wait_held("event: runs\n", 1).await;

            app.as_agent(&agent)
                .report_ok(id, "Completed", Some("Failed"))
                .await;
            proxy.wait_held("event: runs\n", 2).await;
            proxy.release();
            page.wait_attrs(
                &format!("#run-{id}"),
                &[("data-state", "Completed"), ("data-result", "Failed")],
            )
            .await;
        },
    )
    .await;
}
