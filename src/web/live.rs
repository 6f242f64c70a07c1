//! The one live-view runner. Every live page (agents, run lists, consoles, and the dashboard
//! to come) is a `View` that this runner drives; the view says what an event changes and how
//! to render it, and the runner owns everything else, once:
//!
//! - the subscription to the view's topics, made before the view reads its first state;
//! - coalescing: the first change after a quiet spell renders at once, changes that arrive
//!   while a render is due fold into one trailing render, at most one per `COALESCE`; the
//!   last word always goes out, because only a render clears what the view marked;
//! - a view that misses events (the hub's channel lagged) is told so and re-reads;
//! - a failed render is retried (the view keeps what it had marked);
//! - shutdown, and the retirement of keyed views (a run list, a console) nobody watches;
//! - counting renders per fragment (`RenderCounts`), so tests and metrics can see what a
//!   change costs.
//!
//! Connections never render per viewer: they receive the view's shared `Change`s (frames).

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::stream::{BoxStream, SelectAll};
use futures::{FutureExt, Stream, StreamExt};
use tokio::sync::broadcast;
use tokio::sync::broadcast::error::RecvError;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::error::Result;
use crate::events::{DomainEvent, Hub, Published, Topic};

/// At most one render per view this often. 50 ms kept a dashboard with stages changing at 50/s
/// at p99 65 ms from the trigger to 1,000 viewers; 25 ms brings it to 37 ms for about half as
/// much server CPU again (BENCHMARKS.md, dashboard).
const COALESCE: Duration = Duration::from_millis(25);
/// How often a keyed view checks whether anyone still watches it.
const RETIRE_CHECK: Duration = Duration::from_secs(5);
/// How far a connection may fall behind its view before it gets fresh state instead.
const CONNECTION_CAPACITY: usize = 256;

/// What a page's live view supplies. `note` and `missed` only mark (no I/O); `render`
/// re-reads what was marked, renders it and hands the result to `out`, and clears its marks
/// only when it succeeds (the runner calls it again later otherwise).
pub trait View: Send + 'static {
    /// What connections receive: a frame, or (the console) a batch of lines.
    type Change: Clone + Send + 'static;

    /// Marks what `event` changes.
    fn note(&mut self, event: &DomainEvent);
    /// The view missed `count` events on `topic`: whatever it shows from there must be re-read.
    fn missed(&mut self, topic: &Topic, count: u64);
    /// Whether something is marked and waits for a render.
    fn is_dirty(&self) -> bool;
    fn render(&mut self, out: &Output<Self::Change>) -> impl Future<Output = Result<()>> + Send;
}

/// How many times each fragment has been rendered since start, by name (e.g.
/// `agents.table`), and how many times a connection fell behind its view, by the kind of
/// stream (`view`, `console`, `api_events`). One registry per server, shared by every view.
#[derive(Default)]
pub struct RenderCounts {
    counts: Mutex<HashMap<&'static str, u64>>,
    lags: Mutex<HashMap<&'static str, u64>>,
}

impl RenderCounts {
    /// A connection of a `stream` kind fell behind (it gets the whole state again).
    pub fn lagged(&self, stream: &'static str) {
        *self
            .lags
            .lock()
            .expect("lag counts lock poisoned")
            .entry(stream)
            .or_default() += 1;
    }

    /// Every stream kind's lag count.
    pub fn lags(&self) -> Vec<(&'static str, u64)> {
        let mut all: Vec<_> = self
            .lags
            .lock()
            .expect("lag counts lock poisoned")
            .iter()
            .map(|(k, v)| (*k, *v))
            .collect();
        all.sort();
        all
    }

    pub fn record(&self, fragment: &'static str) {
        *self
            .counts
            .lock()
            .expect("render counts lock poisoned")
            .entry(fragment)
            .or_default() += 1;
    }

    /// Every fragment's count, by name.
    pub fn all(&self) -> Vec<(&'static str, u64)> {
        let mut all: Vec<_> = self
            .counts
            .lock()
            .expect("render counts lock poisoned")
            .iter()
            .map(|(k, v)| (*k, *v))
            .collect();
        all.sort();
        all
    }

    pub fn get(&self, fragment: &str) -> u64 {
        self.counts
            .lock()
            .expect("render counts lock poisoned")
            .get(fragment)
            .copied()
            .unwrap_or(0)
    }
}

/// Where a view's renders go: the broadcast its connections follow, the ids of its events,
/// and the render counts.
pub struct Output<C> {
    changes: broadcast::Sender<C>,
    ids: AtomicU64,
    renders: Arc<RenderCounts>,
}

impl<C: Clone + Send + 'static> Output<C> {
    pub fn new(renders: Arc<RenderCounts>) -> Arc<Output<C>> {
        Arc::new(Output {
            changes: broadcast::channel(CONNECTION_CAPACITY).0,
            ids: AtomicU64::new(0),
            renders,
        })
    }

    /// Hands a change to every connection following now. Update whatever a new connection
    /// reads as its state first, so one that subscribes in between misses nothing.
    pub fn send(&self, change: C) {
        // No connection open is fine: the state is kept for the next one.
        let _ = self.changes.send(change);
    }

    pub fn subscribe(&self) -> broadcast::Receiver<C> {
        self.changes.subscribe()
    }

    /// How many connections follow this view now.
    pub fn watchers(&self) -> usize {
        self.changes.receiver_count()
    }

    /// The id of the next event (ids only grow within a process, so a reconnect is told apart).
    pub fn next_id(&self) -> String {
        (self.ids.fetch_add(1, Ordering::Relaxed) + 1).to_string()
    }

    /// Counts one render of `fragment`.
    pub fn rendered(&self, fragment: &'static str) {
        self.renders.record(fragment);
    }

    /// Counts one connection of a `stream` kind falling behind.
    pub fn lagged(&self, stream: &'static str) {
        self.renders.lagged(stream);
    }
}

impl Output<Bytes> {
    /// One connection of a view whose changes are frames: `state()` first, then the changes;
    /// a connection that falls behind gets `state()` again instead of a gap. Subscribes at
    /// once, before `state()` is read, so nothing falls between the two.
    pub fn frames<F, Fut>(
        self: &Arc<Self>,
        state: F,
    ) -> impl Stream<Item = Bytes> + Send + use<F, Fut>
    where
        F: Fn() -> Fut + Send + 'static,
        Fut: Future<Output = Vec<Bytes>> + Send,
    {
        let mut changes = self.subscribe();
        let renders = Arc::clone(&self.renders);
        async_stream::stream! {
            for frame in state().await {
                yield frame;
            }
            loop {
                match changes.recv().await {
                    Ok(frame) => yield frame,
                    Err(RecvError::Lagged(_)) => {
                        renders.lagged("view");
                        for frame in state().await {
                            yield frame;
                        }
                    }
                    Err(RecvError::Closed) => break,
                }
            }
        }
    }
}

/// What a view's subscription yields.
enum Heard {
    Event(Published),
    Missed(Topic, u64),
}

/// A view's subscription to its topics, made before it reads its first state.
pub struct Subscription {
    topics: SelectAll<BoxStream<'static, Heard>>,
}

impl Subscription {
    pub fn new(hub: &Hub, topics: &[Topic]) -> Subscription {
        let streams = topics.iter().map(|topic| {
            let topic = topic.clone();
            let mut events = hub.subscribe(&topic);
            async_stream::stream! {
                loop {
                    match events.recv().await {
                        // Events were lost elsewhere (another node's): as for a lag here.
                        Ok(event) if *event == DomainEvent::Resync => yield Heard::Missed(topic.clone(), 0),
                        Ok(event) => yield Heard::Event(event),
                        Err(RecvError::Lagged(count)) => yield Heard::Missed(topic.clone(), count),
                        Err(RecvError::Closed) => break,
                    }
                }
            }
            .boxed()
        });
        Subscription {
            topics: futures::stream::select_all(streams),
        }
    }
}

/// Asked every few seconds by a keyed view: true once it has been removed from its registry
/// (nobody watches), and its task should end.
type Retire = Box<dyn FnMut() -> bool + Send>;

/// Runs `view` until shutdown.
pub fn spawn<V: View>(
    view: V,
    events: Subscription,
    out: Arc<Output<V::Change>>,
    shutdown: CancellationToken,
) {
    run(view, events, out, shutdown, None);
}

fn run<V: View>(
    mut view: V,
    mut events: Subscription,
    out: Arc<Output<V::Change>>,
    shutdown: CancellationToken,
    mut retire: Option<Retire>,
) {
    tokio::spawn(async move {
        let mut last_render: Option<Instant> = None;
        let mut retire_check = tokio::time::interval(RETIRE_CHECK);
        retire_check.reset();
        loop {
            // At once after a quiet spell, else one period after the last render.
            let due = view.is_dirty().then(|| {
                let now = Instant::now();
                last_render.map_or(now, |at| (at + COALESCE).max(now))
            });
            // Due now: render without a trip through the timer (a sleep until now waits for
            // the timer driver's next turn, up to a millisecond later), taking in first the
            // events already waiting, so that one write's several events make one render.
            if due.is_some_and(|at| at <= Instant::now()) {
                while let Some(Some(heard)) = events.topics.next().now_or_never() {
                    match heard {
                        Heard::Event(event) => view.note(&event),
                        Heard::Missed(topic, count) => view.missed(&topic, count),
                    }
                }
                last_render = Some(Instant::now());
                if let Err(error) = view.render(&out).await {
                    tracing::warn!(%error, view = std::any::type_name::<V>(), "live view could not render; retrying");
                }
                continue;
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                heard = events.topics.next() => match heard {
                    Some(Heard::Event(event)) => view.note(&event),
                    Some(Heard::Missed(topic, count)) => view.missed(&topic, count),
                    None => break,
                },
                _ = tokio::time::sleep_until(due.unwrap_or_else(Instant::now)), if due.is_some() => {
                    last_render = Some(Instant::now());
                    if let Err(error) = view.render(&out).await {
                        tracing::warn!(%error, view = std::any::type_name::<V>(), "live view could not render; retrying");
                    }
                }
                _ = retire_check.tick(), if retire.is_some() => {
                    if retire.as_mut().is_some_and(|retired| retired()) {
                        break;
                    }
                }
            }
        }
    });
}

/// What a keyed registry holds: the connections' side of a view, which knows how many
/// connections follow it.
pub trait Watched {
    fn watchers(&self) -> usize;
}

/// Live views that exist only while someone watches: one per key (an agent's run list, a
/// build's console), started by the first connection and removed once the last has gone.
pub struct KeyedViews<K, V> {
    views: Mutex<HashMap<K, Arc<V>>>,
}

impl<K: std::hash::Hash + Eq + Clone, V> Default for KeyedViews<K, V> {
    fn default() -> Self {
        KeyedViews {
            views: Default::default(),
        }
    }
}

impl<K: std::hash::Hash + Eq + Clone, V> KeyedViews<K, V> {
    /// Whether `key` has a view now (it may start or retire a moment later).
    pub fn contains(&self, key: &K) -> bool {
        self.views
            .lock()
            .expect("views lock poisoned")
            .contains_key(key)
    }

    /// The view for `key`, started with `start` if there is none. `attach` runs under the
    /// registry's lock, so a subscription it makes cannot race the view's retirement.
    pub fn attach<T>(
        &self,
        key: K,
        start: impl FnOnce() -> Arc<V>,
        attach: impl FnOnce(&Arc<V>) -> T,
    ) -> T {
        let mut views = self.views.lock().expect("views lock poisoned");
        let view = views.entry(key).or_insert_with(start);
        attach(view)
    }
}

impl<K, V> KeyedViews<K, V>
where
    K: std::hash::Hash + Eq + Clone + Send + 'static,
    V: Watched + Send + Sync + 'static,
{
    /// Runs `view` (the view of `key`) until shutdown, or until nobody watches it any more:
    /// then it is removed from this registry, under its lock, and its task ends.
    pub fn spawn<W: View>(
        self: &Arc<Self>,
        key: K,
        view: W,
        events: Subscription,
        out: Arc<Output<W::Change>>,
        shutdown: CancellationToken,
    ) {
        let views = Arc::clone(self);
        let retire: Retire = Box::new(move || views.retire_if_unwatched(&key));
        run(view, events, out, shutdown, Some(retire));
    }

    /// Removes `key`'s view if nobody watches it; true if it was removed.
    fn retire_if_unwatched(&self, key: &K) -> bool {
        let mut views = self.views.lock().expect("views lock poisoned");
        match views.get(key) {
            Some(view) if view.watchers() == 0 => {
                views.remove(key);
                true
            }
            _ => false,
        }
    }
}

/// A page part rendered whole for every connection at once: a keyed run list, a pipeline's
/// history, a stage run. The part says which events may change it and renders its HTML; the
/// view sends it as one named event and keeps the latest frame for each new connection.
pub trait Part: Send + 'static {
    /// The SSE event its HTML goes out as (and the name its renders are counted under).
    const EVENT: &'static str;
    const COUNTED_AS: &'static str;
    /// Whether `event` may change what it shows.
    fn hears(&self, event: &DomainEvent) -> bool;
    /// Its HTML as stored now.
    fn render(&mut self) -> impl Future<Output = Result<String>> + Send;
}

/// What the connections to one part share: its latest frame and its changes.
pub struct PartView {
    out: Arc<Output<Bytes>>,
    latest: Arc<Mutex<Option<Bytes>>>,
}

impl Watched for PartView {
    fn watchers(&self) -> usize {
        self.out.watchers()
    }
}

impl PartView {
    /// One connection to the part of `key` in `views`: the view is started (subscribed to
    /// `topics`, then rendered from `part()`) if nobody watches it yet.
    pub fn connect<K, P>(
        views: &Arc<KeyedViews<K, PartView>>,
        key: K,
        hub: &Hub,
        topics: &[Topic],
        renders: &Arc<RenderCounts>,
        shutdown: &CancellationToken,
        part: impl FnOnce() -> P,
    ) -> BoxStream<'static, Bytes>
    where
        K: std::hash::Hash + Eq + Clone + Send + 'static,
        P: Part,
    {
        let start = || {
            let events = Subscription::new(hub, topics);
            PartView::start(
                views,
                key.clone(),
                part(),
                events,
                Arc::clone(renders),
                shutdown.clone(),
            )
        };
        views.attach(key.clone(), start, |view| view.stream().boxed())
    }

    /// Starts the view of `key` in `views`, rendering at once (after `events` subscribed);
    /// it retires when nobody watches.
    fn start<K, P>(
        views: &Arc<KeyedViews<K, PartView>>,
        key: K,
        part: P,
        events: Subscription,
        renders: Arc<RenderCounts>,
        shutdown: CancellationToken,
    ) -> Arc<PartView>
    where
        K: std::hash::Hash + Eq + Clone + Send + 'static,
        P: Part,
    {
        let out = Output::new(renders);
        let latest = Arc::new(Mutex::new(None));
        let view = Rendered {
            part,
            latest: Arc::clone(&latest),
            dirty: true,
        };
        views.spawn(key, view, events, Arc::clone(&out), shutdown);
        Arc::new(PartView { out, latest })
    }

    /// One connection: the latest frame (once there is one), then every change.
    pub fn stream(&self) -> impl Stream<Item = Bytes> + Send + use<> {
        let latest = Arc::clone(&self.latest);
        self.out.frames(move || {
            let state: Vec<Bytes> = latest
                .lock()
                .expect("part lock poisoned")
                .iter()
                .cloned()
                .collect();
            async move { state }
        })
    }
}

/// Drives a [`Part`]: any event it hears (or a gap) marks it, a render sends it whole.
struct Rendered<P> {
    part: P,
    latest: Arc<Mutex<Option<Bytes>>>,
    dirty: bool,
}

impl<P: Part> View for Rendered<P> {
    type Change = Bytes;

    fn note(&mut self, event: &DomainEvent) {
        if self.part.hears(event) {
            self.dirty = true;
        }
    }

    fn missed(&mut self, _: &Topic, _: u64) {
        self.dirty = true;
    }

    fn is_dirty(&self) -> bool {
        self.dirty
    }

    async fn render(&mut self, out: &Output<Bytes>) -> Result<()> {
        let html = self.part.render().await?;
        out.rendered(P::COUNTED_AS);
        let frame = crate::web::sse::frame(P::EVENT, &out.next_id(), &html);
        *self.latest.lock().expect("part lock poisoned") = Some(frame.clone());
        out.send(frame);
        self.dirty = false;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{Publisher, hub};
    use std::sync::atomic::AtomicUsize;

    /// Counts the events it has noted and, at each render, sends how many it had then and
    /// how many times it had been told it missed some.
    struct Counter {
        noted: usize,
        rendered_upto: usize,
        missed: Arc<AtomicUsize>,
    }

    impl View for Counter {
        type Change = Covered;
        fn note(&mut self, _: &DomainEvent) {
            self.noted += 1;
        }
        fn missed(&mut self, _: &Topic, _: u64) {
            self.missed.fetch_add(1, Ordering::SeqCst);
            self.noted += 1;
        }
        fn is_dirty(&self) -> bool {
            self.noted != self.rendered_upto
        }
        async fn render(&mut self, out: &Output<Covered>) -> Result<()> {
            self.rendered_upto = self.noted;
            out.rendered("counter");
            out.send((self.noted, self.missed.load(Ordering::SeqCst)));
            Ok(())
        }
    }

    /// What a `Counter` render sends: events noted, and times told it missed some.
    type Covered = (usize, usize);

    struct Started {
        out: Arc<Output<Covered>>,
        renders: Arc<RenderCounts>,
        missed: Arc<AtomicUsize>,
        shutdown: CancellationToken,
    }

    fn start(hub: &Hub) -> Started {
        let renders = Arc::new(RenderCounts::default());
        let out = Output::new(Arc::clone(&renders));
        let missed = Arc::new(AtomicUsize::new(0));
        let shutdown = CancellationToken::new();
        let view = Counter {
            noted: 0,
            rendered_upto: 0,
            missed: Arc::clone(&missed),
        };
        let events = Subscription::new(hub, &[Topic::SchedulerUpdates]);
        spawn(view, events, Arc::clone(&out), shutdown.clone());
        Started {
            out,
            renders,
            missed,
            shutdown,
        }
    }

    #[tokio::test]
    async fn a_connection_that_falls_behind_gets_the_state_again_and_is_counted() {
        let renders = Arc::new(RenderCounts::default());
        let out: Arc<Output<Bytes>> = Output::new(Arc::clone(&renders));
        let frames = out.frames(|| async { vec![Bytes::from_static(b"state")] });
        let mut frames = std::pin::pin!(frames);
        assert_eq!(frames.next().await.unwrap(), Bytes::from_static(b"state"));
        for n in 0..(CONNECTION_CAPACITY + 10) {
            out.send(Bytes::from(n.to_string()));
        }
        assert_eq!(frames.next().await.unwrap(), Bytes::from_static(b"state"));
        assert_eq!(renders.lags(), [("view", 1)]);
    }

    #[tokio::test]
    async fn a_burst_folds_into_few_renders_and_the_last_one_covers_it_all() {
        let (hub, publisher) = hub();
        let Started {
            out,
            renders: counts,
            shutdown,
            ..
        } = start(&hub);
        let mut changes = out.subscribe();
        for count in 0..200 {
            send_pending(&publisher, count);
        }
        let mut renders = 0;
        loop {
            let (covered, _) = tokio::time::timeout(Duration::from_secs(20), changes.recv())
                .await
                .expect("a render within the deadline")
                .expect("the view runs");
            renders += 1;
            if covered == 200 {
                break;
            }
        }
        // The first event renders at once; the rest wait for at most a few trailing renders.
        assert!(renders <= 20, "{renders} renders for one burst");
        assert_eq!(counts.get("counter"), renders as u64);
        shutdown.cancel();
    }

    #[tokio::test]
    async fn a_view_that_falls_behind_is_told_and_renders_again() {
        let (hub, publisher) = hub();
        let Started {
            out,
            missed,
            shutdown,
            ..
        } = start(&hub);
        let mut changes = out.subscribe();
        // More than the hub keeps for a topic, published before the view can read any.
        for count in 0..3000 {
            send_pending(&publisher, count);
        }
        // A render follows, after the view was told.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let render = tokio::time::timeout_at(deadline, changes.recv()).await;
            let (_, missed_then) = render
                .expect("no render after the view was told it missed events")
                .expect("the view runs");
            if missed_then > 0 {
                break;
            }
        }
        assert!(missed.load(Ordering::SeqCst) > 0);
        shutdown.cancel();
    }

    #[tokio::test]
    async fn a_frame_connection_that_falls_behind_gets_the_state_again_not_a_gap() {
        let out: Arc<Output<Bytes>> = Output::new(Arc::default());
        let state = Arc::new(Mutex::new(Bytes::from_static(b"state v1")));
        let read = Arc::clone(&state);
        let mut stream = Box::pin(out.frames(move || {
            let read = Arc::clone(&read);
            async move { vec![read.lock().unwrap().clone()] }
        }));
        assert_eq!(
            stream.next().await.unwrap(),
            Bytes::from_static(b"state v1")
        );
        // More changes than a connection may fall behind by, none of them read yet.
        for i in 0..(CONNECTION_CAPACITY + 10) {
            *state.lock().unwrap() = Bytes::from(format!("state after {i}"));
            out.send(Bytes::from(format!("change {i}")));
        }
        let last = CONNECTION_CAPACITY + 9;
        assert_eq!(
            stream.next().await.unwrap(),
            Bytes::from(format!("state after {last}")),
            "fresh state first"
        );
        // Then the changes still buffered follow.
        assert!(stream.next().await.unwrap().starts_with(b"change "));
    }

    fn send_pending(publisher: &Publisher, count: u64) {
        publisher.send(
            &Topic::SchedulerUpdates,
            DomainEvent::PendingCount { count },
        );
    }
}
