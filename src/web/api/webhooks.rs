//! Triggers from outside: GitHub, GitLab and Bitbucket push webhooks, and GoCD's generic
//! `material/notify/git`. Each makes the materials on the pushed repository (and branch) poll
//! now, in the background, and answers at once (202). Webhooks need no user: they prove
//! themselves with the secret of `--webhook-secret-file` (GitHub's and Bitbucket's HMAC-SHA256
//! signatures, GitLab's token), checked in constant time; a bad or missing one is 401 and
//! polls nothing. They come from the hosting service's servers, which send no `Origin`, so the
//! cross-site check lets them through as it does scripts. Bodies are JSON or a form's
//! `payload=` field.

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use hmac::{Hmac, Mac};
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::Sha256;

use super::ApiJson;
use crate::AppState;
use crate::domain::material::{branch_of_ref, normalized_url};
use crate::error::{Error, Result};
use crate::secrets::constant_time_eq;
use crate::web::auth::Credential;
use crate::web::routes::Routes;

pub fn router() -> Routes {
    Routes::new()
        .post("/webhooks/github/notify", Credential::Webhook, github)
        .post("/webhooks/gitlab/notify", Credential::Webhook, gitlab)
        .post("/webhooks/bitbucket/notify", Credential::Webhook, bitbucket)
        .post("/material/notify/git", Credential::User, notify_git)
}

type Answer = Result<(StatusCode, Json<Value>)>;

fn secret(state: &AppState) -> Result<&str> {
    state
        .webhook_secret
        .as_deref()
        .map(String::as_str)
        .ok_or_else(|| {
            Error::Unauthorized(
                "webhooks need a secret: start the server with --webhook-secret-file".into(),
            )
        })
}

fn header_text<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Checks `sha256=HEX`, an HMAC-SHA256 of `body` with `secret`, in constant time.
fn check_signature(secret: &str, body: &[u8], signature: Option<&str>) -> Result<()> {
    let refused =
        || Error::Unauthorized("the webhook's signature does not match its secret".into());
    let hex_digest = signature
        .and_then(|s| s.trim().strip_prefix("sha256="))
        .ok_or_else(refused)?;
    let digest = hex::decode(hex_digest).map_err(|_| refused())?;
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).map_err(|_| refused())?;
    mac.update(body);
    mac.verify_slice(&digest).map_err(|_| refused())
}

/// The payload: the JSON body, or the JSON in a form's `payload` field.
fn payload(headers: &HeaderMap, body: &[u8]) -> Result<Value> {
    let form = header_text(headers, header::CONTENT_TYPE.as_str())
        .is_some_and(|t| t.starts_with("application/x-www-form-urlencoded"));
    let json = if form {
        form_urlencoded::parse(body)
            .find(|(key, _)| key == "payload")
            .map(|(_, value)| value.into_owned())
            .ok_or_else(|| Error::BadRequest("payload: the form has no payload field".into()))?
            .into_bytes()
    } else {
        body.to_vec()
    };
    serde_json::from_slice(&json).map_err(|e| Error::BadRequest(format!("payload: {e}")))
}

/// Polls the materials on any of `urls` (spellings of one repository) and `branch`.
fn poll(state: &AppState, urls: &[&str], branch: Option<&str>) -> Answer {
    let Some(branch) = branch else {
        return Ok(accepted(
            "the push is not to a branch: nothing to poll".into(),
        ));
    };
    let mut seen = Vec::new();
    let mut polled = 0;
    for url in urls.iter().filter(|u| !u.is_empty()) {
        let normal = normalized_url(url);
        if seen.contains(&normal) {
            continue;
        }
        polled += state.materials.notify(url, Some(branch));
        seen.push(normal);
    }
    Ok(accepted(if polled == 0 {
        format!("no material follows branch {branch} of that repository: nothing to poll")
    } else {
        format!("polling {polled} material(s) on branch {branch}")
    }))
}

fn accepted(message: String) -> (StatusCode, Json<Value>) {
    (StatusCode::ACCEPTED, Json(json!({ "message": message })))
}

fn text<'a>(value: &'a Value, pointer: &str) -> &'a str {
    value.pointer(pointer).and_then(Value::as_str).unwrap_or("")
}

async fn github(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Answer {
    check_signature(
        secret(&state)?,
        &body,
        header_text(&headers, "x-hub-signature-256"),
    )?;
    match header_text(&headers, "x-github-event").unwrap_or("push") {
        "ping" => return Ok((StatusCode::OK, Json(json!({ "message": "pong" })))),
        "push" => {}
        other => return Ok(accepted(format!("event {other} ignored: only pushes poll"))),
    }
    let push = payload(&headers, &body)?;
    let urls = [
        text(&push, "/repository/clone_url"),
        text(&push, "/repository/ssh_url"),
        text(&push, "/repository/git_url"),
        text(&push, "/repository/html_url"),
        text(&push, "/repository/url"),
    ];
    poll(&state, &urls, branch_of_ref(text(&push, "/ref")))
}

async fn gitlab(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Answer {
    let secret = secret(&state)?;
    let token = header_text(&headers, "x-gitlab-token").unwrap_or("");
    if !constant_time_eq(token, secret) {
        return Err(Error::Unauthorized(
            "the webhook's X-Gitlab-Token does not match its secret".into(),
        ));
    }
    let push = payload(&headers, &body)?;
    let urls = [
        text(&push, "/project/git_http_url"),
        text(&push, "/project/git_ssh_url"),
        text(&push, "/project/web_url"),
        text(&push, "/repository/git_http_url"),
        text(&push, "/repository/git_ssh_url"),
        text(&push, "/repository/homepage"),
    ];
    poll(&state, &urls, branch_of_ref(text(&push, "/ref")))
}

async fn bitbucket(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Answer {
    check_signature(
        secret(&state)?,
        &body,
        header_text(&headers, "x-hub-signature"),
    )?;
    if header_text(&headers, "x-event-key") == Some("diagnostics:ping") {
        return Ok((StatusCode::OK, Json(json!({ "message": "pong" }))));
    }
    let push = payload(&headers, &body)?;
    // Bitbucket Server: `changes[].ref.id` and the clone links; Bitbucket Cloud:
    // `push.changes[].new.name` and the repository's page.
    let mut urls: Vec<String> = push
        .pointer("/repository/links/clone")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|l| l["href"].as_str().map(str::to_string))
        .collect();
    urls.push(text(&push, "/repository/links/html/href").to_string());
    let branch = push
        .pointer("/changes/0/ref/id")
        .and_then(Value::as_str)
        .and_then(branch_of_ref)
        .map(str::to_string)
        .or_else(|| {
            let change = push.pointer("/push/changes/0/new")?;
            (change["type"] == "branch").then(|| change["name"].as_str().map(str::to_string))?
        });
    let urls: Vec<&str> = urls.iter().map(String::as_str).collect();
    poll(&state, &urls, branch.as_deref())
}

#[derive(Deserialize)]
struct Notify {
    repository_url: String,
}

/// GoCD's generic notify: every material on that repository, whatever its branch.
async fn notify_git(State(state): State<AppState>, ApiJson(body): ApiJson<Notify>) -> Answer {
    let polled = state.materials.notify(&body.repository_url, None);
    if polled == 0 {
        return Err(Error::NotFound(format!(
            "no git material has the URL {}",
            body.repository_url
        )));
    }
    Ok(accepted(
        "The material is now scheduled for an update. Please check relevant pipeline(s) for status."
            .into(),
    ))
}
