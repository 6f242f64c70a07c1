//! The run page (`/builds/{id}`, `/agents/{uuid}/job_run_history/{id}` and GoCD's
//! `/tab/build/detail/…`): status, timings, cancel, the live console, and the tabs beside it
//! (tests, artifacts, the job's own).

mod console_html;
pub mod fragments;
pub mod live;
pub mod tabs;

use crate::web::pages::PageResult;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use bytes::Bytes;
use serde::Deserialize;

use super::layout::{Section, page};
use crate::AppState;
use crate::domain::user::User;
use crate::error::{Error, Result};
use crate::job_runs::JobRuns;
use crate::web::api::{ApiQuery, build_id};
use crate::web::auth::{Credential, CurrentUser};
use crate::web::routes::Routes;
use crate::web::sse;

pub use live::ConsoleViews;

/// The first render shows this many lines of a large log ("Show all" shows the rest).
const TAIL_LINES: usize = 1000;
/// …read from at most this much of its end.
const TAIL_WINDOW: i64 = 2 * 1024 * 1024;

pub fn router() -> Routes {
    Routes::new()
        .get("/builds/{build_id}", Credential::User, by_id)
        .get(
            "/agents/{uuid}/job_run_history/{build_id}",
            Credential::User,
            by_agent,
        )
        .get(
            "/tab/build/detail/{pipeline}/{pc}/{stage}/{sc}/{job}",
            Credential::User,
            by_names,
        )
        .get(
            "/builds/{build_id}/console/events",
            Credential::User,
            events,
        )
        .post("/builds/{build_id}/cancel", Credential::User, cancel)
}

#[derive(Deserialize, Default)]
struct PageQuery {
    all: Option<String>,
}

async fn by_id(
    State(state): State<AppState>,
    CurrentUser(viewer): CurrentUser,
    Path(id): Path<String>,
    Query(q): Query<PageQuery>,
) -> PageResult<Response> {
    run_page(&state, &viewer, build_id(&id)?, q.all.is_some()).await
}

async fn by_agent(
    State(state): State<AppState>,
    CurrentUser(viewer): CurrentUser,
    Path((_uuid, id)): Path<(String, String)>,
    Query(q): Query<PageQuery>,
) -> PageResult<Response> {
    run_page(&state, &viewer, build_id(&id)?, q.all.is_some()).await
}

/// GoCD's address: the newest run of that job.
async fn by_names(
    State(state): State<AppState>,
    CurrentUser(viewer): CurrentUser,
    Path((pipeline, pc, stage, sc, job)): Path<(String, i64, String, i64, String)>,
    Query(q): Query<PageQuery>,
) -> PageResult<Response> {
    let id = state
        .job_runs
        .find(&pipeline, pc, &stage, sc, &job)
        .await?
        .ok_or_else(|| Error::NotFound(format!("no run of {pipeline}/{pc}/{stage}/{sc}/{job}")))?;
    run_page(&state, &viewer, id, q.all.is_some()).await
}

async fn run_page(state: &AppState, viewer: &User, id: i64, all: bool) -> PageResult<Response> {
    let run = state.job_runs.get(id).await?;
    if let Some(original) = run.copied_from {
        // A job not re-run with its stage ran once: its page is its original's.
        let query = if all { "?all=1" } else { "" };
        return Ok(Redirect::to(&format!("/builds/{original}{query}")).into_response());
    }
    let facts = live::status_facts(&state.agents, &run).await;
    let artifacts = live::run_artifacts(&state.artifacts, id).await?;
    let custom_tabs = state
        .pipelines
        .job_config(&run)
        .await?
        .map(|job| job.tabs)
        .unwrap_or_default();
    let title = format!(
        "{} / {} / {}",
        run.pipeline_name, run.stage_name, run.job_name
    );
    let shell = |console: &fragments::ConsoleTail| {
        page(
            Some(viewer),
            &title,
            Section::Agents,
            &["console.js", "durations.js"],
            fragments::run_page(&run, &facts, console, (&artifacts, &custom_tabs)),
        )
    };
    // A live run shows complete lines; the stream brings the rest.
    let end_of = |bytes: &[u8], from: i64, length: i64| {
        if run.is_completed() {
            length
        } else {
            console_html::complete_lines_end(bytes, from)
        }
    };
    if all {
        // The whole log, however large, window by window: memory stays flat.
        let (bytes, start) = state.job_runs.read_console_tail(id, 64 * 1024).await?;
        let end = end_of(&bytes, start, start + bytes.len() as i64);
        let placeholder = fragments::ConsoleTail {
            end,
            html: CONSOLE_PLACEHOLDER.to_string(),
            truncated: false,
        };
        let shown = shell(&placeholder).into_string();
        return Ok(stream_console(state.job_runs.clone(), id, end, shown));
    }
    let from = (run.console_length - TAIL_WINDOW).max(0);
    let (bytes, length) = state.job_runs.read_console(id, from).await?;
    let end = end_of(&bytes, from, length);
    let mut shown = &bytes[..(end - from) as usize];
    let mut from = from;
    // A window that starts inside a line starts at the next one (not inside a character).
    if from > 0
        && let Some(i) = shown.iter().position(|b| *b == b'\n')
    {
        shown = &shown[i + 1..];
        from += i as i64 + 1;
    }
    let (start, kept, truncated) = fragments::tail_lines(shown, from, TAIL_LINES);
    let console = fragments::ConsoleTail {
        end,
        html: fragments::render_console(kept, start),
        truncated,
    };
    Ok(shell(&console).into_response())
}

/// Where the streamed log goes in the page. Every text of an agent or a user is escaped, so
/// none can contain it.
const CONSOLE_PLACEHOLDER: &str = "<!--ferrocd:console-->";
/// How much of the log one step of "Show all" reads.
const SHOW_ALL_WINDOW: i64 = 256 * 1024;

/// The page around the console, and the log up to `end` rendered one window at a time as the
/// client reads it.
fn stream_console(job_runs: JobRuns, id: i64, end: i64, page: String) -> Response {
    let (head, tail) = page
        .split_once(CONSOLE_PLACEHOLDER)
        .map(|(h, t)| (h.to_string(), t.to_string()))
        .unwrap_or((page, String::new()));
    let body = async_stream::stream! {
        yield Ok::<_, std::io::Error>(Bytes::from(head));
        let mut from = 0;
        while from < end {
            let window = match job_runs.read_console_window(id, from, SHOW_ALL_WINDOW.min(end - from)).await {
                Ok((bytes, _)) => bytes,
                Err(error) => {
                    tracing::warn!(%error, build_id = id, "could not read the console for Show all");
                    yield Ok(Bytes::from("<span class=\"ln\">[ferrocd] the rest of the log could not be read</span>"));
                    break;
                }
            };
            if window.is_empty() {
                break;
            }
            // Windows end at a line (or, in a line longer than a window, between characters
            // and escape sequences), so each renders as the whole log would.
            let cut = if from + (window.len() as i64) < end {
                match window.iter().rposition(|b| *b == b'\n') {
                    Some(i) => i + 1,
                    None => console_html::safe_cut(&window, window.len()).max(1),
                }
            } else {
                window.len()
            };
            yield Ok(Bytes::from(fragments::render_console(&window[..cut], from)));
            from += cut as i64;
        }
        yield Ok(Bytes::from(tail));
    };
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        Body::from_stream(body),
    )
        .into_response()
}

#[derive(Deserialize)]
struct EventsQuery {
    from: Option<i64>,
}

/// Resumes at `Last-Event-ID` (the browser resends it), else `?from=`, else 0.
async fn events(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<EventsQuery>,
    headers: HeaderMap,
    slot: sse::StreamSlot,
) -> Result<Response> {
    let id = build_id(&id)?;
    // A resume point that cannot be read would silently restart the log from 0.
    let last_event_id = headers
        .get("last-event-id")
        .map(|v| {
            v.to_str()
                .ok()
                .and_then(|v| v.trim().parse::<i64>().ok())
                .filter(|offset| *offset >= 0)
                .ok_or_else(|| {
                    Error::Unprocessable(format!(
                        "Last-Event-ID: expected a byte offset (0 or more), got {:?}",
                        String::from_utf8_lossy(v.as_bytes())
                    ))
                })
        })
        .transpose()?;
    let from = last_event_id.or(q.from).unwrap_or(0);
    let (view, changes) = live::attach(&state, id).await?;
    let stream = live::connection_stream(state.clone(), id, view, changes, from);
    Ok(sse::response(stream, slot, state.shutdown.clone()))
}

/// The page's Cancel button; the `status` event shows the outcome.
async fn cancel(
    State(state): State<AppState>,
    CurrentUser(actor): CurrentUser,
    Path(id): Path<String>,
) -> Result<StatusCode> {
    state.scheduler.cancel(build_id(&id)?, &actor.name).await?;
    Ok(StatusCode::NO_CONTENT)
}
