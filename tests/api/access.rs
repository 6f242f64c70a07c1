//! Who may do what (the admin-access issue, finding 1): with a password file every page,
//! stream and API call needs a user, admin work needs an admin, and the agent protocol needs
//! an agent's own token. The route table is walked whole, so a route added without a decision
//! about its callers fails here.

use ferrocd::web::auth::Credential;
use ferrocd::web::route_table;
use reqwest::Method;
use serde_json::json;

use crate::helpers::*;

/// A route's path with real ids in place of its parameters.
fn concrete(path: &str, uuid: &str, build: i64) -> String {
    path.replace("{uuid}", uuid)
        .replace("{build_id}", &build.to_string())
        .replace("{name}", "app.css")
        .replace("{pipeline}", "walk")
        .replace("{pc}", "1")
        .replace("{stage}", "build")
        .replace("{sc}", "1")
        .replace("{job}", "job")
}

/// The status only: a stream's body never ends, and the status is all the walk asks.
async fn status_of(api: &Api, method: &Method, path: &str) -> u16 {
    let mut request = api.client.request(method.clone(), api.url(path));
    for (name, value) in api.default_headers() {
        request = request.header(name, value);
    }
    if *method != Method::GET {
        request = request
            .header("Content-Type", "application/json")
            .body("{}");
    }
    let response = tokio::time::timeout(DEADLINE, request.send())
        .await
        .unwrap_or_else(|_| panic!("{method} {path}: no answer"))
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    response.status().as_u16()
}

/// Who calls, as whom, and which statuses are right.
type Expectation<'a> = (&'static str, &'a Api, fn(u16) -> bool);

#[tokio::test]
async fn every_declared_route_lets_in_exactly_the_callers_it_names() {
    let app = spawn_team_app().await;
    let admin = app.as_basic(ALICE.0, ALICE.1);
    let user = app.as_basic(BOB.0, BOB.1);
    let table = route_table();
    assert!(
        table.len() > 30,
        "the table holds the whole site: {table:#?}"
    );
    let mut wrong = Vec::new();
    for (n, route) in table.iter().enumerate() {
        // Fresh things to act on for each route: an admin's DELETE must not starve the next.
        let agent = admin.register_enabled(&format!("walk-{n}")).await;
        let build = admin.schedule_job("walk", "job").await;
        let agent_api = app.with_header("Authorization", &format!("Bearer {}", agent.token));
        let path = concrete(&route.path, &agent.uuid, build);
        let expectations: [Expectation; 4] = match route.credential {
            Credential::Probe | Credential::None | Credential::Registration => [
                ("nobody", &app, |s| s != 401 && s != 403 && s != 421),
                ("a user", &user, |s| s != 401 && s != 403 && s != 421),
                ("an admin", &admin, |s| s != 401 && s != 403 && s != 421),
                ("an agent", &agent_api, |s| s != 401 && s != 403 && s != 421),
            ],
            // No signature: nobody is believed, whoever they are.
            Credential::Webhook => [
                ("nobody", &app, |s| s == 401),
                ("a user", &user, |s| s == 401),
                ("an admin", &admin, |s| s == 401),
                ("an agent", &agent_api, |s| s == 401),
            ],
            Credential::Agent => [
                ("nobody", &app, |s| s == 401),
                ("a user", &user, |s| s == 401),
                ("an admin", &admin, |s| s == 401),
                ("an agent", &agent_api, |s| s != 401),
            ],
            Credential::User => [
                ("nobody", &app, |s| s == 401),
                ("a user", &user, |s| s != 401 && s != 403 && s != 421),
                ("an admin", &admin, |s| s != 401 && s != 403 && s != 421),
                ("an agent", &agent_api, |s| s == 401),
            ],
            Credential::Admin => [
                ("nobody", &app, |s| s == 401),
                ("a user", &user, |s| s == 403),
                ("an admin", &admin, |s| s != 401 && s != 403 && s != 421),
                ("an agent", &agent_api, |s| s == 401),
            ],
        };
        // The admin goes last: its DELETE or disable may change what the others meet.
        for (who, api, allowed) in expectations {
            let status = status_of(api, &route.method, &path).await;
            if !allowed(status) {
                wrong.push(format!(
                    "{} {} ({:?}) as {who}: {status}",
                    route.method, route.path, route.credential
                ));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[tokio::test]
async fn a_page_without_a_login_goes_to_the_login_page_and_back() {
    let app = spawn_team_app().await;
    let browser = app.without_redirects().with_header("Accept", "text/html");
    let reply = browser.get("/agents?x=1").await;
    assert_eq!(reply.status, 303, "{}", reply.text());
    assert_eq!(
        reply.header("location"),
        "/auth/login?next=%2Fagents%3Fx%3D1"
    );
    let gocd = browser.get("/go/auth/login?next=%2Fagents").await;
    assert_eq!(gocd.status, 303, "GoCD's address for the login page");
    assert_eq!(gocd.header("location"), "/auth/login?next=%2Fagents");
    let login = browser.get("/auth/login?next=%2Fagents").await;
    assert_eq!(login.status, 200);
    assert!(
        login.text().contains("id=\"login-form\""),
        "{}",
        login.text()
    );

    let wrong = browser
        .post_form("/auth/login", "username=bob&password=nope&next=%2Fagents")
        .await;
    assert_eq!(wrong.status, 401);
    assert!(wrong.text().contains("wrong user name or password"));
    assert_eq!(wrong.header("set-cookie"), "");

    let right = browser
        .post_form(
            "/auth/login",
            "username=bob&password=bob-secret&next=%2Fagents",
        )
        .await;
    assert_eq!(right.status, 303, "{}", right.text());
    assert_eq!(right.header("location"), "/agents");
    let cookie = right.header("set-cookie").to_string();
    assert!(cookie.starts_with("ferrocd_session="), "{cookie}");
    for attribute in ["HttpOnly", "SameSite=Lax", "Path=/"] {
        assert!(cookie.contains(attribute), "{cookie} lacks {attribute}");
    }
    assert!(
        !cookie.contains("Secure"),
        "plain HTTP, no trusted proxy: {cookie}"
    );
    let session = cookie.split(';').next().unwrap().to_string();

    let signed_in = browser.with_header("Cookie", &session);
    let page = signed_in.get("/agents").await;
    assert_eq!(page.status, 200);
    assert!(
        page.text().contains("Sign out"),
        "the header offers to sign out"
    );
    assert!(
        page.text().contains("data-admin=\"false\""),
        "bob is no admin"
    );
    signed_in.get("/api/agents").await.expect(200);

    let out = signed_in
        .send(signed_in.client.post(signed_in.url("/auth/logout")))
        .await;
    assert_eq!(out.status, 303);
    assert!(out.header("set-cookie").contains("Max-Age=0"));
    assert_eq!(
        signed_in.get("/api/agents").await.status,
        401,
        "the session ended"
    );
}

#[tokio::test]
async fn the_login_page_sends_nobody_elsewhere() {
    let app = spawn_team_app().await;
    let browser = app.without_redirects();
    let reply = browser
        .post_form(
            "/auth/login",
            "username=alice&password=alice-secret&next=%2F%2Fevil.example%2F",
        )
        .await;
    assert_eq!(reply.status, 303);
    assert_eq!(reply.header("location"), "/");
}

#[tokio::test]
async fn repeated_wrong_passwords_must_wait_even_with_the_right_one() {
    let app = spawn_team_app().await;
    let wrong = app.as_basic(BOB.0, "guess");
    for _ in 0..3 {
        assert_eq!(wrong.get("/api/agents").await.status, 401);
    }
    let waiting = app.as_basic(BOB.0, BOB.1).get("/api/agents").await;
    assert_eq!(waiting.status, 429, "{}", waiting.body);
    assert!(waiting.header("retry-after").parse::<u64>().unwrap() >= 1);
    assert!(waiting.message().contains("try again"), "{}", waiting.body);
    // Another user is not slowed down by bob's guesser.
    app.as_basic(ALICE.0, ALICE.1)
        .get("/api/agents")
        .await
        .expect(200);
}

#[tokio::test]
async fn an_access_token_is_shown_once_works_as_bearer_and_stops_when_revoked() {
    let app = spawn_team_app().await;
    let bob = app.as_basic(BOB.0, BOB.1);
    let created = bob
        .call(
            Method::POST,
            "/go/api/current_user/access_tokens",
            json!({"description": "build monitor"}),
        )
        .await
        .expect(201);
    let token = created["token"]
        .as_str()
        .expect("the token, this once")
        .to_string();
    assert!(token.starts_with("fcd_"), "{created}");
    assert_eq!(created["description"], "build monitor");
    assert_eq!(created["username"], "bob");
    assert_eq!(created["revoked"], false);
    let id = created["id"].as_i64().unwrap();

    let script = app.as_bearer(&token);
    script.get("/api/agents").await.expect(200);
    assert_eq!(
        script
            .call(Method::POST, "/api/jobs/schedule", job_body("p", "j"))
            .await
            .status,
        403,
        "bob's token can do what bob can, no more"
    );

    let listed = bob
        .get("/go/api/current_user/access_tokens")
        .await
        .expect(200);
    let tokens = listed["_embedded"]["access_tokens"].as_array().unwrap();
    assert_eq!(tokens.len(), 1);
    assert!(
        tokens[0].get("token").is_none(),
        "never shown again: {listed}"
    );
    assert!(tokens[0]["last_used_at"].is_string(), "{listed}");
    // alice sees only her own.
    let alices = app
        .as_basic(ALICE.0, ALICE.1)
        .get("/go/api/current_user/access_tokens")
        .await
        .expect(200);
    assert_eq!(alices["_embedded"]["access_tokens"], json!([]));

    let revoked = bob
        .call(
            Method::POST,
            &format!("/go/api/current_user/access_tokens/{id}/revoke"),
            json!({"revoke_cause": "monitor retired"}),
        )
        .await
        .expect(200);
    assert_eq!(revoked["revoked"], true);
    assert_eq!(revoked["revoke_cause"], "monitor retired");
    assert_eq!(revoked["revoked_by"], "bob");
    let after = script.get("/api/agents").await;
    assert_eq!(after.status, 401, "{}", after.body);
    assert!(after.message().contains("revoked"), "{}", after.body);
}

#[tokio::test]
async fn only_admins_schedule_ad_hoc_jobs_and_change_agents_but_users_cancel() {
    let app = spawn_team_app().await;
    let admin = app.as_basic(ALICE.0, ALICE.1);
    let user = app.as_basic(BOB.0, BOB.1);
    let reply = user
        .call(Method::POST, "/api/jobs/schedule", job_body("p", "j"))
        .await;
    assert_eq!(reply.status, 403, "{}", reply.body);
    assert!(
        reply.message().contains("bob is not an admin"),
        "{}",
        reply.body
    );
    let agent = app.register("pending").await;
    assert_eq!(
        user.put(&format!("/api/agents/{}/enable", agent.uuid))
            .await
            .0,
        403
    );
    assert_eq!(
        admin
            .get_json(&format!("/api/agents/{}", agent.uuid))
            .await
            .1["agent_config_state"],
        "Pending",
        "the refused enable changed nothing"
    );
    let build = admin.schedule_job("p", "j").await;
    let cancelled = user
        .send(
            user.client
                .post(user.url(&format!("/api/builds/{build}/cancel"))),
        )
        .await
        .expect(202);
    assert_eq!(cancelled["result"], "Cancelled");
}

#[tokio::test]
async fn without_a_password_file_only_loopback_may_be_served() {
    let data = tempfile::tempdir().unwrap();
    let mut config = ferrocd::config::Config::for_data_dir(data.path());
    config.listen = "0.0.0.0:0".parse().unwrap();
    let refused = ferrocd::Application::build(config.clone()).await;
    let message = refused.err().expect("refused to start").to_string();
    assert!(message.contains("--password-file"), "{message}");
    assert!(message.contains("--insecure-open"), "{message}");
    config.insecure_open = true;
    ferrocd::Application::build(config)
        .await
        .expect("starts when the risk is accepted");
}

#[tokio::test]
async fn an_unknown_host_is_421_for_people_but_agents_and_health_checks_pass() {
    let app = spawn_team_app().await;
    let rebound = app
        .as_basic(ALICE.0, ALICE.1)
        .with_header("Host", "evil.example:8153");
    for path in ["/api/agents", "/agents", "/agents/events", "/go/about"] {
        let reply = rebound.get(path).await;
        assert_eq!(reply.status, 421, "{path}: {}", reply.text());
    }
    let reply = rebound.get("/api/agents").await;
    assert!(
        reply.message().contains("--allowed-hosts evil.example"),
        "{}",
        reply.body
    );
    app.with_header("Host", "10.9.9.9:8153")
        .get("/api/health")
        .await
        .expect(200);
    let agent = app.as_basic(ALICE.0, ALICE.1).register_enabled("far").await;
    let far = app.with_header("Host", "10.9.9.9:8153");
    far.as_agent(&agent)
        .ping(json!({"agent_state": "Idle"}))
        .await
        .expect(200);

    let named = spawn_team_app_with(|c| c.allowed_hosts = vec!["ci.example.com".into()]).await;
    named
        .as_basic(ALICE.0, ALICE.1)
        .with_header("Host", "ci.example.com:8153")
        .get("/api/agents")
        .await
        .expect(200);
}

#[tokio::test]
async fn a_user_added_to_the_password_file_can_log_in_without_a_restart() {
    let app = spawn_team_app().await;
    let carol = app.as_basic("carol", "carol-secret");
    assert_eq!(carol.get("/api/agents").await.status, 401);
    let file = app.data_dir().join("passwords");
    std::fs::write(&file, htpasswd(&[ALICE, BOB, ("carol", "carol-secret")])).unwrap();
    eventually("carol can log in", || async {
        (carol.get("/api/agents").await.status == 200).then_some(())
    })
    .await;
}

#[tokio::test]
async fn the_tokens_page_shows_a_new_token_once_and_revokes_it() {
    let app = spawn_team_app().await;
    let bob = app.as_basic(BOB.0, BOB.1).without_redirects();
    let created = bob
        .post_form("/access_tokens", "description=hallway+%3Cmonitor%3E")
        .await;
    assert_eq!(created.status, 201, "{}", created.text());
    let html = created.text();
    let start =
        html.find("id=\"new-token\">").expect("the secret is shown") + "id=\"new-token\">".len();
    let token = html[start..].split('<').next().unwrap().to_string();
    assert!(token.starts_with("fcd_"), "{token}");
    assert!(
        html.contains("hallway &lt;monitor&gt;"),
        "the description is escaped"
    );
    app.as_bearer(&token).get("/api/agents").await.expect(200);

    let page = bob.get("/access_tokens").await;
    assert_eq!(page.status, 200);
    assert!(!page.text().contains(&token), "never shown again");
    let id = bob
        .get("/go/api/current_user/access_tokens")
        .await
        .expect(200)["_embedded"]["access_tokens"][0]["id"]
        .as_i64()
        .unwrap();
    let revoked = bob
        .post_form(&format!("/access_tokens/{id}/revoke"), "revoke_cause=lost")
        .await;
    assert_eq!(revoked.status, 303, "{}", revoked.text());
    assert_eq!(app.as_bearer(&token).get("/api/agents").await.status, 401);
    assert!(bob.get("/access_tokens").await.text().contains("Revoked"));
    let untyped = bob
        .send(
            bob.client
                .post(bob.url("/access_tokens"))
                .body("description=x"),
        )
        .await;
    assert_eq!(untyped.status, 415, "a form must say it is one");
}

#[tokio::test]
async fn behind_the_trusted_proxy_the_cookie_is_secure_and_each_client_is_its_own_address() {
    let app = spawn_team_app_with(|c| c.trusted_proxy = Some("127.0.0.1".parse().unwrap())).await;
    let proxied = |client: &str| {
        app.without_redirects()
            .with_header("X-Forwarded-Proto", "https")
            .with_header("X-Forwarded-For", client)
    };
    let login = |api: Api, password: &'static str| async move {
        api.post_form("/auth/login", format!("username=bob&password={password}"))
            .await
    };
    let ok = login(proxied("10.0.0.1"), "bob-secret").await;
    assert_eq!(ok.status, 303);
    assert!(
        ok.header("set-cookie").contains("; Secure"),
        "{}",
        ok.header("set-cookie")
    );
    for _ in 0..3 {
        assert_eq!(login(proxied("10.0.0.2"), "guess").await.status, 401);
    }
    assert_eq!(
        login(proxied("10.0.0.2"), "bob-secret").await.status,
        429,
        "that client waits"
    );
    assert_eq!(
        login(proxied("10.0.0.3"), "bob-secret").await.status,
        303,
        "another does not"
    );

    // Without the proxy in front, the headers mean nothing.
    let direct = spawn_team_app().await;
    let reply = login(
        direct
            .without_redirects()
            .with_header("X-Forwarded-Proto", "https"),
        "bob-secret",
    )
    .await;
    assert!(!reply.header("set-cookie").contains("Secure"));
}
