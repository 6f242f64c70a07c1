//! `GET /api/events?topics=T1,T2`: the domain events, as JSON, for scripts.
//! `ready` comes first, once every topic is subscribed; past events are not replayed.
//!
//! One live view per topic (started by the first stream that names it, retired once none
//! does), driven by the shared runner: it hears each event once, re-reads what the event
//! names (the agent, the run, the console bytes) and serializes it once, and every stream
//! following the topic receives that same JSON, in commit order. A stream only frames it
//! with its own id.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use axum::extract::State;
use axum::response::Response;
use bytes::Bytes;
use futures::stream::{self, StreamExt};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::broadcast::error::RecvError;
use uuid::Uuid;

use super::ApiQuery;
use crate::AppState;
use crate::domain::agent::Agent;
use crate::error::{Error, Result};
use crate::events::{DomainEvent, Topic};
use crate::web::api::agents::AgentJson;
use crate::web::api::jobs::RunJson;
use crate::web::auth::Credential;
use crate::web::live::{KeyedViews, Output, Subscription, View, Watched};
use crate::web::routes::Routes;
use crate::web::sse;

pub fn router() -> Routes {
    Routes::new().get("/events", Credential::User, events)
}

/// The live views of the topics some `/api/events` stream follows.
pub type TopicViews = KeyedViews<Topic, TopicView>;

/// One stream follows a few topics; a script wanting more opens another.
const MAX_TOPICS: usize = 32;

#[derive(Deserialize)]
struct EventsQuery {
    topics: Option<String>,
}

/// What a topic's view sends its streams.
#[derive(Clone)]
pub enum Sent {
    /// An event, its JSON data serialized once for every stream.
    Event { name: &'static str, data: Bytes },
    /// The view missed events (the hub's channel lagged): the client should re-read state.
    Lagged { missed: u64 },
}

/// What the streams of one topic share.
pub struct TopicView {
    out: Arc<Output<Sent>>,
}

impl Watched for TopicView {
    fn watchers(&self) -> usize {
        self.out.watchers()
    }
}

async fn events(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<EventsQuery>,
    slot: sse::StreamSlot,
) -> Result<Response> {
    let topics = parse_topics(query.topics.as_deref().unwrap_or_default())?;
    for topic in &topics {
        require_subject(&state, topic).await?;
    }
    // Attach to every topic's view before saying `ready`, so nothing published after it is
    // missed.
    let mut followed = Vec::with_capacity(topics.len());
    for topic in &topics {
        let changes = attach(&state, topic).await?;
        let topic = topic.clone();
        let renders = Arc::clone(&state.renders);
        followed.push(
            async_stream::stream! {
                let mut changes = changes;
                loop {
                    match changes.recv().await {
                        Ok(sent) => yield (topic.clone(), sent),
                        // This stream fell behind the view: say so (never a silent gap).
                        Err(RecvError::Lagged(missed)) => {
                            renders.lagged("api_events");
                            yield (topic.clone(), Sent::Lagged { missed })
                        }
                        Err(RecvError::Closed) => break,
                    }
                }
            }
            .boxed(),
        );
    }
    let merged = stream::select_all(followed);
    let names: Vec<String> = topics.iter().map(Topic::to_string).collect();
    let ready = sse::frame("ready", "0", &json!({ "topics": names }).to_string());
    let frames =
        stream::once(async move { ready }).chain(merged.enumerate().map(|(i, (topic, sent))| {
            let id = (i + 1).to_string();
            match sent {
                Sent::Event { name, data } => {
                    sse::frame(name, &id, &String::from_utf8_lossy(&data))
                }
                Sent::Lagged { missed } => sse::frame(
                    "lagged",
                    &id,
                    &json!({ "topic": topic.to_string(), "missed": missed }).to_string(),
                ),
            }
        }));
    Ok(sse::response(frames, slot, state.shutdown.clone()))
}

/// A topic about one agent or build is followed only while that thing exists: a view (and a
/// channel) per made-up id would let anyone fill the server's memory.
async fn require_subject(state: &AppState, topic: &Topic) -> Result<()> {
    let found = match topic {
        Topic::AgentsUpdates
        | Topic::SchedulerUpdates
        | Topic::PipelinesUpdates
        | Topic::JobRunsUpdates => return Ok(()),
        Topic::AgentJobRuns(uuid) => state.agents.get(*uuid).await.map(|_| ()),
        Topic::AgentJobRunConsole(build_id) => state.job_runs.get(*build_id).await.map(|_| ()),
    };
    found.map_err(|error| match error {
        Error::NotFound(what) => Error::Unprocessable(format!("topics: {topic}: {what}")),
        other => other,
    })
}

fn parse_topics(raw: &str) -> Result<Vec<Topic>> {
    let mut topics: Vec<Topic> = Vec::new();
    for name in raw.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        let topic: Topic = name
            .parse()
            .map_err(|e| Error::Unprocessable(format!("topics: {e}")))?;
        if !topics.contains(&topic) {
            topics.push(topic); // a topic named twice is one subscription
        }
    }
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
    Ok(topics)
}

/// Follows `topic`'s view, starting it if no stream follows the topic yet.
async fn attach(state: &AppState, topic: &Topic) -> Result<tokio::sync::broadcast::Receiver<Sent>> {
    let views = Arc::clone(&state.topic_views);
    // A deleted agent cannot be re-read: the agents' view starts knowing every agent, so it
    // can send one's last state when it goes. Subscribe before the read, so no change falls
    // between the two (the read is dropped if the view runs already).
    let mut started = None;
    if *topic == Topic::AgentsUpdates && !views.contains(topic) {
        let events = Subscription::new(&state.hub, std::slice::from_ref(topic));
        let known = state.agents.list().await?;
        started = Some((events, known));
    }
    Ok(views.attach(
        topic.clone(),
        || {
            let (events, known) = started.unwrap_or_else(|| {
                (
                    Subscription::new(&state.hub, std::slice::from_ref(topic)),
                    Vec::new(),
                )
            });
            start(state, topic.clone(), events, known)
        },
        |view| view.out.subscribe(),
    ))
}

fn start(
    state: &AppState,
    topic: Topic,
    events: Subscription,
    known: Vec<Agent>,
) -> Arc<TopicView> {
    let out = Output::new(Arc::clone(&state.renders));
    let mut view = TopicRenderer {
        state: state.clone(),
        heard: Vec::new(),
        agents: HashMap::new(),
    };
    for agent in known {
        view.remember(agent);
    }
    let shutdown = state.shutdown.clone();
    state
        .topic_views
        .spawn(topic, view, events, Arc::clone(&out), shutdown);
    Arc::new(TopicView { out })
}

/// What one topic's view has heard and not sent yet, in order.
enum Heard {
    Event(DomainEvent),
    Missed(u64),
}

struct TopicRenderer {
    state: AppState,
    heard: Vec<Heard>,
    /// Every agent's JSON as last read (agents' topic only): what `agent_deleted` carries.
    agents: HashMap<Uuid, Bytes>,
}

impl TopicRenderer {
    fn remember(&mut self, agent: Agent) -> Bytes {
        let uuid = agent.uuid;
        let json = to_json(&AgentJson(agent));
        self.agents.insert(uuid, json.clone());
        json
    }
}

fn to_json(value: &impl serde::Serialize) -> Bytes {
    Bytes::from(serde_json::to_vec(value).unwrap_or_else(|_| b"null".to_vec()))
}

impl View for TopicRenderer {
    type Change = Sent;

    fn note(&mut self, event: &DomainEvent) {
        self.heard.push(Heard::Event(event.clone()));
    }

    fn missed(&mut self, _: &Topic, count: u64) {
        self.heard.push(Heard::Missed(count));
    }

    fn is_dirty(&self) -> bool {
        !self.heard.is_empty()
    }

    /// Re-reads what the heard events name, once each, then sends every event in order.
    async fn render(&mut self, out: &Output<Sent>) -> Result<()> {
        let events = || {
            self.heard.iter().filter_map(|h| match h {
                Heard::Event(event) => Some(event),
                Heard::Missed(_) => None,
            })
        };
        let mut agents = BTreeSet::new();
        let mut runs = BTreeSet::new();
        let mut console: Option<(i64, i64, i64)> = None;
        for event in events() {
            match *event {
                DomainEvent::AgentRegistered { uuid }
                | DomainEvent::AgentUpdated { uuid }
                | DomainEvent::AgentEnabled { uuid }
                | DomainEvent::AgentDisabled { uuid } => {
                    agents.insert(uuid);
                }
                DomainEvent::RunCreated { build_id } | DomainEvent::RunUpdated { build_id } => {
                    runs.insert(build_id);
                }
                DomainEvent::ConsoleAppend {
                    build_id,
                    start,
                    end,
                } => {
                    let (from, to) =
                        console.map_or((start, end), |(_, f, t)| (f.min(start), t.max(end)));
                    console = Some((build_id, from, to));
                }
                DomainEvent::AgentDeleted { .. }
                | DomainEvent::PendingCount { .. }
                | DomainEvent::PipelineUpdated { .. }
                | DomainEvent::ConfigReloaded
                | DomainEvent::ConfigChanged
                | DomainEvent::ArtifactsChanged { .. } => {}
                // A miss by the time a view hears it (`live::Subscription`).
                DomainEvent::Resync => {}
            }
        }
        // Reads first: if one fails, nothing was sent and the runner tries it all again.
        let uuids: Vec<Uuid> = agents.into_iter().collect();
        let fresh_agents = self.state.agents.find_many(&uuids).await?;
        let mut run_json = HashMap::new();
        for build_id in runs {
            let run = self.state.job_runs.get(build_id).await?;
            run_json.insert(build_id, to_json(&RunJson(run)));
        }
        let log = match console {
            Some((build_id, from, to)) => {
                let (bytes, _) = self
                    .state
                    .job_runs
                    .read_console_window(build_id, from, to - from)
                    .await?;
                Some((from, bytes))
            }
            None => None,
        };
        for agent in fresh_agents {
            self.remember(agent);
        }
        for heard in std::mem::take(&mut self.heard) {
            let event = match heard {
                Heard::Missed(missed) => {
                    out.send(Sent::Lagged { missed });
                    continue;
                }
                Heard::Event(event) => event,
            };
            let data = match event {
                DomainEvent::AgentRegistered { uuid }
                | DomainEvent::AgentUpdated { uuid }
                | DomainEvent::AgentEnabled { uuid }
                | DomainEvent::AgentDisabled { uuid } => self.agents.get(&uuid).cloned(),
                DomainEvent::AgentDeleted { uuid } => self.agents.remove(&uuid),
                DomainEvent::PendingCount { count } => Some(to_json(&json!({ "count": count }))),
                DomainEvent::RunCreated { build_id } | DomainEvent::RunUpdated { build_id } => {
                    run_json.get(&build_id).cloned()
                }
                DomainEvent::ConsoleAppend { start, end, .. } => {
                    log.as_ref().map(|(from, bytes)| {
                        let lo = ((start - from) as usize).min(bytes.len());
                        let hi = ((end - from) as usize).min(bytes.len());
                        let chunk = String::from_utf8_lossy(&bytes[lo..hi]);
                        to_json(&json!({ "offset": end, "chunk": chunk }))
                    })
                }
                // The event is the fact: nothing to re-read.
                DomainEvent::PipelineUpdated {
                    ref pipeline,
                    counter,
                    ref stages,
                } => Some(to_json(&json!({
                    "pipeline": pipeline,
                    "counter": counter,
                    "stages": stages
                        .iter()
                        .map(|(name, status)| json!({ "name": name, "status": status.as_str() }))
                        .collect::<Vec<_>>(),
                }))),
                DomainEvent::ConfigReloaded | DomainEvent::ConfigChanged => {
                    Some(to_json(&json!({})))
                }
                DomainEvent::ArtifactsChanged { build_id } => {
                    Some(to_json(&json!({ "build_id": build_id })))
                }
                // A miss by the time a view hears it (`live::Subscription`).
                DomainEvent::Resync => None,
            };
            // An agent gone before this view could read it: its uuid is all there is.
            let data = data.unwrap_or_else(|| match event {
                DomainEvent::AgentRegistered { uuid }
                | DomainEvent::AgentUpdated { uuid }
                | DomainEvent::AgentEnabled { uuid }
                | DomainEvent::AgentDisabled { uuid }
                | DomainEvent::AgentDeleted { uuid } => to_json(&json!({ "uuid": uuid })),
                _ => Bytes::from_static(b"null"),
            });
            out.rendered("api.event");
            out.send(Sent::Event {
                name: event.name(),
                data,
            });
        }
        Ok(())
    }
}
