//! `GET /go/cctray.xml`: the CCTray feed that build monitors (CCMenu, Nevergreen,
//! BuildNotify) read, as GoCD serves it: a `<Project>` per stage (`P :: S`) and per job
//! (`P :: S :: J`), none for the pipeline itself. Monitors send Basic credentials or a token,
//! which the route's guard takes as it does on the API.

use axum::extract::State;
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};

use crate::AppState;
use crate::domain::job_run::JobResult;
use crate::error::Result;
use crate::pipelines::FeedProject;
use crate::web::auth::Credential;
use crate::web::format_time;
use crate::web::routes::Routes;

pub fn router() -> Routes {
    Routes::new().get("/go/cctray.xml", Credential::User, feed)
}

async fn feed(State(state): State<AppState>, headers: HeaderMap) -> Result<Response> {
    let projects = state.pipelines.feed().await?;
    let base = match &state.public_url {
        Some(url) => url.trim_end_matches('/').to_string(),
        // Without --public-url, the address the monitor used.
        None => {
            let host = headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .unwrap_or("127.0.0.1:8153");
            format!("http://{host}")
        }
    };
    Ok((
        [(header::CONTENT_TYPE, "application/xml; charset=utf-8")],
        render(&projects, &base),
    )
        .into_response())
}

fn render(projects: &[FeedProject], base: &str) -> String {
    let mut xml = String::from("<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<Projects>\n");
    for project in projects {
        let status = match project.last_result {
            Some(JobResult::Passed) => "Success",
            Some(JobResult::Failed) => "Failure",
            Some(JobResult::Cancelled) => "Unknown",
            _ => "Unknown",
        };
        xml.push_str(&format!(
            "  <Project name=\"{}\" activity=\"{}\" lastBuildStatus=\"{status}\" \
             lastBuildLabel=\"{}\" lastBuildTime=\"{}\" webUrl=\"{}\" />\n",
            escape(&project.name),
            if project.building {
                "Building"
            } else {
                "Sleeping"
            },
            escape(&project.last_label),
            project.last_time.map(format_time).unwrap_or_default(),
            escape(&format!("{base}{}", project.path)),
        ));
    }
    xml.push_str("</Projects>\n");
    xml
}

/// Text as an XML attribute value.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c if (c as u32) < 0x20 && c != '\t' => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_feed_escapes_names_and_labels_and_says_what_gocd_says() {
        let projects = [FeedProject {
            name: "a&b :: <s>".into(),
            building: true,
            last_result: Some(JobResult::Failed),
            last_label: "1.\"2\"".into(),
            last_time: Some(0),
            path: "/pipelines/a&b/1/s/1".into(),
        }];
        let xml = render(&projects, "https://ci.example.com");
        assert!(xml.contains("name=\"a&amp;b :: &lt;s&gt;\""), "{xml}");
        assert!(xml.contains("activity=\"Building\""));
        assert!(xml.contains("lastBuildStatus=\"Failure\""));
        assert!(xml.contains("lastBuildLabel=\"1.&quot;2&quot;\""));
        assert!(xml.contains("webUrl=\"https://ci.example.com/pipelines/a&amp;b/1/s/1\""));
    }
}
