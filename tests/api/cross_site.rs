//! Cross-site safety of the JSON API (the admin-access issue, finding 2): a page on another
//! site can make a browser send a body without a CORS preflight only as `text/plain`, a form or
//! untyped. None of those may reach an API call that acts.

use serde_json::json;

use crate::helpers::*;

fn job() -> String {
    json!({"pipeline_name": "x", "stage_name": "s", "job_name": "j",
           "tasks": [{"command": "id"}]})
    .to_string()
}

#[tokio::test]
async fn a_body_that_does_not_say_it_is_json_is_415_and_schedules_nothing() {
    let app = spawn_app().await;
    let url = app.url("/api/jobs/schedule");
    for content_type in [
        Some("text/plain;charset=UTF-8"),
        Some("application/x-www-form-urlencoded"),
        Some("multipart/form-data; boundary=x"),
        None,
    ] {
        let mut request = app.client.post(&url).body(job());
        if let Some(content_type) = content_type {
            request = request.header("Content-Type", content_type);
        }
        let reply = app.send(request).await;
        assert_eq!(reply.status, 415, "{content_type:?}: {}", reply.body);
        assert!(
            reply.message().contains("application/json"),
            "{}",
            reply.body
        );
    }
    assert_eq!(app.pending_count().await, 0, "nothing was queued");
}

#[tokio::test]
async fn json_and_gocd_json_flavours_are_read() {
    let app = spawn_app().await;
    let url = app.url("/api/jobs/schedule");
    for content_type in [
        "application/json",
        "application/json; charset=utf-8",
        "application/vnd.go.cd.v7+json",
    ] {
        let request = app
            .client
            .post(&url)
            .header("Content-Type", content_type)
            .body(job());
        app.send(request).await.expect(201);
    }
    // An empty body needs no type: the enable shortcut takes none.
    let agent = app.register("no-body").await;
    let enable = app
        .client
        .put(app.url(&format!("/api/agents/{}/enable", agent.uuid)));
    app.send(enable).await.expect(200);
}

#[tokio::test]
async fn a_page_post_from_another_site_is_refused_and_changes_nothing() {
    let app = spawn_app().await;
    let agent = app.register("pending-victim").await;
    let form = format!("action=enable&uuid={}", agent.uuid);
    let post = |origin: Option<&str>| {
        let mut request = app
            .client
            .post(app.url("/agents/actions"))
            .header("Content-Type", "application/x-www-form-urlencoded")
            .body(form.clone());
        if let Some(origin) = origin {
            request = request.header("Origin", origin);
        }
        request
    };
    for origin in ["http://evil.example", "null"] {
        let reply = app.send(post(Some(origin))).await;
        assert_eq!(reply.status, 403, "{origin}: {}", reply.body);
        assert!(reply.message().contains("cross-site"), "{}", reply.body);
    }
    let fetched = app
        .client
        .post(app.url("/agents/actions"))
        .header("Sec-Fetch-Site", "cross-site")
        .body(form.clone());
    assert_eq!(app.send(fetched).await.status, 403);
    assert_eq!(
        app.agent(&agent.uuid).await["agent_config_state"],
        "Pending"
    );

    // The page itself posts with its own origin; a script sends none.
    let own = app.url("");
    let own_origin = own.trim_end_matches('/');
    let reply = app.send(post(Some(own_origin))).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(
        app.agent(&agent.uuid).await["agent_config_state"],
        "Enabled"
    );
}

#[tokio::test]
async fn pages_cannot_be_framed_sniffed_or_made_to_run_other_code() {
    let app = spawn_app().await;
    let build = app.schedule_job("p", "j").await;
    for path in ["/agents", "/go/about", &format!("/builds/{build}")] {
        let page = app.get(path).await;
        assert_eq!(page.status, 200, "{path}");
        assert_eq!(page.header("x-frame-options"), "DENY", "{path}");
        assert_eq!(page.header("x-content-type-options"), "nosniff", "{path}");
        let policy = page.header("content-security-policy");
        for directive in [
            "default-src 'self'",
            "script-src 'self'",
            "style-src 'self'",
            "object-src 'none'",
            "base-uri 'none'",
            "form-action 'self'",
            "frame-ancestors 'none'",
        ] {
            assert!(policy.contains(directive), "{path}: {policy}");
        }
        assert!(
            !page.text().contains(" style=\""),
            "{path}: no inline style for the policy to stop"
        );
    }
    let raw = app.get(&format!("/api/builds/{build}/console")).await;
    assert_eq!(
        raw.header("x-content-type-options"),
        "nosniff",
        "the raw log"
    );
}
