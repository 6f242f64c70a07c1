//! `GET /api/events?topics=T1,T2`: the domain events themselves, as JSON, for scripts.
//! `ready` comes first, once every topic is subscribed; past events are not replayed.

use axum::Router;
use axum::extract::State;
use axum::response::Response;
use axum::routing::get;
use futures::stream::{self, StreamExt};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::broadcast::error::RecvError;

use super::ApiQuery;
use crate::AppState;
use crate::error::{Error, Result};
use crate::events::{DomainEvent, Topic};
use crate::web::api::agents::AgentJson;
use crate::web::api::jobs::RunJson;
use crate::web::sse;

pub fn router() -> Router<AppState> {
    Router::new().route("/events", get(events))
}

/// One stream follows a few topics; a script wanting more opens another.
const MAX_TOPICS: usize = 32;

#[derive(Deserialize)]
struct EventsQuery {
    topics: Option<String>,
}

/// What a topic's subscription yields: an event, or word that some were dropped.
enum Item {
    Event(crate::events::Published),
    Lagged(Topic, u64),
}

async fn events(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<EventsQuery>,
) -> Result<Response> {
    let topics: Vec<Topic> = query
        .topics
        .as_deref()
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(|t| {
            t.parse()
                .map_err(|e| Error::Unprocessable(format!("topics: {e}")))
        })
        .collect::<Result<_>>()?;
    let mut topics = topics;
    let mut seen = std::collections::HashSet::new();
    topics.retain(|t| seen.insert(t.clone())); // a topic named twice is one subscription
    if topics.len() > MAX_TOPICS {
        return Err(Error::Unprocessable(format!(
            "topics: at most {MAX_TOPICS} per stream"
        )));
    }
    if topics.is_empty() {
        return Err(Error::Unprocessable(
            "topics: name at least one topic, e.g. ?topics=agents:updates".into(),
        ));
    }
    // Subscribe to everything before saying `ready`, so nothing published after it is missed.
    let subscriptions = topics.iter().map(|topic| {
        let topic = topic.clone();
        let mut rx = state.hub.subscribe(&topic);
        async_stream::stream! {
            loop {
                match rx.recv().await {
                    Ok(event) => yield Item::Event(event),
                    Err(RecvError::Lagged(missed)) => yield Item::Lagged(topic.clone(), missed),
                    Err(RecvError::Closed) => break,
                }
            }
        }
        .boxed()
    });
    let merged = stream::select_all(subscriptions.collect::<Vec<_>>());
    let names: Vec<String> = topics.iter().map(Topic::to_string).collect();
    let ready = sse::frame("ready", "0", &json!({ "topics": names }).to_string());
    let frames = stream::once(async move { ready }).chain(merged.enumerate().map(|(i, item)| {
        let id = (i + 1).to_string();
        match item {
            Item::Event(event) => sse::frame(event.name(), &id, &data(&event).to_string()),
            // Too slow to keep up: say so (never a silent gap); the client re-reads state.
            Item::Lagged(topic, missed) => sse::frame(
                "lagged",
                &id,
                &json!({ "topic": topic.to_string(), "missed": missed }).to_string(),
            ),
        }
    }));
    Ok(sse::response(frames, state.shutdown.clone()))
}

/// The event's JSON data, as `/api/events` sends it.
fn data(event: &DomainEvent) -> serde_json::Value {
    let value = match event {
        DomainEvent::AgentRegistered(agent)
        | DomainEvent::AgentUpdated(agent)
        | DomainEvent::AgentEnabled(agent)
        | DomainEvent::AgentDisabled(agent)
        | DomainEvent::AgentDeleted(agent) => serde_json::to_value(AgentJson(agent.clone())),
        DomainEvent::PendingCount { count } => Ok(json!({ "count": count })),
        DomainEvent::RunCreated(run) | DomainEvent::RunUpdated(run) => {
            serde_json::to_value(RunJson(run.clone()))
        }
        DomainEvent::ConsoleAppend { start, bytes, .. } => Ok(json!({
            "offset": start + bytes.len() as i64,
            "chunk": String::from_utf8_lossy(bytes),
        })),
    };
    value.unwrap_or(serde_json::Value::Null)
}
