//! The `ferrocd agent` runtime (CONTRACT.md, "The agent protocol").
//!
//! - `identity`: the uuid and token kept in `--work-dir/agent.json` (restarts keep the agent's
//!   identity), a lock so two agents never share one work dir, and the facts registered.
//! - `client`: the protocol calls, re-registration after a 401, retries with back-off; a
//!   re-registration the server refuses (`409`) is asked again until an administrator lets
//!   the agent back, the agent keeping its identity meanwhile.
//! - `tls`: the `--server` URLs accepted (`http://`, `https://`) and the TLS of `https://`
//!   ones (system roots plus `--ca-cert`); a URL, CA file or certificate the agent cannot use
//!   ends it at start with the reason.
//! - `runner` + `process`: one job at a time; each task a process group in
//!   `WORK_DIR/pipelines/PIPELINE`, stdout and stderr merged into one ordered byte stream.
//! - `console`: the one uploader per build, batching and resyncing by byte offset.
//!
//! Two loops run side by side: the work loop (poll, run a job, poll again, backing off from
//! 200 ms to 5 s while idle) and the pinger (every 3 s, also while building; a `CANCEL` stops
//! the running job's processes). On shutdown the agent takes no more work, cancels a running
//! job (its processes are stopped and it is reported `Completed`/`Cancelled`), and gives up on
//! an unreachable server after [`GIVE_UP_AFTER`].

mod artifacts;
mod checkout;
mod client;
mod console;
mod identity;
mod process;
mod retry;
mod runner;
mod tls;
pub(crate) mod wire;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::config::AgentArgs;
use client::{Client, Endpoint, Registered};
use identity::{IdentityStore, MachineFacts};
use retry::Backoff;
use runner::Stops;
use wire::{BuildId, WorkOffer};

pub use console::{command_line, marker_line};
pub use identity::IDENTITY_FILE;

/// How often the agent pings.
pub const PING_EVERY: Duration = Duration::from_secs(3);
/// Idle polling for work backs off between these.
const POLL_MIN: Duration = Duration::from_millis(200);
const POLL_MAX: Duration = Duration::from_secs(5);
/// After shutdown, how long the agent keeps trying to report a cancelled job.
pub const GIVE_UP_AFTER: Duration = Duration::from_secs(10);

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The job being run, as the pinger sees it.
struct Current {
    build: BuildId,
    cancel: CancellationToken,
}

type Shared = Arc<Mutex<Option<Current>>>;

/// Runs the agent until `shutdown` fires (then `Ok`) or it cannot go on (then the error).
pub async fn run(args: AgentArgs, shutdown: CancellationToken) -> Result<(), BoxError> {
    let endpoint = Endpoint::new(&args.server, args.ca_cert.as_deref())?;
    let work_dir = absolute(&args.work_dir)?;
    let store = IdentityStore::open(&work_dir)?;
    let facts = MachineFacts::gather(
        &args.server,
        &work_dir,
        args.hostname.clone(),
        &args.resources,
        &args.environments,
    )
    .await;
    let client = Arc::new(Client::new(
        endpoint,
        args.registration_key.clone(),
        facts,
        store,
    ));
    match client.register_at_start(&shutdown).await? {
        Registered::Ok {
            agent_config_state, ..
        } if agent_config_state == "Pending" => tracing::info!(
            "the agent is Pending: an administrator must enable it before it gets work"
        ),
        Registered::Ok { .. } => {}
        Registered::Stopped => return Ok(()),
    }

    let give_up = CancellationToken::new();
    {
        let shutdown = shutdown.clone();
        let give_up = give_up.clone();
        tokio::spawn(async move {
            shutdown.cancelled().await;
            tokio::time::sleep(GIVE_UP_AFTER).await;
            give_up.cancel();
        });
    }
    let current: Shared = Arc::new(Mutex::new(None));
    let stop_pinging = CancellationToken::new();
    let pinger = tokio::spawn(ping_loop(
        Arc::clone(&client),
        Arc::clone(&current),
        stop_pinging.clone(),
    ));
    let outcome = work_loop(&client, &work_dir, &current, &shutdown, &give_up).await;
    stop_pinging.cancel();
    let _ = pinger.await;
    tracing::info!("agent stopped");
    outcome
}

fn absolute(path: &std::path::Path) -> Result<PathBuf, BoxError> {
    if path.is_absolute() {
        Ok(path.to_path_buf())
    } else {
        Ok(std::env::current_dir()?.join(path))
    }
}

async fn work_loop(
    client: &Arc<Client>,
    work_dir: &std::path::Path,
    current: &Shared,
    shutdown: &CancellationToken,
    give_up: &CancellationToken,
) -> Result<(), BoxError> {
    let mut backoff = Backoff::new(POLL_MIN, POLL_MAX);
    let mut failing = false;
    loop {
        if shutdown.is_cancelled() {
            return Ok(());
        }
        if client.fatal().is_cancelled() {
            return Err(client
                .fatal_error()
                .unwrap_or_else(|| "the agent cannot go on".into())
                .into());
        }
        let offer = tokio::select! {
            offer = client.work() => offer,
            _ = shutdown.cancelled() => return Ok(()),
            _ = client.fatal().cancelled() => continue,
        };
        match offer {
            Ok(WorkOffer::Job(work)) => {
                failing = false;
                backoff.reset();
                let cancel = CancellationToken::new();
                *current.lock().expect("current lock") = Some(Current {
                    build: work.build_id.clone(),
                    cancel: cancel.clone(),
                });
                let stops = Stops {
                    cancel,
                    shutdown: shutdown.clone(),
                    give_up: give_up.clone(),
                };
                runner::run_job(Arc::clone(client), *work, work_dir, &stops).await;
                *current.lock().expect("current lock") = None;
                continue;
            }
            Ok(WorkOffer::Malformed { build_id, error }) => {
                backoff.reset();
                let stops = Stops {
                    cancel: CancellationToken::new(),
                    shutdown: shutdown.clone(),
                    give_up: give_up.clone(),
                };
                runner::fail_unreadable_job(Arc::clone(client), build_id, &error, &stops).await;
                continue;
            }
            Ok(WorkOffer::None) => {
                if failing {
                    tracing::info!("the server answers work requests again");
                    failing = false;
                }
            }
            Err(error) => {
                if !failing {
                    tracing::warn!(%error, "asking for work failed; will keep asking");
                    failing = true;
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff.next_delay()) => {}
            _ = shutdown.cancelled() => return Ok(()),
        }
    }
}

/// Pings every [`PING_EVERY`] until `stop` fires; passes a `CANCEL` to the running job.
async fn ping_loop(client: Arc<Client>, current: Shared, stop: CancellationToken) {
    let mut tick = tokio::time::interval(PING_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    let mut config_state: Option<String> = None;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => return,
        }
        let building = current
            .lock()
            .expect("current lock")
            .as_ref()
            .map(|c| c.build.clone());
        let free_space = identity::free_space(&client.facts().sandbox_path);
        let reply = tokio::select! {
            reply = client.ping(building.as_ref(), free_space) => reply,
            _ = stop.cancelled() => return,
        };
        match reply {
            Ok(reply) => {
                if failing {
                    tracing::info!("pings reach the server again");
                    failing = false;
                }
                if reply.agent_config_state.is_some() && reply.agent_config_state != config_state {
                    if let Some(state) = &reply.agent_config_state {
                        tracing::info!(agent_config_state = %state, "the server has this agent as {state}");
                    }
                    config_state = reply.agent_config_state.clone();
                }
                if reply.instruction.as_deref() == Some("CANCEL") {
                    let guard = current.lock().expect("current lock");
                    if let Some(job) = guard.as_ref()
                        && Some(&job.build) == building.as_ref()
                        && !job.cancel.is_cancelled()
                    {
                        tracing::info!(build = %job.build, "the server cancelled the job");
                        job.cancel.cancel();
                    }
                }
            }
            Err(error) => {
                if !failing {
                    tracing::warn!(%error, "ping failed; will keep pinging");
                    failing = true;
                }
            }
        }
    }
}
