//! The cross-site check: a state-changing request that a browser says comes from another site
//! is refused before any handler runs (403). Browsers send `Origin` on every POST, PUT, PATCH
//! and DELETE, and `Sec-Fetch-Site` too; scripts, agents and GoCD API clients send neither,
//! so they pass. A page of ours posts with its own origin, which matches `Host`.

use axum::extract::Request;
use axum::http::{HeaderMap, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::error::Error;

pub async fn refuse_cross_site(request: Request, next: Next) -> Response {
    if is_safe(request.method()) {
        return next.run(request).await;
    }
    match cross_site(request.headers()) {
        Some(why) => Error::Forbidden(format!("cross-site request refused: {why}")).into_response(),
        None => next.run(request).await,
    }
}

fn is_safe(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// Why the request comes from another site, if it does.
fn cross_site(headers: &HeaderMap) -> Option<String> {
    let text = |name| headers.get(name).and_then(|v| v.to_str().ok());
    if text("sec-fetch-site") == Some("cross-site") {
        return Some("Sec-Fetch-Site is cross-site".into());
    }
    let origin = text(header::ORIGIN.as_str())?;
    let host = text(header::HOST.as_str()).unwrap_or_default();
    // `scheme://host[:port]`; "null" (a sandboxed or file page) has no host to match.
    let origin_host = origin
        .split_once("://")
        .map(|(_, rest)| rest)
        .unwrap_or_default();
    if origin_host.is_empty() || !origin_host.eq_ignore_ascii_case(host) {
        return Some(format!("Origin {origin:?} is not this server ({host:?})"));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, value.parse().unwrap());
        }
        map
    }

    #[test]
    fn only_a_request_a_browser_marks_as_from_elsewhere_is_cross_site() {
        assert_eq!(
            cross_site(&headers(&[("host", "ci:8153")])),
            None,
            "a script"
        );
        let same = headers(&[("host", "ci:8153"), ("origin", "http://ci:8153")]);
        assert_eq!(cross_site(&same), None);
        let other = headers(&[("host", "ci:8153"), ("origin", "http://evil.example")]);
        assert!(cross_site(&other).is_some());
        let port = headers(&[("host", "ci:8153"), ("origin", "http://ci:9000")]);
        assert!(cross_site(&port).is_some());
        assert!(cross_site(&headers(&[("host", "ci:8153"), ("origin", "null")])).is_some());
        let fetch = headers(&[("host", "ci:8153"), ("sec-fetch-site", "cross-site")]);
        assert!(cross_site(&fetch).is_some());
    }
}
