//! `/agents` in a real browser: live updates reach every open copy without a reload, and a
//! viewer's own selection and filter survive them (DESIGN.md rule 7).

use fantoccini::Locator;
use serde_json::json;

use crate::helpers::{TestApp, spawn_app};
use crate::support::{FaultyProxy, Page, browser_test, sync_streams};

/// Disabling an agent from one browser shows in another without a reload; so does an agent
/// registered through the API.
#[tokio::test]
async fn a_change_made_in_one_browser_shows_in_another_without_a_reload() {
    browser_test(
        "a_change_made_in_one_browser_shows_in_another_without_a_reload",
        |rig| async move {
            let app = spawn_app().await;
            let agent = app.register_enabled("build-01").await;

            let a = rig.open("session A", &app.url("/agents")).await;
            let b = rig.open("session B", &app.url("/agents")).await;
            // A reload would lose these: they prove the pages were updated in place. (A acts
            // through htmx requests, which must not navigate either.)
            for page in [&a, &b] {
                page.js("window.__marker = 42; return null;", vec![]).await;
            }
            sync_streams(&app, &[&a, &b]).await;
            for page in [&a, &b] {
                assert_eq!(
                    page.row_attr(&agent.uuid, "data-config-state")
                        .await
                        .as_deref(),
                    Some("Enabled")
                );
            }

            a.select_agent(&agent.uuid).await;
            a.click_toolbar("Disable").await;
            b.wait_row_attr(&agent.uuid, "data-config-state", "Disabled")
                .await;
            a.wait_row_attr(&agent.uuid, "data-config-state", "Disabled")
                .await;
            a.wait_text_contains("#flash", "Disabled 1 agent(s).").await;
            assert_eq!(
                app.agent(&agent.uuid).await["agent_config_state"],
                "Disabled"
            );

            let newcomer = app.register("build-02").await;
            a.wait_row_present(&newcomer.uuid).await;
            b.wait_row_present(&newcomer.uuid).await;
            b.wait_row_attr(&newcomer.uuid, "data-config-state", "Pending")
                .await;
            // The first agent's row is untouched by the newcomer's, still Disabled.
            assert_eq!(
                b.row_attr(&agent.uuid, "data-config-state")
                    .await
                    .as_deref(),
                Some("Disabled")
            );

            for (page, name) in [(&a, "A"), (&b, "B")] {
                assert_eq!(
                    page.js(
                        "return window.__marker === undefined ? null : window.__marker;",
                        vec![]
                    )
                    .await,
                    json!(42),
                    "session {name}'s page was reloaded\n{}",
                    page.describe().await
                );
            }
        },
    )
    .await;
}

/// A checked box and a typed filter survive every kind of live change: a one-row swap (of a
/// shown row, of the checked row itself, of a hidden row), rows added, a row removed, and the
/// whole table sent again after a reconnect; and they apply to rows that arrive later.
#[tokio::test]
async fn selection_and_filter_survive_live_swaps() {
    browser_test(
        "selection_and_filter_survive_live_swaps",
        |rig| async move {
            let app = spawn_app().await;
            let x = app.register_enabled("web-alpha").await;
            let y = app.register_enabled("db-beta").await;
            let z = app.register_enabled("web-gamma").await;

            // Through a proxy that can cut the stream, so the page reconnects and gets the
            // whole table again.
            let proxy = FaultyProxy::start(&app).await;
            let page = rig.open("viewer", &proxy.url("/agents")).await;
            sync_streams(&app, &[&page]).await;

            page.select_agent(&x.uuid).await;
            page.type_into("#agent-filter", "web").await;
            page.wait_js(
                "the filter to hide db-beta",
                "return document.getElementById('agent-' + arguments[0]).hidden;",
                vec![json!(y.uuid)],
            )
            .await;
            let expect_view = |step: &'static str| {
                let page = &page;
                let (x, y, z) = (&x.uuid, &y.uuid, &z.uuid);
                async move {
                    let context = page.describe().await;
                    assert!(
                        page.is_checked(x).await,
                        "{step}: web-alpha unchecked\n{context}"
                    );
                    assert!(
                        !page.is_checked(z).await,
                        "{step}: web-gamma checked\n{context}"
                    );
                    assert_eq!(
                        page.filter_value().await,
                        "web",
                        "{step}: filter text\n{context}"
                    );
                    assert!(
                        page.row_shown(x).await,
                        "{step}: web-alpha hidden\n{context}"
                    );
                    assert!(
                        page.row_shown(z).await,
                        "{step}: web-gamma hidden\n{context}"
                    );
                    assert!(!page.row_shown(y).await, "{step}: db-beta shown\n{context}");
                    assert_eq!(
                        page.text("#selected-count").await,
                        "1 selected",
                        "{step}: selected count\n{context}"
                    );
                }
            };
            expect_view("before any change").await;

            // A shown, unselected row is swapped.
            page.tag_rows().await;
            let (status, body) = app.put(&format!("/api/agents/{}/disable", z.uuid)).await;
            assert_eq!(status, 200, "{body}");
            page.wait_row_attr(&z.uuid, "data-config-state", "Disabled")
                .await;
            assert!(
                page.row_replaced(&z.uuid).await,
                "web-gamma's row was not swapped"
            );
            expect_view("after web-gamma's row was swapped").await;

            // The checked row itself is swapped: the new checkbox must come back checked.
            page.tag_rows().await;
            let (status, body) =
                send_patch(&app, &x.uuid, json!({"resources": ["linux", "docker"]})).await;
            assert_eq!(status, 200, "{body}");
            page.wait_text_contains(&format!("#agent-{} [data-col=resources]", x.uuid), "docker")
                .await;
            assert!(
                page.row_replaced(&x.uuid).await,
                "web-alpha's row was not swapped"
            );
            expect_view("after web-alpha's own row was swapped").await;

            // A hidden row is swapped: it must stay hidden.
            page.tag_rows().await;
            let (status, body) = app.put(&format!("/api/agents/{}/disable", y.uuid)).await;
            assert_eq!(status, 200, "{body}");
            page.wait_row_attr(&y.uuid, "data-config-state", "Disabled")
                .await;
            assert!(
                page.row_replaced(&y.uuid).await,
                "db-beta's row was not swapped"
            );
            expect_view("after db-beta's hidden row was swapped").await;

            // New agents come one row each; the filter applies to them too, and the rows
            // already there are left alone.
            page.tag_rows().await;
            let shown_newcomer = app.register("web-delta").await;
            let hidden_newcomer = app.register("db-epsilon").await;
            page.wait_row_present(&shown_newcomer.uuid).await;
            page.wait_row_present(&hidden_newcomer.uuid).await;
            assert!(
                !page.row_replaced(&x.uuid).await,
                "an added agent replaced the other rows"
            );
            expect_view("after two agents were added").await;
            assert!(
                page.row_shown(&shown_newcomer.uuid).await,
                "web-delta hidden"
            );
            assert!(
                !page.row_shown(&hidden_newcomer.uuid).await,
                "db-epsilon shown"
            );
            assert!(
                !page.is_checked(&shown_newcomer.uuid).await,
                "web-delta checked"
            );

            // A removed agent takes only its own row.
            let path = format!("/api/agents/{}", shown_newcomer.uuid);
            app.put(&format!("{path}/disable")).await;
            let (status, body) = app
                .send_json(reqwest::Method::DELETE, &path, json!({}))
                .await;
            assert_eq!(status, 200, "{body}");
            page.wait_row_gone(&shown_newcomer.uuid).await;
            assert!(
                !page.row_replaced(&x.uuid).await,
                "a removal replaced the other rows"
            );
            expect_view("after an agent was removed").await;

            // The stream drops; the page reconnects and the whole table comes again.
            whole_table_again(&page, &proxy, &x.uuid).await;
            expect_view("after the whole table was sent again").await;
            assert!(
                !page.row_shown(&hidden_newcomer.uuid).await,
                "db-epsilon shown after the whole table"
            );
        },
    )
    .await;
}

/// `#queued-count` shows the scheduler's pending count as it changes.
#[tokio::test]
async fn the_queued_count_follows_the_scheduler() {
    browser_test("the_queued_count_follows_the_scheduler", |rig| async move {
        let app = spawn_app().await;
        let page = rig.open("viewer", &app.url("/agents")).await;
        assert_eq!(page.text("#queued-count").await, "0");
        sync_streams(&app, &[&page]).await;

        let queued = app.queue_marker().await;
        app.queue_marker().await;
        page.wait_text("#queued-count", &(queued + 1).to_string())
            .await;
    })
    .await;
}

/// A Pending row's Approve button enables that agent, another browser sees it, and the
/// flash says what was done.
#[tokio::test]
async fn approving_a_pending_agent_shows_everywhere_and_says_so() {
    browser_test(
        "approving_a_pending_agent_shows_everywhere_and_says_so",
        |rig| async move {
            let app = spawn_app().await;
            let pending = app.register("newcomer").await;

            let a = rig.open("session A", &app.url("/agents")).await;
            let b = rig.open("session B", &app.url("/agents")).await;
            sync_streams(&app, &[&a, &b]).await;

            let approve = format!(
                "//tr[@id='agent-{}']//button[normalize-space()='Approve']",
                pending.uuid
            );
            a.click(Locator::XPath(&approve)).await;
            b.wait_row_attr(&pending.uuid, "data-config-state", "Enabled")
                .await;
            a.wait_row_attr(&pending.uuid, "data-config-state", "Enabled")
                .await;
            assert_eq!(
                app.agent(&pending.uuid).await["agent_config_state"],
                "Enabled"
            );
            // Wait for the answer wherever it landed, then check it landed inside `#flash`
            // (and did not replace it, which would leave later actions nowhere to report).
            a.wait_js(
                "the answer to the Approve click",
                "return Array.from(document.querySelectorAll('.flash')) \
                 .some((e) => e.textContent.includes('Enabled 1 agent(s).'));",
                vec![],
            )
            .await;
            let flash = a
                .js(
                    "const f = document.getElementById('flash'); \
                     return f === null ? null : f.textContent.trim();",
                    vec![],
                )
                .await;
            assert!(
                flash
                    .as_str()
                    .is_some_and(|t| t.contains("Enabled 1 agent(s).")),
                "the Approve answer did not go into #flash (#flash now: {flash}); \
                 the toolbar ends with: {}",
                a.js(
                    "return document.querySelector('section.toolbar').lastElementChild.outerHTML;",
                    vec![]
                )
                .await
            );

            // A row that arrived live (`agent-added`) has a working Approve button too.
            let late = app.register("late-newcomer").await;
            b.wait_row_present(&late.uuid).await;
            let approve = format!(
                "//tr[@id='agent-{}']//button[normalize-space()='Approve']",
                late.uuid
            );
            b.click(Locator::XPath(&approve)).await;
            a.wait_row_attr(&late.uuid, "data-config-state", "Enabled")
                .await;
            b.wait_row_attr(&late.uuid, "data-config-state", "Enabled")
                .await;
        },
    )
    .await;
}

/// A bulk Delete of an Enabled and a Disabled agent deletes the Disabled one (in every
/// browser), keeps the Enabled one, and the flash names the refused agent and the reason.
#[tokio::test]
async fn bulk_delete_deletes_the_disabled_and_names_the_refused() {
    browser_test(
        "bulk_delete_deletes_the_disabled_and_names_the_refused",
        |rig| async move {
            let app = spawn_app().await;
            let enabled = app.register_enabled("keeper").await;
            let disabled = app.register_enabled("retired").await;
            let (status, body) = app
                .put(&format!("/api/agents/{}/disable", disabled.uuid))
                .await;
            assert_eq!(status, 200, "{body}");

            let a = rig.open("session A", &app.url("/agents")).await;
            let b = rig.open("session B", &app.url("/agents")).await;
            sync_streams(&app, &[&a, &b]).await;

            a.select_agent(&enabled.uuid).await;
            a.select_agent(&disabled.uuid).await;
            a.click_toolbar("Delete").await;
            a.wait_row_gone(&disabled.uuid).await;
            b.wait_row_gone(&disabled.uuid).await;
            a.wait_text_contains("#flash", "Deleted 1 agent(s).").await;
            let flash = a.text("#flash").await;
            assert!(
                flash.contains("Refused 1 agent(s)") && flash.contains("keeper"),
                "the flash does not name the refused agent: {flash:?}"
            );
            assert!(
                flash.contains("not Disabled"),
                "the flash does not give the reason: {flash:?}"
            );
            assert!(
                !flash.contains("retired"),
                "the flash names the deleted agent as refused: {flash:?}"
            );
            for page in [&a, &b] {
                assert_eq!(
                    page.row_attr(&enabled.uuid, "data-config-state")
                        .await
                        .as_deref(),
                    Some("Enabled"),
                    "{}",
                    page.describe().await
                );
            }
            // The refused agent stays selected (it is still there); the deleted one is gone.
            assert!(a.is_checked(&enabled.uuid).await, "{}", a.describe().await);
            assert_eq!(a.text("#selected-count").await, "1 selected");
            let (status, _) = app
                .get_json(&format!("/api/agents/{}", disabled.uuid))
                .await;
            assert_eq!(status, 404, "the disabled agent was not deleted");
            assert_eq!(
                app.agent(&enabled.uuid).await["agent_config_state"],
                "Enabled"
            );
        },
    )
    .await;
}

async fn send_patch(
    app: &TestApp,
    uuid: &str,
    body: serde_json::Value,
) -> (u16, serde_json::Value) {
    app.send_json(reqwest::Method::PATCH, &format!("/api/agents/{uuid}"), body)
        .await
}

/// A viewer's sort order (DESIGN.md rule 7) survives a row swap, an added row, a removed
/// row and the whole table sent again after a reconnect.
#[tokio::test]
async fn sort_order_survives_live_swaps() {
    browser_test("sort_order_survives_live_swaps", |rig| async move {
        let app = spawn_app().await;
        let mut agents = Vec::new();
        for host in ["bravo", "delta", "alpha"] {
            agents.push(app.register_enabled(host).await);
        }
        let proxy = FaultyProxy::start(&app).await;
        let page = rig.open("sorter", &proxy.url("/agents")).await;
        sync_streams(&app, &[&page]).await;
        let order = "return Array.from(document.querySelectorAll('#agents-body > tr .hostname'))\
                     .map(a => a.textContent).join(',');";
        let wait_order = |what: &'static str, expected: &'static str| {
            let page = &page;
            async move {
                page.wait_js(
                    what,
                    &format!("return (function() {{ {order} }})() === '{expected}';"),
                    vec![],
                )
                .await;
            }
        };

        // Agent name, clicked twice: descending.
        let header = Locator::Css("th[data-sort-key='hostname'] button");
        page.click(header).await;
        page.click(header).await;
        wait_order("descending order", "delta,bravo,alpha").await;

        // A newcomer is sorted in; a change to one agent swaps its row.
        let charlie = app.register("charlie").await;
        page.wait_row_present(&charlie.uuid).await;
        wait_order("the newcomer sorted in", "delta,charlie,bravo,alpha").await;
        app.put(&format!("/api/agents/{}/enable", charlie.uuid)).await;
        page.wait_row_attr(&charlie.uuid, "data-config-state", "Enabled").await;
        assert_eq!(page.js(order, vec![]).await, json!("delta,charlie,bravo,alpha"));

        // A removal leaves the others in order.
        let alpha = format!("/api/agents/{}", agents[2].uuid);
        app.put(&format!("{alpha}/disable")).await;
        let (status, body) = app.send_json(reqwest::Method::DELETE, &alpha, json!({})).await;
        assert_eq!(status, 200, "{body}");
        page.wait_row_gone(&agents[2].uuid).await;
        assert_eq!(page.js(order, vec![]).await, json!("delta,charlie,bravo"));

        // The whole table again, after a reconnect: still sorted.
        whole_table_again(&page, &proxy, &charlie.uuid).await;
        assert_eq!(page.js(order, vec![]).await, json!("delta,charlie,bravo"));
        assert_eq!(
            page.js("return document.querySelector(\"th[data-sort-key='hostname']\").getAttribute('aria-sort');", vec![])
                .await,
            json!("descending")
        );
    })
    .await;
}

/// Cuts the page's stream at the proxy and waits until it has reconnected and swapped in the
/// whole table it gets on connect (agent `uuid`'s row is then a new element).
async fn whole_table_again(page: &Page, proxy: &FaultyProxy, uuid: &str) {
    page.tag_rows().await;
    let seen = proxy.stream_requests().len();
    assert!(proxy.cut_streams() >= 1, "no open stream to cut");
    proxy
        .wait_stream_request("the reconnect", seen, |r| r.target == "/agents/events")
        .await;
    page.wait_js(
        "the whole table to be sent again",
        "const r = document.getElementById('agent-' + arguments[0]); \
         return r !== null && r.__oldRow !== true;",
        vec![json!(uuid)],
    )
    .await;
}
