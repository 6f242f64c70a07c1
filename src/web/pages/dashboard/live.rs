//! The dashboard's live view, run by the shared runner (`web::live`), on the agents page's
//! pattern: it keeps every block it has told its connections about (group headings and
//! pipeline cards, each an id, an order and its HTML). A pipeline's change re-reads that one
//! pipeline and sends its card as `pipeline-{name}`; a config reload (or missed events)
//! re-reads the dashboard and sends only the blocks that differ: `pipeline-added` for a block
//! the connections lack (placed by its `data-order`), its own event for one they have, empty
//! data for one that is gone, and `config-errors` when the errors changed. The whole body
//! (`dashboard`) goes to a connection's first state and a lagging connection only, rendered
//! when one asks and cached until a block changes.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, RwLock};

use bytes::Bytes;
use futures::Stream;
use tokio_util::sync::CancellationToken;

use super::fragments;
use crate::error::{Error, Result};
use crate::events::{DomainEvent, Hub, Topic};
use crate::pipelines::{PipelineView, Pipelines};
use crate::web::live::{self, Output, RenderCounts, Subscription, View};
use crate::web::pages::fragment;
use crate::web::sse::frame;

/// What `/pipelines/events` connections share.
pub struct DashboardView {
    out: Arc<Output<Bytes>>,
    shared: Arc<Shared>,
}

struct Shared {
    blocks: RwLock<Blocks>,
    /// The `dashboard` frame and the version of `blocks` it shows.
    body: tokio::sync::Mutex<Option<(u64, Bytes)>>,
    /// The config errors' HTML and its `config-errors` frame.
    errors: RwLock<(String, Bytes)>,
}

/// Every block as the connections were last told: id → (order, HTML).
#[derive(Default)]
struct Blocks {
    version: u64,
    by_id: HashMap<String, (String, String)>,
}

impl Blocks {
    fn in_order(&self) -> String {
        let sorted: BTreeMap<&String, &String> = self
            .by_id
            .values()
            .map(|(order, html)| (order, html))
            .collect();
        sorted.into_values().map(String::as_str).collect()
    }
}

/// The blocks a dashboard of `views` shows: id → (order, HTML).
fn blocks_of(views: &[PipelineView]) -> HashMap<String, (String, String)> {
    let mut blocks = HashMap::new();
    for view in views {
        let group = &view.config.group;
        blocks.entry(fragments::group_id(group)).or_insert_with(|| {
            (
                fragments::order_key(group, true, 0, ""),
                fragment(fragments::group_heading(group)),
            )
        });
        blocks.insert(card_id(&view.config.name), card_block(view));
    }
    if views.is_empty() {
        let html = fragment(fragments::children(&[]));
        blocks.insert("no-pipelines".to_string(), ("\u{10ffff}".to_string(), html));
    }
    blocks
}

/// The dashboard's children as a fresh load shows them: the same blocks the view sends.
pub fn body_of(views: &[PipelineView]) -> String {
    Blocks {
        version: 0,
        by_id: blocks_of(views),
    }
    .in_order()
}

fn card_id(name: &str) -> String {
    format!("pipeline-{name}")
}

fn card_block(view: &PipelineView) -> (String, String) {
    (
        fragments::pipeline_key(view),
        fragment(fragments::card(view)),
    )
}

impl DashboardView {
    pub async fn start(
        pipelines: Pipelines,
        hub: &Hub,
        renders: Arc<RenderCounts>,
        shutdown: CancellationToken,
    ) -> Result<Arc<DashboardView>> {
        // Subscribe before the first read, so no change falls between the two.
        let events = Subscription::new(hub, &[Topic::PipelinesUpdates]);
        let views = pipelines.dashboard().await?;
        let out = Output::new(renders);
        let errors_html = fragment(fragments::config_errors(&pipelines.configs().snapshot()));
        let shared = Arc::new(Shared {
            blocks: RwLock::new(Blocks {
                version: 0,
                by_id: blocks_of(&views),
            }),
            body: tokio::sync::Mutex::new(None),
            errors: RwLock::new((errors_html.clone(), errors_frame(&out, &errors_html))),
        });
        let view = Renderer {
            pipelines,
            shared: Arc::clone(&shared),
            dirty: Dirty::default(),
        };
        live::spawn(view, events, Arc::clone(&out), shutdown);
        Ok(Arc::new(DashboardView { out, shared }))
    }

    /// One `/pipelines/events` connection: `dashboard`, `config-errors`, then the changes.
    pub fn stream(self: &Arc<Self>) -> impl Stream<Item = Bytes> + Send + use<> {
        let view = Arc::clone(self);
        self.out.frames(move || {
            let view = Arc::clone(&view);
            async move { view.state().await }
        })
    }

    async fn state(&self) -> Vec<Bytes> {
        let body = {
            let mut cached = self.shared.body.lock().await;
            let blocks = self.shared.blocks.read().expect("blocks lock poisoned");
            match &*cached {
                Some((version, body)) if *version == blocks.version => body.clone(),
                _ => {
                    self.out.rendered("dashboard.body");
                    let body = frame("dashboard", &self.out.next_id(), &blocks.in_order());
                    *cached = Some((blocks.version, body.clone()));
                    body
                }
            }
        };
        let errors = self
            .shared
            .errors
            .read()
            .expect("errors lock poisoned")
            .1
            .clone();
        vec![body, errors]
    }
}

fn errors_frame(out: &Output<Bytes>, html: &str) -> Bytes {
    out.rendered("dashboard.errors");
    frame("config-errors", &out.next_id(), html)
}

#[derive(Default)]
struct Dirty {
    /// Pipelines to re-read, lowercased.
    pipelines: HashSet<String>,
    /// The config was reloaded or events were missed: re-read the whole dashboard.
    everything: bool,
}

struct Renderer {
    pipelines: Pipelines,
    shared: Arc<Shared>,
    dirty: Dirty,
}

impl View for Renderer {
    type Change = Bytes;

    fn note(&mut self, event: &DomainEvent) {
        match event {
            DomainEvent::PipelineUpdated { pipeline, .. } => {
                self.dirty.pipelines.insert(pipeline.to_lowercase());
            }
            DomainEvent::ConfigReloaded => self.dirty.everything = true,
            _ => {}
        }
    }

    fn missed(&mut self, _: &Topic, _: u64) {
        self.dirty.everything = true;
    }

    fn is_dirty(&self) -> bool {
        self.dirty.everything || !self.dirty.pipelines.is_empty()
    }

    async fn render(&mut self, out: &Output<Bytes>) -> Result<()> {
        let dirty = std::mem::take(&mut self.dirty);
        match self.send_changes(&dirty, out).await {
            Ok(()) => Ok(()),
            Err(error) => {
                self.dirty = dirty;
                Err(error)
            }
        }
    }
}

impl Renderer {
    async fn send_changes(&mut self, dirty: &Dirty, out: &Output<Bytes>) -> Result<()> {
        // Reads first: if one fails, nothing was sent and the runner tries again.
        let (fresh, errors_html) = if dirty.everything {
            let views = self.pipelines.dashboard().await?;
            let snapshot = self.pipelines.configs().snapshot();
            (
                Fresh::All(blocks_of(&views)),
                Some(fragment(fragments::config_errors(&snapshot))),
            )
        } else {
            let mut cards = Vec::new();
            for name in &dirty.pipelines {
                match self.pipelines.view(name).await {
                    Ok(view) => cards.push((card_id(&view.config.name), Some(card_block(&view)))),
                    // Gone from the config: the reload that took it sends the removal.
                    Err(Error::NotFound(_)) => {}
                    Err(other) => return Err(other),
                }
            }
            (Fresh::Some(cards), None)
        };
        let mut frames = Vec::new();
        {
            let mut blocks = self.shared.blocks.write().expect("blocks lock poisoned");
            let changes: Vec<(String, Option<(String, String)>)> = match fresh {
                Fresh::All(mut all) => {
                    let mut changes: Vec<_> = blocks
                        .by_id
                        .keys()
                        .filter(|id| !all.contains_key(*id))
                        .map(|id| (id.clone(), None))
                        .collect();
                    changes.extend(all.drain().map(|(id, block)| (id, Some(block))));
                    changes
                }
                Fresh::Some(cards) => cards,
            };
            for (id, block) in changes {
                let before = blocks.by_id.get(&id);
                match block {
                    None if before.is_some() => {
                        blocks.by_id.remove(&id);
                        frames.push(frame(&id, &out.next_id(), ""));
                    }
                    Some(block) if before != Some(&block) => {
                        // A block whose place changed is sent as added: the browser re-places it.
                        let event = match before {
                            Some((order, _)) if *order == block.0 => id.clone(),
                            _ => "pipeline-added".to_string(),
                        };
                        out.rendered("dashboard.block");
                        frames.push(frame(&event, &out.next_id(), &block.1));
                        blocks.by_id.insert(id, block);
                    }
                    _ => {}
                }
            }
            if !frames.is_empty() {
                blocks.version += 1;
            }
        }
        if let Some(html) = errors_html {
            let mut errors = self.shared.errors.write().expect("errors lock poisoned");
            if errors.0 != html {
                let errors_frame = errors_frame(out, &html);
                *errors = (html, errors_frame.clone());
                frames.push(errors_frame);
            }
        }
        for frame in frames {
            out.send(frame);
        }
        Ok(())
    }
}

enum Fresh {
    All(HashMap<String, (String, String)>),
    Some(Vec<(String, Option<(String, String)>)>),
}
