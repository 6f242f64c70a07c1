//! ferrocd: a continuous-delivery server in the GoCD tradition.
//!
//! `Application::build` wires the database, the event hub, the contexts and their live views
//! into one router; `run_until_stopped` serves it (`web::serve`, with its timeouts and caps)
//! until the shutdown token fires.

pub mod accounts;
pub mod agent_runtime;
pub mod agents;
pub mod artifacts;
pub mod audit;
pub mod config;
pub mod config_sources;
pub mod db;
pub mod domain;
pub mod error;
pub mod events;
pub mod gocd_yaml;
pub mod job_runs;
pub mod materials;
pub mod pipelines;
pub mod scheduler;
pub mod secrets;
pub mod web;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::accounts::Accounts;
use crate::agents::Agents;
use crate::artifacts::Artifacts;
use crate::audit::Audit;
use crate::config::Config;
use crate::config_sources::ConfigSources;
use crate::db::Db;
use crate::events::Hub;
use crate::job_runs::JobRuns;
use crate::materials::Materials;
use crate::pipelines::Pipelines;
use crate::scheduler::Scheduler;
use crate::web::api::events::TopicViews;
use crate::web::hosts::AllowedHosts;
use crate::web::live::RenderCounts;
use crate::web::pages::agents::AgentsView;
use crate::web::pages::build::ConsoleViews;
use crate::web::pages::build_cause::BuildCauseViews;
use crate::web::pages::dashboard::DashboardView;
use crate::web::pages::history::HistoryViews;
use crate::web::pages::runs::RunsViews;
use crate::web::pages::stage::StageViews;
use crate::web::rate_limit::RateLimit;
use crate::web::serve::Limits;
use crate::web::sse::StreamSlots;

/// Everything a handler may reach, behind one `Arc`: axum clones the state for each extractor
/// and middleware of every request, and cloning and dropping two dozen fields (each with its
/// own counts) was 5 % of the server's samples under a fleet of pinging agents (`perf`).
#[derive(Clone)]
pub struct AppState(Arc<AppServices>);

impl std::ops::Deref for AppState {
    type Target = AppServices;
    fn deref(&self) -> &AppServices {
        &self.0
    }
}

/// What [`AppState`] holds.
pub struct AppServices {
    pub db: Db,
    /// Whether this node does the work one node at a time does (`db/duty.rs`).
    pub duty: db::Duty,
    pub accounts: Accounts,
    pub audit: Audit,
    /// The `Host` names pages, streams and the user API answer to.
    pub hosts: Arc<AllowedHosts>,
    /// How people reach the server (`--public-url`): absolute links in feeds.
    pub public_url: Option<String>,
    /// A reverse proxy whose `X-Forwarded-*` headers are believed.
    pub trusted_proxy: Option<std::net::IpAddr>,
    /// Registrations without the key, per address (`None`: no limit).
    pub registrations: Option<Arc<RateLimit>>,
    pub hub: Arc<Hub>,
    pub agents: Agents,
    pub job_runs: JobRuns,
    pub scheduler: Scheduler,
    pub pipelines: Pipelines,
    pub materials: Materials,
    pub artifacts: Artifacts,
    /// What webhooks are signed with; `None`: they are refused.
    pub webhook_secret: Option<Arc<String>>,
    pub agents_view: Arc<AgentsView>,
    pub dashboard_view: Arc<DashboardView>,
    /// Live run lists and consoles, one per watched agent page or build.
    pub runs_views: Arc<RunsViews>,
    pub history_views: Arc<HistoryViews>,
    pub build_cause_views: Arc<BuildCauseViews>,
    pub stage_views: Arc<StageViews>,
    pub console_views: Arc<ConsoleViews>,
    /// The topics some `/api/events` stream follows, one live view each.
    pub topic_views: Arc<TopicViews>,
    /// How often each live fragment has been rendered (shared by every live view).
    pub renders: Arc<RenderCounts>,
    /// `/metrics`: the request, stream and scrape-time figures.
    pub metrics: Arc<web::metrics::Metrics>,
    /// Fires on SIGTERM/Ctrl-C: streams end, background tasks stop.
    pub shutdown: CancellationToken,
    /// The event streams open per client address, held to `--max-streams-per-address`.
    pub stream_slots: Arc<StreamSlots>,
}

/// The router for a state (the whole site, `/api` and `/go/api` included).
pub fn build_app(state: AppState) -> axum::Router {
    web::router(state)
}

pub struct Application {
    listener: TcpListener,
    state: AppState,
    limits: Limits,
}

impl Application {
    /// Opens (and migrates) the database, starts the background tasks and binds the socket.
    pub async fn build(
        config: Config,
    ) -> Result<Application, Box<dyn std::error::Error + Send + Sync>> {
        if config.password_file.is_none()
            && !config.listen.ip().is_loopback()
            && !config.insecure_open
        {
            return Err(format!(
                "refusing to listen on {} without authentication: anyone who can reach it could \
                 run commands on every agent. Give --password-file FILE (htpasswd -B) and --admins, \
                 or listen on 127.0.0.1, or accept the risk with --insecure-open",
                config.listen
            )
            .into());
        }
        if config.password_file.is_none() && !config.listen.ip().is_loopback() {
            tracing::warn!(
                "INSECURE: serving {} with no authentication (--insecure-open): anyone who can \
                 reach it can run commands on every agent",
                config.listen
            );
        }
        let hosts = AllowedHosts::new(
            config.listen,
            config.public_url.as_deref(),
            &config.allowed_hosts,
        )?;
        log_file_limit(config.max_connections);
        std::fs::create_dir_all(&config.data_dir)
            .map_err(|e| format!("cannot create data dir {}: {e}", config.data_dir.display()))?;
        // The database in it holds job secrets: nobody but the server's user may look in.
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&config.data_dir, std::fs::Permissions::from_mode(0o700))
                .map_err(|e| {
                    format!(
                        "cannot restrict data dir {}: {e}",
                        config.data_dir.display()
                    )
                })?;
        }
        let (hub, publisher) = events::hub();
        let db = Db::connect(&config.database_url, publisher).await?;
        let shutdown = CancellationToken::new();
        // Before any view reads its first state, so nothing another node commits is missed.
        db.listen_to_other_nodes(config.database_heartbeat, shutdown.clone())
            .await?;
        let accounts = Accounts::new(
            db.clone(),
            config.password_file.as_deref(),
            config.admins.clone(),
        )?;
        let agents = Agents::new(
            db.clone(),
            config.agent_registration_key.clone(),
            config.max_pending_agents,
            agents::Contacts::new(config.lost_contact_after),
        );
        // Nobody has been heard from in this process yet.
        agents.mark_all_missing().await?;
        let job_runs = JobRuns::new(db.clone(), agents.clone(), config.max_console_bytes);
        let configs = ConfigSources::new(
            db.clone(),
            config.config_paths.clone(),
            config.config_repos.clone(),
            &config.data_dir,
        );
        // Subscribed before anything is read, so a document another node stores meanwhile
        // is read again once the reload task runs.
        let config_changes = hub.subscribe(&events::Topic::PipelinesUpdates);
        configs.move_old_api_files_in().await?;
        configs.reload().await?;
        configs.compare_config_files_with_other_nodes().await?;
        let scheduler = Scheduler::new(db.clone(), configs.clone(), agents.contacts().clone());
        let pipelines = Pipelines::new(db.clone(), configs.clone());
        let materials = Materials::new(db.clone(), pipelines.clone(), &config.data_dir);
        materials.restore_config_repos().await?;
        let webhook_secret = match &config.webhook_secret_file {
            Some(file) => Some(
                std::fs::read_to_string(file)
                    .map_err(|e| format!("webhook-secret-file {}: {e}", file.display()))?
                    .trim()
                    .to_string(),
            ),
            None => config.webhook_secret.clone(),
        }
        .filter(|secret| !secret.is_empty());
        let renders = Arc::new(RenderCounts::default());
        let agents_view = AgentsView::start(
            agents.clone(),
            scheduler.clone(),
            &hub,
            Arc::clone(&renders),
            shutdown.clone(),
        )
        .await?;
        let dashboard_view = DashboardView::start(
            pipelines.clone(),
            &hub,
            Arc::clone(&renders),
            shutdown.clone(),
        )
        .await?;
        config_sources::spawn_reload_on_change(configs.clone(), config_changes, shutdown.clone());
        spawn_config_reload_on_hangup(configs, shutdown.clone());
        // What one node at a time does; the liveness sweep is not among it: every node's
        // sweep judges by the contact stored in the shared database, and each of its steps is
        // a compare-and-set, so two sweeps agree.
        let duty = db.duty(config.database_heartbeat, shutdown.clone()).await;
        materials::timers::spawn_timers(materials.clone(), duty.clone(), shutdown.clone());
        spawn_material_polls(
            materials.clone(),
            config.material_poll_interval,
            duty.clone(),
            shutdown.clone(),
        );
        spawn_liveness(
            agents.clone(),
            scheduler.clone(),
            config.lost_contact_after,
            config.default_job_timeout,
            shutdown.clone(),
        );
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|e| format!("cannot listen on {}: {e}", config.listen))?;
        let audit = Audit::new(db.clone());
        let artifacts = Artifacts::new(
            db.clone(),
            job_runs.clone(),
            config.artifacts_dir.clone(),
            config.max_artifact_bytes,
        );
        if let Some(keep) = config.artifacts_keep {
            artifacts::purge::spawn_purge(
                artifacts.clone(),
                pipelines.clone(),
                keep,
                &hub,
                duty.clone(),
                shutdown.clone(),
            );
        }
        let state = AppState(Arc::new(AppServices {
            db,
            duty,
            audit,
            accounts,
            hosts: Arc::new(hosts),
            public_url: config.public_url.clone(),
            trusted_proxy: config.trusted_proxy,
            registrations: (config.registrations_per_second > 0).then(|| {
                let rate = config.registrations_per_second;
                Arc::new(RateLimit::new(f64::from(rate), rate.saturating_mul(5)))
            }),
            hub,
            agents,
            job_runs,
            scheduler,
            pipelines,
            materials,
            artifacts,
            webhook_secret: webhook_secret.map(Arc::new),
            agents_view,
            dashboard_view,
            runs_views: Arc::default(),
            history_views: Arc::default(),
            build_cause_views: Arc::default(),
            stage_views: Arc::default(),
            console_views: Arc::default(),
            topic_views: Arc::default(),
            renders,
            metrics: web::metrics::Metrics::new(),
            shutdown,
            stream_slots: StreamSlots::new(config.max_streams_per_address),
        }));
        let limits = Limits {
            max_connections: config.max_connections,
            header_read_timeout: config.header_read_timeout,
            shutdown_deadline: config.shutdown_deadline,
        };
        Ok(Application {
            listener,
            state,
            limits,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    pub fn state(&self) -> AppState {
        self.state.clone()
    }

    /// Cancel this to stop the server gracefully.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.state.shutdown.clone()
    }

    /// Serves until the shutdown token fires, then lets in-flight requests finish (event
    /// streams end at once) for at most `Config::shutdown_deadline`, drops the connections
    /// still open, and closes the database.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let Application {
            listener,
            state,
            limits,
        } = self;
        let shutdown = state.shutdown.clone();
        let db = state.db.clone();
        let router = build_app(state);
        web::serve::serve(listener, router, limits, shutdown).await;
        db.close().await;
        Ok(())
    }
}

/// Raises the soft limit on open files to the hard limit and says what it got: each
/// connection is a file, and at the limit accepts fail until some close.
fn log_file_limit(max_connections: usize) {
    match web::serve::raise_file_limit() {
        Ok(Some(limit)) => {
            tracing::info!("file limit: {limit}");
            if limit < max_connections as u64 {
                tracing::warn!(
                    "the file limit ({limit}) is below --max-connections ({max_connections}): \
                     past about {limit} connections, new ones wait until some close"
                );
            }
        }
        Ok(None) => tracing::info!("file limit: unlimited"),
        Err(error) => tracing::warn!(%error, "cannot read the file limit"),
    }
}

/// Reads the pipeline config again on every SIGHUP, as servers do.
fn spawn_config_reload_on_hangup(configs: ConfigSources, shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hangups) = signal(SignalKind::hangup()) else {
        tracing::warn!(
            "cannot listen for SIGHUP: reload the config with POST /api/admin/config/reload"
        );
        return;
    };
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                got = hangups.recv() => {
                    if got.is_none() {
                        return;
                    }
                    tracing::info!("SIGHUP: reading the pipeline config again");
                    if let Err(error) = configs.reload().await {
                        tracing::error!(%error, "config reload failed");
                    }
                }
            }
        }
    });
}

/// Polls the config repositories and then the git materials every `every` (zero: never),
/// the first time right after start; a round waits for the last to end, so a slow repository
/// never piles polls up. Every node polls the config repositories (into mirrors of its own,
/// writing nothing shared, so each has the pipelines they hold); only the node on duty polls
/// the materials, whose new revisions trigger pipelines.
fn spawn_material_polls(
    materials: Materials,
    every: Duration,
    duty: db::Duty,
    shutdown: CancellationToken,
) {
    if every.is_zero() {
        return;
    }
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => {
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        // Config repositories first: the pipelines they add poll this round.
                        polled = async {
                            materials.poll_config_repos().await;
                            if duty.is_mine() {
                                materials.poll_all().await
                            } else {
                                Ok(())
                            }
                        } => if let Err(error) = polled {
                            tracing::warn!(%error, "material polls failed");
                        },
                    }
                }
            }
        }
    });
}

/// Marks silent Enabled agents LostContact, without waiting for any request to notice, and
/// reschedules the runs they held; cancels the jobs whose console was silent for their
/// timeout (`default_job_timeout` for those without one).
fn spawn_liveness(
    agents: Agents,
    scheduler: Scheduler,
    after: Duration,
    default_job_timeout: Duration,
    shutdown: CancellationToken,
) {
    let every = (after / 4).clamp(Duration::from_millis(100), Duration::from_secs(1));
    let started = tokio::time::Instant::now();
    let started_at = crate::db::now_millis();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => {
                    // One cutoff for both steps: an agent whose run is taken away is one
                    // this tick marked LostContact, never one it judged a moment earlier.
                    let silent_since = crate::db::now_millis() - after.as_millis() as i64;
                    // Runs are taken away only after a sweep that stored every contact heard:
                    // without it, stored contact may trail by up to a lag (`agents::Contacts`).
                    let swept = agents.mark_lost_contact(silent_since).await;
                    if let Err(error) = &swept {
                        tracing::warn!(%error, "liveness check failed");
                    }
                    // After a restart, agents get a full period to be heard from before their
                    // runs are taken away (the server's own downtime is not their silence).
                    if swept.is_ok() && started.elapsed() >= after
                        && let Err(error) = scheduler.reschedule_abandoned(silent_since).await {
                            tracing::warn!(%error, "could not reschedule the runs of silent agents");
                        }
                    if let Err(error) =
                        scheduler.time_out_silent_runs(default_job_timeout, started_at).await
                    {
                        tracing::warn!(%error, "could not time out silent jobs");
                    }
                }
            }
        }
    });
}
