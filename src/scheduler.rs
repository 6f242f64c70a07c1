//! The scheduler context: the queue of Scheduled runs, handing work to agents (atomically:
//! one writer connection serialises every assignment), cancelling, and rescheduling the runs
//! of agents that lost contact.

use std::time::Duration;

use uuid::Uuid;

use crate::agents::{self, Contacts};
use crate::audit;
use crate::config_sources::ConfigSources;
use crate::db::{Db, WriteTx, now_millis};
use crate::domain::agent::{Agent, AgentState, ConfigState};
use crate::domain::job_run::{Cancel, JobResult, JobRun, JobState, NewJob, Report, check_report};
use crate::error::Result;
use crate::events::{DomainEvent, Topic};
use crate::job_runs::{self, store::NewRun};
use crate::pipelines;

#[derive(Clone)]
pub struct Scheduler {
    db: Db,
    /// Where a passed stage looks for the pipelines it triggers.
    configs: ConfigSources,
    /// When each agent's contact was last written (a work request is contact).
    contacts: Contacts,
}

impl Scheduler {
    pub fn new(db: Db, configs: ConfigSources, contacts: Contacts) -> Self {
        Scheduler {
            db,
            configs,
            contacts,
        }
    }

    /// Creates a Scheduled run; an ad-hoc job gets the next counter of its pipeline name.
    pub async fn schedule(&self, job: NewJob, actor: &str) -> Result<JobRun> {
        let NewJob {
            pipeline_name,
            stage_name,
            job_name,
            tasks,
            resources,
            environment,
            environment_variables,
            clean_workspace,
            pipeline_label,
            timeout_seconds,
        } = job.checked()?;
        if let Some(configured) = self.configs.snapshot().pipeline(&pipeline_name) {
            // Its runs would mix with the pipeline's instances under the same counters.
            return Err(crate::error::Error::Conflict(format!(
                "{} is a configured pipeline; trigger it",
                configured.name
            )));
        }
        let mut tx = self.db.begin().await?;
        let counter = job_runs::store::next_counter(tx.conn(), &pipeline_name).await?;
        let build_id = job_runs::insert_run(
            &mut tx,
            NewRun {
                pipeline_name: &pipeline_name,
                pipeline_counter: counter,
                stage_name: &stage_name,
                stage_counter: 1,
                job_name: &job_name,
                tasks: &tasks,
                resources: &resources,
                environment: environment.as_deref(),
                environment_variables: &environment_variables,
                rescheduled_from: None,
                scheduled_by: Some(actor),
                clean_workspace,
                pipeline_label: pipeline_label.as_deref(),
                timeout_seconds,
                pinned_agent: None,
            },
        )
        .await?;
        let run = job_runs::fetch_run_or_404(tx.conn(), build_id).await?;
        audit::record(&mut tx, actor, "schedule", &run_target(&run)).await?;
        job_runs::publish_run(&mut tx, &run);
        publish_pending(&mut tx).await?;
        tx.commit().await?;
        Ok(run)
    }

    /// Hands the oldest matching Scheduled run to `agent` (the run to send as `WORK`), or
    /// nothing. A work request is contact. An agent asking again for a run it was given but
    /// has not started gets the same run (its first answer may have been lost); a run it had
    /// started is given up on (the agent restarted) and rescheduled.
    /// `known` is the agent as its authentication read it.
    pub async fn try_assign_work(&self, known: &Agent) -> Result<Option<JobRun>> {
        let agent_uuid = known.uuid;
        let now = now_millis();
        let contact_written = self.contacts.heard(agent_uuid, now);
        if contact_written && self.nothing_for(known).await? {
            return Ok(None);
        }
        let mut tx = self.db.begin().await?;
        let (before, mut agent) =
            agents::record_work_request(&mut tx, agent_uuid, now, !contact_written).await?;
        let mut queue_changed = false;
        let mut work = None;
        if agent.agent_config_state == ConfigState::Enabled {
            for run in job_runs::store::active_runs_of(tx.conn(), agent_uuid).await? {
                if run.state == JobState::Assigned && !run.cancel_requested && work.is_none() {
                    work = Some(run);
                } else {
                    give_up(&mut tx, &run, &self.configs).await?;
                    queue_changed = true;
                }
            }
            if work.is_none() {
                if queue_changed {
                    agents::set_state_only(&mut tx, agent_uuid, AgentState::Idle).await?;
                    agent = agents::fetch(&mut tx, agent_uuid).await?.unwrap_or(agent);
                }
                if agent.can_take_work()
                    && let Some(assigned) = claim_oldest_matching(&mut tx, &agent).await?
                {
                    // `after` below reads the agent as this leaves it.
                    agents::set_state_only(&mut tx, agent_uuid, AgentState::Building).await?;
                    job_runs::publish_assigned(&mut tx, &assigned);
                    work = Some(assigned);
                    queue_changed = true;
                }
            }
        }
        // Only an assignment or a run given up changed the agent since it was read.
        let after = if queue_changed || work.is_some() {
            agents::fetch(&mut tx, agent_uuid).await?.unwrap_or(agent)
        } else {
            agent
        };
        agents::publish_change(&mut tx, Some(&before), &after);
        if queue_changed {
            publish_pending(&mut tx).await?;
        }
        tx.commit().await?;
        if !contact_written {
            self.contacts.wrote(agent_uuid, now);
        }
        Ok(work)
    }

    /// Whether a work request from this agent would change nothing and find nothing, as a
    /// read: an Enabled agent that holds no run (no `build_details`: no run not Completed)
    /// and whose state a request leaves as it is, with nothing queued. A run scheduled a
    /// moment later is the next request's.
    async fn nothing_for(&self, agent: &Agent) -> Result<bool> {
        Ok(agent.agent_config_state == ConfigState::Enabled
            && agent.after_work_request().is_none()
            && agent.build_details.is_none()
            && self.pending_count().await? == 0)
    }

    /// An agent's report of its run's progress: forward only; repeating the current state is
    /// a harmless retry. `Completed` needs a result, and ends the run.
    pub async fn report_status(
        &self,
        build_id: i64,
        agent: Uuid,
        state: JobState,
        result: Option<JobResult>,
    ) -> Result<JobRun> {
        check_report(state, result)?;
        let mut tx = self.db.begin().await?;
        let run = job_runs::fetch_run_or_404(tx.conn(), build_id).await?;
        let (state, result) = match run.report(agent, state, result)? {
            Report::Retry => return Ok(run),
            Report::Move { state, result } => (state, result),
        };
        let contact = agents::touch(&mut tx, &self.contacts, agent).await?;
        let (updated, agent_change) = if state == JobState::Completed {
            let ended = end_run(&mut tx, &run, result, &self.configs).await?;
            let change = agents::set_agent_state(&mut tx, agent, AgentState::Idle).await?;
            (ended, change)
        } else {
            job_runs::move_run(&mut tx, &run, state, result, None).await?;
            let change = if run.state <= JobState::Assigned {
                agents::set_agent_state(&mut tx, agent, AgentState::Building).await?
            } else {
                None
            };
            let updated = job_runs::fetch_run_or_404(tx.conn(), build_id).await?;
            job_runs::publish_run(&mut tx, &updated);
            (updated, change)
        };
        if let Some((before, after)) = agent_change {
            agents::publish_change(&mut tx, Some(&before), &after);
        }
        tx.commit().await?;
        if let Some(at) = contact {
            self.contacts.wrote(agent, at);
        }
        Ok(updated)
    }

    /// The runs of an agent that lost contact end Completed/Cancelled and are scheduled again,
    /// as GoCD does, so nothing waits forever.
    pub async fn reschedule_runs_of(&self, agent_uuid: Uuid) -> Result<()> {
        let mut tx = self.db.begin().await?;
        let before = agents::fetch(&mut tx, agent_uuid).await?;
        let runs = job_runs::store::active_runs_of(tx.conn(), agent_uuid).await?;
        if runs.is_empty() {
            return Ok(());
        }
        for run in &runs {
            give_up(&mut tx, run, &self.configs).await?;
        }
        let after = agents::fetch(&mut tx, agent_uuid).await?;
        if let (Some(before), Some(after)) = (before, after) {
            agents::publish_change(&mut tx, Some(&before), &after);
        }
        publish_pending(&mut tx).await?;
        tx.commit().await
    }

    /// Runs held by agents not heard from since `silent_since` (milliseconds since the epoch:
    /// LostContact, or Missing since a restart, or deleted) are rescheduled. Idempotent: it
    /// runs on every liveness tick, so a failure is retried and nothing waits forever.
    pub async fn reschedule_abandoned(&self, silent_since: i64) -> Result<()> {
        let holders = {
            let mut conn = self.db.reader().await?;
            job_runs::store::silent_holders(conn.conn(), silent_since).await?
        };
        for agent in holders {
            self.reschedule_runs_of(agent).await?;
        }
        Ok(())
    }

    /// A Scheduled run ends Completed/Cancelled at once; a running one when its agent has
    /// stopped it (the agent hears `CANCEL` on its next ping). A finished run is left as it is.
    pub async fn cancel(&self, build_id: i64, actor: &str) -> Result<JobRun> {
        let mut tx = self.db.begin().await?;
        let run = job_runs::fetch_run_or_404(tx.conn(), build_id).await?;
        let updated = cancel_in(&mut tx, &run, actor, &self.configs).await?;
        tx.commit().await?;
        Ok(updated)
    }

    /// Cancels, as the server ([`TIMEOUT_ACTOR`]), every Building run whose console has not
    /// grown for its timeout (its own, else `default`; zero never), silence counted from
    /// `not_before` at the earliest (the server's own downtime is not the job's silence). Its
    /// agent hears `CANCEL`; its console gets a line saying why when it ends. Runs on every
    /// liveness tick.
    pub async fn time_out_silent_runs(&self, default: Duration, not_before: i64) -> Result<()> {
        let default = i64::try_from(default.as_secs()).unwrap_or(i64::MAX);
        let any = {
            let mut conn = self.db.reader().await?;
            !job_runs::store::silent_runs(conn.conn(), default, not_before, now_millis())
                .await?
                .is_empty()
        };
        if !any {
            return Ok(());
        }
        // Read again inside the write: a console that grew meanwhile is not silent.
        let mut tx = self.db.begin().await?;
        let silent =
            job_runs::store::silent_runs(tx.conn(), default, not_before, now_millis()).await?;
        for (build_id, seconds) in silent {
            let run = job_runs::fetch_run_or_404(tx.conn(), build_id).await?;
            job_runs::set_cancel_reason(&mut tx, build_id, &timeout_reason(seconds)).await?;
            cancel_in(&mut tx, &run, TIMEOUT_ACTOR, &self.configs).await?;
            tracing::info!(build_id, seconds, "job timed out: its console was silent");
        }
        tx.commit().await
    }

    /// What a ping answers: `CANCEL` while the agent holds a run whose cancel was asked
    /// for, or when the build it says it runs is no longer its to run (cancelled before it
    /// started, or taken away after it lost contact). `agent` is as the ping left it: its
    /// `build_details` is its newest run not Completed, so without one it holds no run and
    /// nothing more need be read.
    pub async fn instruction_for(
        &self,
        agent: &Agent,
        building: Option<i64>,
    ) -> Result<&'static str> {
        if agent.build_details.is_none() {
            return Ok(if building.is_some() { "CANCEL" } else { "NONE" });
        }
        let mut conn = self.db.reader().await?;
        let runs = job_runs::store::active_runs_of(conn.conn(), agent.uuid).await?;
        if runs.iter().any(|r| r.cancel_requested) {
            return Ok("CANCEL");
        }
        if let Some(build_id) = building
            && !runs.iter().any(|r| r.build_id == build_id)
        {
            return Ok("CANCEL");
        }
        Ok("NONE")
    }

    pub async fn pending_count(&self) -> Result<u64> {
        let mut conn = self.db.reader().await?;
        job_runs::store::pending_count(conn.conn()).await
    }

    /// The Scheduled runs, oldest first.
    pub async fn queue(&self) -> Result<Vec<JobRun>> {
        let mut conn = self.db.reader().await?;
        job_runs::store::queue(conn.conn()).await
    }
}

/// Who a run timed out by the server is recorded as cancelled by.
pub const TIMEOUT_ACTOR: &str = "timeout";

/// The console line of a run cancelled after `seconds` of console silence.
fn timeout_reason(seconds: i64) -> String {
    let amount = match seconds {
        60 => "1 minute".to_string(),
        s if s % 60 == 0 => format!("{} minutes", s / 60),
        1 => "1 second".to_string(),
        s => format!("{s} seconds"),
    };
    format!("job timed out: no console output for {amount}")
}

/// Cancels `run` in `tx` (see [`Scheduler::cancel`]); answers the run as the write leaves it.
pub(crate) async fn cancel_in(
    tx: &mut WriteTx,
    run: &JobRun,
    actor: &str,
    configs: &ConfigSources,
) -> Result<JobRun> {
    let build_id = run.build_id;
    if run.cancel() != Cancel::Nothing {
        job_runs::store::set_cancelled_by(tx.conn(), build_id, actor).await?;
        audit::record(tx, actor, "cancel", &run_target(run)).await?;
    }
    Ok(match run.cancel() {
        Cancel::Nothing => run.clone(),
        Cancel::EndNow => {
            let ended = end_run(tx, run, JobResult::Cancelled, configs).await?;
            publish_pending(tx).await?;
            ended
        }
        Cancel::AskTheAgent => {
            job_runs::store::request_cancel(tx.conn(), build_id).await?;
            let updated = job_runs::fetch_run_or_404(tx.conn(), build_id).await?;
            job_runs::publish_run(tx, &updated);
            updated
        }
    })
}

/// The queue's length as `tx` leaves it, on `scheduler:updates`.
pub(crate) async fn publish_pending(tx: &mut WriteTx) -> Result<()> {
    let count = job_runs::store::pending_count(tx.conn()).await?;
    tx.publish(Topic::SchedulerUpdates, DomainEvent::PendingCount { count });
    Ok(())
}

/// Every run ends here, in the transaction of whatever ended it: its agent's report, a cancel
/// before it started, or the scheduler giving up on it. It moves to Completed with `result`
/// and its watchers hear of it; then its pipeline moves on (`pipelines::after_run`: the next
/// stage, the end of the instance), once, in the same transaction, whatever ended the run.
async fn end_run(
    tx: &mut WriteTx,
    run: &JobRun,
    result: JobResult,
    configs: &ConfigSources,
) -> Result<JobRun> {
    let ended = complete(tx, run, result).await?;
    pipelines::after_run(tx, &ended, configs).await?;
    Ok(ended)
}

/// Moves `run` to Completed with `result` and tells its watchers.
async fn complete(tx: &mut WriteTx, run: &JobRun, result: JobResult) -> Result<JobRun> {
    job_runs::move_run(tx, run, JobState::Completed, result, None).await?;
    let ended = job_runs::fetch_run_or_404(tx.conn(), run.build_id).await?;
    job_runs::publish_run(tx, &ended);
    Ok(ended)
}

/// Ends a run its agent will not finish (Completed/Cancelled) and, unless a cancel was asked
/// for, schedules the same job again; its stage sees the new run, not the end of the old.
async fn give_up(tx: &mut WriteTx, run: &JobRun, configs: &ConfigSources) -> Result<()> {
    if run.cancel_requested {
        end_run(tx, run, JobResult::Cancelled, configs).await?;
        return Ok(());
    }
    let ended = complete(tx, run, JobResult::Cancelled).await?;
    {
        let build_id = job_runs::insert_run(
            tx,
            NewRun {
                pipeline_name: &run.pipeline_name,
                pipeline_counter: run.pipeline_counter,
                stage_name: &run.stage_name,
                stage_counter: run.stage_counter,
                job_name: &run.job_name,
                tasks: &run.tasks,
                resources: &run.resources,
                environment: run.environment.as_deref(),
                environment_variables: &run.environment_variables,
                rescheduled_from: Some(run.build_id),
                scheduled_by: run.scheduled_by.as_deref(),
                clean_workspace: run.clean_workspace,
                pipeline_label: run.pipeline_label.as_deref(),
                timeout_seconds: run.timeout_seconds,
                // A run-on-all copy waits for its own agent to come back.
                pinned_agent: run.pinned_agent,
            },
        )
        .await?;
        let again = job_runs::fetch_run_or_404(tx.conn(), build_id).await?;
        job_runs::publish_run(tx, &again);
    }
    pipelines::after_run(tx, &ended, configs).await
}

/// Claims for `agent` the oldest Scheduled run it matches, reading the queue inside the
/// write, so no other poll can take what it read meanwhile. (Read before the write, the
/// candidates of agents polling at once were the same few runs: 5 of 6 polls lost all of
/// theirs to others and answered "no work" while thousands of jobs waited.) A page at a
/// time, oldest first: a poll reads what it needs of the queue, not all of it.
async fn claim_oldest_matching(tx: &mut WriteTx, agent: &Agent) -> Result<Option<JobRun>> {
    let offer = agent.offer();
    let mut after = 0;
    loop {
        let page = job_runs::store::queued_requirements(tx.conn(), after, QUEUE_PAGE).await?;
        let full = page.len() as i64 == QUEUE_PAGE;
        after = page.last().map_or(after, |(build_id, _)| *build_id);
        for (build_id, _) in page.iter().filter(|(_, needs)| offer.matches(needs)) {
            // Within the write nothing else claims; the compare-and-set still guards it.
            if job_runs::assign_run(tx, *build_id, agent.uuid).await? {
                return Ok(Some(
                    job_runs::fetch_run_or_404(tx.conn(), *build_id).await?,
                ));
            }
        }
        if !full {
            return Ok(None);
        }
    }
}

/// A run as the audit trail names it.
fn run_target(run: &JobRun) -> String {
    format!(
        "build {} ({}/{}/{}/{}/{})",
        run.build_id,
        run.pipeline_name,
        run.pipeline_counter,
        run.stage_name,
        run.stage_counter,
        run.job_name
    )
}

/// How many queued runs a poll reads at a time while it looks for candidates.
const QUEUE_PAGE: i64 = 256;
