//! GoCD's API versions, as its clients read them: each call of GoCD's API has a version
//! (`application/vnd.go.cd.v4+json` for the dashboard) and GoCD answers in that media type, so
//! `/go/api` does too. Any `Accept` is served (the contract: `application/json` and GoCD's
//! type of any version), since clients pin whatever version they were written against and
//! the shapes we serve are GoCD's current ones. ferrocd's own `/api` stays `application/json`.

use axum::extract::Request;
use axum::http::{HeaderValue, Method, header};
use axum::middleware::Next;
use axum::response::Response;

/// The version of GoCD's API that ferrocd serves at `path` (below `/go/api`), if GoCD has it.
pub fn version_of(method: &Method, path: &str) -> Option<u8> {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let version = match segments.as_slice() {
        ["dashboard"] => 4,
        [
            "pipelines",
            _,
            "history" | "status" | "pause" | "unpause" | "unlock" | "schedule",
        ] => 1,
        ["pipelines", _, "instance", _] => 1,
        ["stages", _, _, _, "run"] => 2,
        ["stages", _, _, _, _] if method == Method::GET => 3,
        [
            "stages",
            _,
            _,
            _,
            _,
            "cancel" | "run-failed-jobs" | "run-selected-jobs",
        ] => 3,
        ["agents"] => 7,
        ["agents", uuid] if !["register"].contains(uuid) => 7,
        ["version"] => 1,
        ["current_user", "access_tokens", ..] => 1,
        _ => return None,
    };
    Some(version)
}

/// Answers a `/go/api` call of GoCD's in GoCD's media type of the version served.
pub async fn media_type(request: Request, next: Next) -> Response {
    let Some(path) = request.uri().path().strip_prefix("/go/api") else {
        return next.run(request).await;
    };
    let Some(version) = version_of(request.method(), path) else {
        return next.run(request).await;
    };
    let mut response = next.run(request).await;
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.starts_with("application/json"));
    if is_json {
        let media = format!("application/vnd.go.cd.v{version}+json; charset=utf-8");
        if let Ok(value) = HeaderValue::from_str(&media) {
            response.headers_mut().insert(header::CONTENT_TYPE, value);
        }
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gocd_calls_have_their_versions() {
        assert_eq!(version_of(&Method::GET, "/dashboard"), Some(4));
        assert_eq!(version_of(&Method::GET, "/pipelines/p/history"), Some(1));
        assert_eq!(version_of(&Method::GET, "/stages/p/1/s/2"), Some(3));
        assert_eq!(version_of(&Method::POST, "/stages/p/1/s/run"), Some(2));
        assert_eq!(
            version_of(&Method::POST, "/stages/p/1/s/2/run-failed-jobs"),
            Some(3)
        );
        assert_eq!(version_of(&Method::GET, "/agents"), Some(7));
        assert_eq!(version_of(&Method::POST, "/agents/register"), None);
        assert_eq!(version_of(&Method::GET, "/config"), None);
    }
}
