//! The pipelines context: instances of configured pipelines, their stages, and what a
//! pipeline is apart from them (paused, locked). A trigger snapshots the pipeline's config as
//! the instance's plan and schedules its first stage's jobs through the job runs context;
//! each run's end (`after_run`, called by the scheduler inside the write that ends it) moves
//! its stage, and the instance, on: the next stage, a wait for approval, the end, and the
//! downstream pipelines a passed stage triggers. Every change publishes `pipeline_updated`.

mod postgres;
mod sqlite;
pub(crate) mod store;

use std::collections::{BTreeMap, HashMap, HashSet};

use self::store::{NewInstance, PipelineState, StageKey};
use crate::audit;
use crate::config_sources::{ConfigSources, Snapshot};
use crate::db::{Conn, Db, WriteTx, now_millis};
use crate::domain::agent::ConfigState;
use crate::domain::artifact::FetchOrigin;
use crate::domain::job_run::{FetchTask, JobRun, Requirements, Task};
use crate::domain::material::{Checkout, Fingerprint, UpstreamRevision, split_credentials};
use crate::domain::pipeline::{
    AfterStage, InstanceFacts, PipelineInstance, StageRun, StageStatus, StageSummary, after_stage,
    is_running, may_run_stage, plan_jobs, render_label, stage_status, summarize_stages,
};
use crate::domain::pipeline_config::{
    JobConfig, LockBehavior, MaterialSource, PipelineConfig, StageConfig,
};
use crate::domain::user::User;
use crate::error::{Error, Result};
use crate::events::{DomainEvent, Topic};
use crate::job_runs::{self, store::NewRun};
use uuid::Uuid;

/// Who triggered an automatic instance, as GoCD says it (`GO_TRIGGER_USER`).
pub const CHANGES: &str = "changes";

/// An instance with its stages as they stand.
#[derive(Debug, Clone)]
pub struct InstanceView {
    pub instance: PipelineInstance,
    pub stages: Vec<StageSummary>,
}

impl InstanceView {
    pub fn is_running(&self) -> bool {
        is_running(&self.stages)
    }
}

/// The results `/metrics` counts instances by.
const INSTANCE_RESULTS: [&str; 5] = ["Building", "Passed", "Failed", "Cancelled", "Waiting"];

/// A configured pipeline as the dashboard shows it.
#[derive(Debug, Clone)]
pub struct PipelineView {
    pub config: PipelineConfig,
    pub state: PipelineState,
    pub latest: Option<InstanceView>,
    /// Its git materials whose last poll failed: material name and error.
    pub material_errors: Vec<(String, String)>,
    /// When its timer fires next (Unix milliseconds), if it has one with a firing left.
    pub next_timer_firing: Option<i64>,
}

/// One stage run with its jobs' latest runs.
#[derive(Debug, Clone)]
pub struct StageView {
    pub instance: PipelineInstance,
    /// The stage's newest run's counter (this run's, or a later one's).
    pub latest_counter: i64,
    /// Another stage of the instance is running (nothing else may start meanwhile).
    pub instance_running: bool,
    pub run: StageRun,
    pub summary: StageSummary,
    pub jobs: Vec<JobRun>,
}

#[derive(Clone)]
pub struct Pipelines {
    db: Db,
    configs: ConfigSources,
}

impl Pipelines {
    pub fn new(db: Db, configs: ConfigSources) -> Pipelines {
        Pipelines { db, configs }
    }

    pub fn configs(&self) -> &ConfigSources {
        &self.configs
    }

    /// Creates instance N+1 of `name` and schedules its first stage; answers N+1. A paused
    /// or locked pipeline refuses (409).
    pub async fn trigger(
        &self,
        name: &str,
        actor: &str,
        variables: BTreeMap<String, String>,
    ) -> Result<i64> {
        self.trigger_at(name, actor, variables, &BTreeMap::new())
            .await
    }

    /// `trigger`, with some git materials at revisions picked by the user (fingerprint →
    /// revision, GoCD's "trigger with options"); the others at their newest.
    pub async fn trigger_at(
        &self,
        name: &str,
        actor: &str,
        variables: BTreeMap<String, String>,
        picked: &BTreeMap<String, String>,
    ) -> Result<i64> {
        let snapshot = self.configs.snapshot();
        let config = configured(&snapshot, name)?;
        if let Some(bad) = variables.keys().find(|k| !plain_variable_name(k)) {
            return Err(Error::Unprocessable(format!(
                "environment_variables: {bad:?} is not a variable name"
            )));
        }
        let mut tx = self.db.begin().await?;
        let counter =
            trigger_in(&mut tx, &snapshot, config, actor, variables, None, picked).await?;
        audit::record(
            &mut tx,
            actor,
            "trigger",
            &format!("pipeline {}/{counter}", config.name),
        )
        .await?;
        tx.commit().await?;
        Ok(counter)
    }

    /// Starts `stage` of instance `counter` by hand: approves a manual stage whose turn came,
    /// or runs a finished stage again (the next stage counter). Answers the stage counter.
    pub async fn run_stage(
        &self,
        name: &str,
        counter: i64,
        stage: &str,
        actor: &User,
    ) -> Result<i64> {
        let mut tx = self.db.begin().await?;
        let view = instance_view(tx.conn(), name, counter).await?;
        let plan = &view.instance.plan;
        let position = stage_position(plan, counter, stage)?;
        let config = &plan.stages[position];
        may_approve(config, actor)?;
        let summary = &view.stages[position];
        let previous = position.checked_sub(1).map(|i| view.stages[i].status);
        let current = summary.counter.map(|_| summary.status);
        may_run_stage(config, previous, current).map_err(Error::Conflict)?;
        if view.is_running() && current.is_none() {
            // Approving ahead of a stage still running would run two stages at once.
            return Err(Error::Conflict(format!(
                "pipeline {}/{counter} is still running",
                plan.name
            )));
        }
        let stage_counter = summary.counter.unwrap_or(0) + 1;
        let stage_name = config.name.clone();
        start_stage(
            &mut tx,
            &view.instance,
            &stage_name,
            stage_counter,
            &actor.name,
        )
        .await?;
        audit::record(
            &mut tx,
            &actor.name,
            "run stage",
            &format!("stage {}/{counter}/{stage_name}/{stage_counter}", plan.name),
        )
        .await?;
        publish_instance(&mut tx, &view.instance.pipeline_name, counter).await?;
        tx.commit().await?;
        Ok(stage_counter)
    }

    /// Runs again some jobs of the latest run of a finished stage, GoCD's "rerun failed jobs"
    /// and "rerun selected jobs": the stage's next run (counter + 1) schedules those jobs
    /// and keeps a copy of every other job's run with its result. Answers the stage counter.
    pub async fn rerun_jobs(
        &self,
        name: &str,
        counter: i64,
        stage: &str,
        stage_counter: i64,
        which: JobSelection,
        actor: &User,
    ) -> Result<i64> {
        let mut tx = self.db.begin().await?;
        let view = instance_view(tx.conn(), name, counter).await?;
        let plan = &view.instance.plan;
        let position = stage_position(plan, counter, stage)?;
        let config = &plan.stages[position];
        may_approve(config, actor)?;
        let summary = &view.stages[position];
        let target = format!("{}/{counter}/{}/{stage_counter}", plan.name, config.name);
        match summary.counter {
            Some(latest) if latest == stage_counter => {}
            Some(latest) if latest > stage_counter => {
                return Err(Error::Conflict(format!(
                    "stage {target} is not the stage's latest run ({latest}): re-run jobs of                      that one"
                )));
            }
            _ => return Err(Error::NotFound(format!("stage {target} has not run"))),
        }
        if view.is_running() {
            return Err(Error::Conflict(format!(
                "pipeline {}/{counter} is still running",
                plan.name
            )));
        }
        let jobs = job_runs::store::latest_of_stage(
            tx.conn(),
            &view.instance.pipeline_name,
            counter,
            &config.name,
            stage_counter,
        )
        .await?;
        let selected: Vec<bool> = match &which {
            JobSelection::Failed => jobs
                .iter()
                .map(|j| j.result == crate::domain::job_run::JobResult::Failed)
                .collect(),
            JobSelection::Named(names) => {
                if names.is_empty() {
                    return Err(Error::Unprocessable(
                        "jobs: name at least one job to re-run".into(),
                    ));
                }
                let unknown: Vec<&str> = names
                    .iter()
                    .filter(|n| !jobs.iter().any(|j| j.job_name.eq_ignore_ascii_case(n)))
                    .map(String::as_str)
                    .collect();
                if !unknown.is_empty() {
                    return Err(Error::NotFound(format!(
                        "stage {target} has no job {}",
                        unknown.join(", ")
                    )));
                }
                jobs.iter()
                    .map(|j| names.iter().any(|n| n.eq_ignore_ascii_case(&j.job_name)))
                    .collect()
            }
        };
        if !selected.contains(&true) {
            return Err(Error::Conflict(format!(
                "stage {target} has no failed jobs to re-run"
            )));
        }
        let next = stage_counter + 1;
        let key = StageKey {
            pipeline: &view.instance.pipeline_name,
            pipeline_counter: counter,
            stage: &config.name,
            stage_counter: next,
        };
        store::insert_stage_run(tx.conn(), &key, &actor.name, now_millis()).await?;
        for (job, again) in jobs.iter().zip(selected) {
            if !again {
                job_runs::store::insert_copy(tx.conn(), job.build_id, next).await?;
                continue;
            }
            let build_id = job_runs::insert_run(
                &mut tx,
                NewRun {
                    pipeline_name: &job.pipeline_name,
                    pipeline_counter: counter,
                    stage_name: &job.stage_name,
                    stage_counter: next,
                    job_name: &job.job_name,
                    tasks: &job.tasks,
                    resources: &job.resources,
                    environment: job.environment.as_deref(),
                    environment_variables: &job.environment_variables,
                    rescheduled_from: None,
                    scheduled_by: Some(&actor.name),
                    clean_workspace: job.clean_workspace,
                    pipeline_label: job.pipeline_label.as_deref(),
                    timeout_seconds: job.timeout_seconds,
                    pinned_agent: job.pinned_agent,
                },
            )
            .await?;
            let run = job_runs::fetch_run_or_404(tx.conn(), build_id).await?;
            job_runs::publish_run(&mut tx, &run);
        }
        crate::scheduler::publish_pending(&mut tx).await?;
        audit::record(
            &mut tx,
            &actor.name,
            "rerun jobs",
            &format!("stage {}/{counter}/{}/{next}", plan.name, config.name),
        )
        .await?;
        publish_instance(&mut tx, &view.instance.pipeline_name, counter).await?;
        tx.commit().await?;
        Ok(next)
    }

    /// Cancels every job of a stage run that has not finished; the stage ends Cancelled once
    /// the jobs its agents run have stopped.
    pub async fn cancel_stage(
        &self,
        name: &str,
        counter: i64,
        stage: &str,
        stage_counter: i64,
        actor: &str,
    ) -> Result<()> {
        let mut tx = self.db.begin().await?;
        let instance = instance_or_404(tx.conn(), name, counter).await?;
        let Some(config) = instance.plan.stage(stage) else {
            return Err(Error::NotFound(format!(
                "pipeline {}/{counter} has no stage {stage}",
                instance.plan.name
            )));
        };
        let stage_name = config.name.clone();
        let key = StageKey {
            pipeline: &instance.pipeline_name,
            pipeline_counter: counter,
            stage: &stage_name,
            stage_counter,
        };
        if store::stage_run(tx.conn(), &key).await?.is_none() {
            return Err(Error::NotFound(format!(
                "stage {}/{counter}/{stage_name}/{stage_counter} has not run",
                instance.plan.name
            )));
        }
        store::set_stage_cancelled_by(tx.conn(), &key, actor).await?;
        let runs = job_runs::store::latest_of_stage(
            tx.conn(),
            &instance.pipeline_name,
            counter,
            &stage_name,
            stage_counter,
        )
        .await?;
        for run in runs.iter().filter(|r| !r.is_completed()) {
            crate::scheduler::cancel_in(&mut tx, run, actor, &self.configs).await?;
        }
        audit::record(
            &mut tx,
            actor,
            "cancel stage",
            &format!(
                "stage {}/{counter}/{stage_name}/{stage_counter}",
                instance.plan.name
            ),
        )
        .await?;
        publish_instance(&mut tx, &instance.pipeline_name, counter).await?;
        tx.commit().await
    }

    pub async fn pause(&self, name: &str, cause: &str, actor: &str) -> Result<()> {
        self.set_paused(name, Some(cause), actor).await
    }

    pub async fn unpause(&self, name: &str, actor: &str) -> Result<()> {
        self.set_paused(name, None, actor).await
    }

    /// Pauses (with `cause`) or unpauses, recorded against `actor`.
    async fn set_paused(&self, name: &str, cause: Option<&str>, actor: &str) -> Result<()> {
        let snapshot = self.configs.snapshot();
        let config = configured(&snapshot, name)?;
        let mut tx = self.db.begin().await?;
        let pause = cause.map(|cause| (cause, actor, now_millis()));
        store::set_paused(tx.conn(), &config.name, pause).await?;
        let action = if cause.is_some() { "pause" } else { "unpause" };
        audit::record(&mut tx, actor, action, &format!("pipeline {}", config.name)).await?;
        publish_latest(&mut tx, &config.name).await?;
        tx.commit().await
    }

    /// Releases a pipeline's lock (GoCD's unlock): only once the locking instance stopped.
    pub async fn unlock(&self, name: &str, actor: &str) -> Result<()> {
        let snapshot = self.configs.snapshot();
        let config = configured(&snapshot, name)?;
        let mut tx = self.db.begin().await?;
        let state = store::state(tx.conn(), &config.name).await?;
        let Some(locked_by) = state.locked_by else {
            return Err(Error::Conflict(format!(
                "pipeline {} is not locked",
                config.name
            )));
        };
        if let Ok(view) = instance_view(tx.conn(), &config.name, locked_by).await
            && view.is_running()
        {
            return Err(Error::Conflict(format!(
                "pipeline {} is locked by instance {}/{locked_by}, which is still running",
                config.name, config.name
            )));
        }
        store::set_locked_by(tx.conn(), &config.name, None).await?;
        audit::record(
            &mut tx,
            actor,
            "unlock",
            &format!("pipeline {}", config.name),
        )
        .await?;
        publish_latest(&mut tx, &config.name).await?;
        tx.commit().await
    }

    /// Every configured pipeline with its state and latest instance, from a fixed number of
    /// queries whatever the number of pipelines.
    pub async fn dashboard(&self) -> Result<Vec<PipelineView>> {
        let snapshot = self.configs.snapshot();
        let mut read = self.db.reader().await?;
        let mut states: HashMap<String, PipelineState> = store::states(read.conn())
            .await?
            .into_iter()
            .map(|(name, state)| (name.to_ascii_lowercase(), state))
            .collect();
        let latest = store::latest_instances(read.conn()).await?;
        let mut views = instance_views(read.conn(), latest).await?;
        let configs: Vec<&PipelineConfig> = snapshot.pipelines().collect();
        let mut errors = crate::materials::errors_of(read.conn(), &configs).await?;
        Ok(configs
            .into_iter()
            .map(|config| {
                let key = config.name.to_ascii_lowercase();
                PipelineView {
                    next_timer_firing: next_timer_firing(config),
                    config: config.clone(),
                    state: states.remove(&key).unwrap_or_default(),
                    latest: views.remove(&key),
                    material_errors: errors.remove(&key).unwrap_or_default(),
                }
            })
            .collect())
    }

    /// One configured pipeline as the dashboard shows it.
    pub async fn view(&self, name: &str) -> Result<PipelineView> {
        let snapshot = self.configs.snapshot();
        let config = configured(&snapshot, name)?.clone();
        let mut read = self.db.reader().await?;
        let state = store::state(read.conn(), &config.name).await?;
        let (page, _) = store::history(read.conn(), &config.name, 0, 1).await?;
        let latest = instance_views(read.conn(), page)
            .await?
            .into_values()
            .next();
        let material_errors = crate::materials::errors_of(read.conn(), &[&config])
            .await?
            .into_values()
            .next()
            .unwrap_or_default();
        Ok(PipelineView {
            next_timer_firing: next_timer_firing(&config),
            config,
            state,
            latest,
            material_errors,
        })
    }

    /// A page of a pipeline's instances, newest first, and how many it has.
    pub async fn history(
        &self,
        name: &str,
        offset: i64,
        page_size: i64,
    ) -> Result<(Vec<InstanceView>, i64)> {
        if !(1..=100).contains(&page_size) || offset < 0 {
            return Err(Error::Unprocessable(
                "page_size: from 1 to 100, offset: 0 or more".into(),
            ));
        }
        let snapshot = self.configs.snapshot();
        let canonical = snapshot
            .pipeline(name)
            .map(|p| p.name.clone())
            .unwrap_or_else(|| name.to_string());
        let mut read = self.db.reader().await?;
        let (page, total) = store::history(read.conn(), &canonical, offset, page_size).await?;
        if total == 0 && snapshot.pipeline(name).is_none() {
            return Err(not_configured(name));
        }
        let order: Vec<i64> = page.iter().map(|i| i.counter).collect();
        let mut views = instance_views_by_counter(read.conn(), page).await?;
        Ok((
            order.iter().filter_map(|c| views.remove(c)).collect(),
            total,
        ))
    }

    pub async fn instance(&self, name: &str, counter: i64) -> Result<InstanceView> {
        let mut read = self.db.reader().await?;
        instance_view(read.conn(), name, counter).await
    }

    /// A stage run with its jobs.
    pub async fn stage(
        &self,
        name: &str,
        counter: i64,
        stage: &str,
        stage_counter: i64,
    ) -> Result<StageView> {
        let mut read = self.db.reader().await?;
        let view = instance_view(read.conn(), name, counter).await?;
        let position = stage_position(&view.instance.plan, counter, stage)?;
        let stage_name = view.instance.plan.stages[position].name.clone();
        let key = StageKey {
            pipeline: &view.instance.pipeline_name,
            pipeline_counter: counter,
            stage: &stage_name,
            stage_counter,
        };
        let Some(run) = store::stage_run(read.conn(), &key).await? else {
            return Err(Error::NotFound(format!(
                "stage {}/{counter}/{stage_name}/{stage_counter} has not run",
                view.instance.plan.name
            )));
        };
        let jobs = job_runs::store::latest_of_stage(
            read.conn(),
            &view.instance.pipeline_name,
            counter,
            &stage_name,
            stage_counter,
        )
        .await?;
        let mut summary = view.stages[position].clone();
        let latest_counter = summary.counter.unwrap_or(stage_counter);
        let instance_running = view.is_running();
        if summary.counter != Some(stage_counter) {
            // An older run of the stage: its own status, not the latest's.
            let facts: Vec<_> = jobs.iter().map(|j| (j.state, j.result)).collect();
            summary.counter = Some(stage_counter);
            summary.status = match run.result {
                Some(result) => StageStatus::of_result(result),
                None => stage_status(&facts),
            };
            summary.can_run = false;
            summary.triggered_by = Some(run.triggered_by.clone());
            summary.scheduled_at = Some(run.scheduled_at);
            summary.completed_at = run.completed_at;
        }
        Ok(StageView {
            instance: view.instance,
            latest_counter,
            instance_running,
            run,
            summary,
            jobs,
        })
    }
}

impl Pipelines {
    /// What the agent of `run` checks out first: its instance's git materials at their
    /// revisions, with the credentials the config gives them now (a run of no instance, or
    /// of an instance without git materials, none).
    /// `run`'s job as its instance's plan has it (what it publishes, its tabs); `None` for a
    /// run of no instance.
    pub async fn job_config(&self, run: &JobRun) -> Result<Option<JobConfig>> {
        let mut read = self.db.reader().await?;
        let Some(instance) =
            store::instance(read.conn(), &run.pipeline_name, run.pipeline_counter).await?
        else {
            return Ok(None);
        };
        let job = crate::domain::pipeline::configured_job_name(&run.job_name);
        Ok(instance
            .plan
            .stage(&run.stage_name)
            .and_then(|s| s.jobs.iter().find(|j| j.name.eq_ignore_ascii_case(job)))
            .cloned())
    }

    /// For each of `counters` (instances of `pipeline` that still have artifacts), what
    /// `--artifacts-keep keep` spares of it: `None` all of it (one of the newest `keep`, or
    /// the latest passed instance), else the stages it keeps (`keep_artifacts: true`).
    pub async fn artifacts_spared(
        &self,
        pipeline: &str,
        keep: u32,
        counters: &[i64],
    ) -> Result<Vec<(i64, Option<Vec<String>>)>> {
        let mut read = self.db.reader().await?;
        let (newest, _) = store::history(read.conn(), pipeline, 0, i64::from(keep)).await?;
        let mut spared: HashSet<i64> = newest.iter().map(|i| i.counter).collect();
        if let Some(passed) = latest_passed_instance(read.conn(), pipeline).await? {
            spared.insert(passed);
        }
        let mut answer = Vec::new();
        for &counter in counters {
            if spared.contains(&counter) {
                answer.push((counter, None));
                continue;
            }
            let kept = match store::instance(read.conn(), pipeline, counter).await? {
                Some(instance) => instance
                    .plan
                    .stages
                    .iter()
                    .filter(|s| s.keep_artifacts)
                    .map(|s| s.name.clone())
                    .collect(),
                None => Vec::new(),
            };
            answer.push((counter, Some(kept)));
        }
        Ok(answer)
    }

    /// Where `fetch`, a task of `run`, takes its files from: job `fetch.job` of the newest
    /// run of `fetch.stage` in the instance `fetch.pipeline` leads to (an ancestor path
    /// `a/b`, walked from this instance up through its upstream revisions, the parent last;
    /// none: this instance). `Ok(Err(why))` when there is no such job to fetch from.
    pub async fn fetch_origin(
        &self,
        run: &JobRun,
        fetch: &FetchTask,
    ) -> Result<std::result::Result<FetchOrigin, String>> {
        let mut read = self.db.reader().await?;
        let Some(mut instance) =
            store::instance(read.conn(), &run.pipeline_name, run.pipeline_counter).await?
        else {
            return Ok(Err(
                "this job belongs to no pipeline instance to fetch from".into(),
            ));
        };
        let path = fetch.pipeline.as_deref().map(str::trim).unwrap_or("");
        let mut ancestors: Vec<&str> = path
            .split('/')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect();
        if ancestors
            .last()
            .is_some_and(|last| last.eq_ignore_ascii_case(&instance.pipeline_name))
        {
            ancestors.pop();
        }
        for ancestor in ancestors.iter().rev() {
            let Some(up) = instance
                .upstream_revisions
                .iter()
                .find(|u| u.pipeline.eq_ignore_ascii_case(ancestor))
                .cloned()
            else {
                return Ok(Err(format!(
                    "pipeline: {path}: {}/{} runs after no instance of {ancestor} (is {ancestor} a dependency material of {}?)",
                    instance.pipeline_name, instance.counter, instance.pipeline_name
                )));
            };
            instance = match store::instance(read.conn(), &up.pipeline, up.counter).await? {
                Some(found) => found,
                None => {
                    return Ok(Err(format!(
                        "upstream instance {}/{} is gone",
                        up.pipeline, up.counter
                    )));
                }
            };
        }
        let same_instance = ancestors.is_empty();
        if same_instance && fetch.stage.eq_ignore_ascii_case(&run.stage_name) {
            return Ok(Err(format!(
                "stage {}: a job fetches from an earlier stage, not its own",
                fetch.stage
            )));
        }
        let view = instance_view(read.conn(), &instance.pipeline_name, instance.counter).await?;
        let name = format!("{}/{}", view.instance.pipeline_name, view.instance.counter);
        let Some(stage) = view
            .stages
            .iter()
            .find(|s| s.name.eq_ignore_ascii_case(&fetch.stage))
        else {
            return Ok(Err(format!("{name} has no stage {}", fetch.stage)));
        };
        let Some(stage_counter) = stage.counter else {
            return Ok(Err(format!("stage {name}/{} has not run", stage.name)));
        };
        let jobs = job_runs::store::latest_of_stage(
            read.conn(),
            &view.instance.pipeline_name,
            view.instance.counter,
            &stage.name,
            stage_counter,
        )
        .await?;
        let locator = format!("{name}/{}/{stage_counter}", stage.name);
        let Some(job) = jobs
            .iter()
            .find(|j| j.job_name.eq_ignore_ascii_case(&fetch.job))
        else {
            return Ok(Err(format!("{locator} has no job {}", fetch.job)));
        };
        if job.state != crate::domain::job_run::JobState::Completed {
            return Ok(Err(format!(
                "{locator}/{} has not completed (it is {})",
                job.job_name, job.state
            )));
        }
        Ok(Ok(FetchOrigin {
            build_id: job.copied_from.unwrap_or(job.build_id),
            locator: format!("{locator}/{}", job.job_name),
        }))
    }

    pub async fn checkouts(&self, run: &JobRun) -> Result<Vec<Checkout>> {
        let mut read = self.db.reader().await?;
        let Some(instance) =
            store::instance(read.conn(), &run.pipeline_name, run.pipeline_counter).await?
        else {
            return Ok(Vec::new());
        };
        let snapshot = self.configs.snapshot();
        let configured = snapshot.pipeline(&instance.pipeline_name);
        Ok(instance
            .material_revisions
            .iter()
            .map(|r| {
                // The credentials of the same repository as configured now, if it still is.
                let git = configured.and_then(|p| {
                    p.materials.iter().find_map(|m| match &m.source {
                        MaterialSource::Git(git)
                            if m.name.eq_ignore_ascii_case(&r.material)
                                && Fingerprint::of_git(&git.url, &git.branch) == r.fingerprint =>
                        {
                            Some(git)
                        }
                        _ => None,
                    })
                });
                let (url, url_user, url_password) = match git {
                    Some(git) => split_credentials(&git.url),
                    None => (r.url.clone(), None, None),
                };
                Checkout {
                    material: r.material.clone(),
                    url,
                    branch: r.branch.clone(),
                    revision: r.revision.clone(),
                    destination: r.destination.clone(),
                    shallow: r.shallow,
                    username: git.and_then(|g| g.username.clone()).or(url_user),
                    password: git.and_then(|g| g.password.clone()).or(url_password),
                }
            })
            .collect())
    }
}

/// A stage's or a job's line in the CCTray feed.
#[derive(Debug, Clone, PartialEq)]
pub struct FeedProject {
    /// `P :: S` or `P :: S :: J`.
    pub name: String,
    pub building: bool,
    /// Of the newest finished run: Passed, Failed or Cancelled; `None` if none finished.
    pub last_result: Option<crate::domain::job_run::JobResult>,
    pub last_label: String,
    pub last_time: Option<i64>,
    /// The site path of the run the project shows.
    pub path: String,
}

impl Pipelines {
    /// How many instances of all pipelines there are by result, every result named (0 for
    /// one no instance has): `Building`, `Passed`, `Failed`, `Cancelled`, `Waiting` (a manual
    /// stage's turn came and nobody approved it yet). One query, for `/metrics`.
    pub async fn instance_results(&self) -> Result<Vec<(&'static str, u64)>> {
        let mut read = self.db.reader().await?;
        let counted = store::instance_results(read.conn()).await?;
        Ok(INSTANCE_RESULTS
            .iter()
            .map(|result| {
                let count = counted
                    .iter()
                    .find(|(r, _)| r == result)
                    .map_or(0, |(_, n)| (*n).max(0) as u64);
                (*result, count)
            })
            .collect())
    }

    /// The CCTray projects: one per stage that has run and one per job of it, in config
    /// order; from a fixed number of queries.
    pub async fn feed(&self) -> Result<Vec<FeedProject>> {
        let views = self.dashboard().await?;
        let mut read = self.db.reader().await?;
        let finished = store::last_finished_stage_runs(read.conn()).await?;
        let keys: Vec<(String, i64)> = finished.iter().map(|(k, _, _)| k.clone()).collect();
        let facts = store::job_facts_of(read.conn(), &keys).await?;
        let mut projects = Vec::new();
        for view in &views {
            let Some(latest) = &view.latest else { continue };
            let name = &latest.instance.pipeline_name;
            for stage in &latest.stages {
                let last = finished.iter().find(|((p, _), _, run)| {
                    p.eq_ignore_ascii_case(name) && run.stage_name.eq_ignore_ascii_case(&stage.name)
                });
                let building = matches!(stage.status, StageStatus::Building | StageStatus::Failing);
                let (pc, sc, label, result, time) = match (last, stage.counter) {
                    (Some(((_, pc), label, run)), _) => (
                        *pc,
                        run.stage_counter,
                        label.clone(),
                        run.result,
                        run.completed_at,
                    ),
                    (None, Some(sc)) => (latest.instance.counter, sc, String::new(), None, None),
                    (None, None) => continue,
                };
                projects.push(FeedProject {
                    name: format!("{name} :: {}", stage.name),
                    building,
                    last_result: result,
                    last_label: label.clone(),
                    last_time: time,
                    path: format!("/pipelines/{name}/{pc}/{}/{sc}", stage.name),
                });
                let mut jobs: Vec<&crate::domain::pipeline::JobFact> = facts
                    .iter()
                    .filter(|((p, c), fact)| {
                        p.eq_ignore_ascii_case(name)
                            && *c == pc
                            && fact.stage_name.eq_ignore_ascii_case(&stage.name)
                            && fact.stage_counter == sc
                    })
                    .map(|(_, fact)| fact)
                    .collect();
                jobs.sort_by(|a, b| a.job_name.cmp(&b.job_name));
                for job in jobs {
                    projects.push(FeedProject {
                        name: format!("{name} :: {} :: {}", stage.name, job.job_name),
                        building,
                        last_result: (job.state == crate::domain::job_run::JobState::Completed)
                            .then_some(job.result),
                        last_label: label.clone(),
                        last_time: time,
                        path: format!(
                            "/tab/build/detail/{name}/{pc}/{}/{sc}/{}",
                            stage.name, job.job_name
                        ),
                    });
                }
            }
        }
        Ok(projects)
    }
}

/// Which jobs of a stage run again.
#[derive(Debug, Clone)]
pub enum JobSelection {
    /// Those that failed (GoCD's `run-failed-jobs`).
    Failed,
    /// These, by name (GoCD's `run-selected-jobs`).
    Named(Vec<String>),
}

/// With authentication on, a stage's `approval.users` limits who may run it; admins always may.
fn may_approve(config: &StageConfig, actor: &User) -> Result<()> {
    if actor.signed_in
        && !actor.admin
        && !config.approval.users.is_empty()
        && !config
            .approval
            .users
            .iter()
            .any(|u| u.eq_ignore_ascii_case(&actor.name))
    {
        return Err(Error::Forbidden(format!(
            "{} may not run stage {}: its approval names {}",
            actor.name,
            config.name,
            config.approval.users.join(", ")
        )));
    }
    Ok(())
}

/// Where `stage` (named in any case) stands in `plan`; 404 if the plan has no such stage.
fn stage_position(plan: &PipelineConfig, counter: i64, stage: &str) -> Result<usize> {
    plan.stages
        .iter()
        .position(|s| s.name.eq_ignore_ascii_case(stage))
        .ok_or_else(|| {
            Error::NotFound(format!(
                "pipeline {}/{counter} has no stage {stage}",
                plan.name
            ))
        })
}

fn not_configured(name: &str) -> Error {
    Error::NotFound(format!("no pipeline named {name}"))
}

fn configured<'a>(snapshot: &'a Snapshot, name: &str) -> Result<&'a PipelineConfig> {
    snapshot.pipeline(name).ok_or_else(|| not_configured(name))
}

fn plain_variable_name(name: &str) -> bool {
    !name.is_empty() && !name.contains(['=', '\0'])
}

async fn instance_or_404(conn: Conn<'_>, name: &str, counter: i64) -> Result<PipelineInstance> {
    store::instance(conn, name, counter)
        .await?
        .ok_or_else(|| Error::NotFound(format!("pipeline {name} has no instance {counter}")))
}

async fn instance_view(mut conn: Conn<'_>, name: &str, counter: i64) -> Result<InstanceView> {
    let instance = instance_or_404(conn.reborrow(), name, counter).await?;
    instance_views_by_counter(conn, vec![instance])
        .await?
        .into_values()
        .next()
        .ok_or_else(|| Error::NotFound(format!("pipeline {name} has no instance {counter}")))
}

/// The views of `instances`, keyed by lowercased pipeline name (one instance per pipeline).
async fn instance_views(
    conn: Conn<'_>,
    instances: Vec<PipelineInstance>,
) -> Result<HashMap<String, InstanceView>> {
    Ok(summarize(conn, instances)
        .await?
        .into_iter()
        .map(|v| (v.instance.pipeline_name.to_ascii_lowercase(), v))
        .collect())
}

/// The views of `instances` of one pipeline, keyed by counter.
async fn instance_views_by_counter(
    conn: Conn<'_>,
    instances: Vec<PipelineInstance>,
) -> Result<HashMap<i64, InstanceView>> {
    Ok(summarize(conn, instances)
        .await?
        .into_iter()
        .map(|v| (v.instance.counter, v))
        .collect())
}

/// Two queries for any number of instances: their stage runs and their jobs' latest runs.
async fn summarize(
    mut conn: Conn<'_>,
    instances: Vec<PipelineInstance>,
) -> Result<Vec<InstanceView>> {
    let keys: Vec<(String, i64)> = instances
        .iter()
        .map(|i| (i.pipeline_name.clone(), i.counter))
        .collect();
    let mut runs: HashMap<(String, i64), Vec<StageRun>> = HashMap::new();
    for ((p, pc), run) in store::stage_runs_of(conn.reborrow(), &keys).await? {
        runs.entry((p.to_ascii_lowercase(), pc))
            .or_default()
            .push(run);
    }
    let mut jobs: HashMap<(String, i64), Vec<_>> = HashMap::new();
    for ((p, pc), fact) in store::job_facts_of(conn, &keys).await? {
        jobs.entry((p.to_ascii_lowercase(), pc))
            .or_default()
            .push(fact);
    }
    Ok(instances
        .into_iter()
        .map(|instance| {
            let key = (
                instance.pipeline_name.to_ascii_lowercase(),
                instance.counter,
            );
            let stages = summarize_stages(
                &instance.plan,
                runs.get(&key).map_or(&[], |r| r.as_slice()),
                jobs.get(&key).map_or(&[], |j| j.as_slice()),
            );
            InstanceView { instance, stages }
        })
        .collect())
}

/// The next firing of `config`'s timer after now.
fn next_timer_firing(config: &PipelineConfig) -> Option<i64> {
    let timer = config.timer.as_ref()?;
    crate::domain::timer::TimerSpec::parse(&timer.spec)
        .ok()?
        .next_after(now_millis())
}

/// Creates the next instance of `config` in `tx` and starts its first stage. `upstream` is
/// the instance whose passed stage triggered it.
async fn trigger_in(
    tx: &mut WriteTx,
    snapshot: &Snapshot,
    config: &PipelineConfig,
    actor: &str,
    variables: BTreeMap<String, String>,
    upstream: Option<&PipelineInstance>,
    picked: &BTreeMap<String, String>,
) -> Result<i64> {
    let state = store::state(tx.conn(), &config.name).await?;
    if state.paused {
        return Err(Error::Conflict(format!(
            "pipeline {} is paused{}",
            config.name,
            match state.pause_cause.as_deref().filter(|c| !c.is_empty()) {
                Some(cause) => format!(": {cause}"),
                None => String::new(),
            }
        )));
    }
    if let Some(locked_by) = state.locked_by {
        return Err(Error::Conflict(format!(
            "pipeline {} is locked by instance {}/{locked_by}",
            config.name, config.name
        )));
    }
    let Some(first) = config.stages.first() else {
        return Err(Error::Unprocessable(format!(
            "pipeline {} has no stages",
            config.name
        )));
    };
    let counter = store::next_counter(tx.conn(), &config.name).await?;
    let (latest, _) = store::history(tx.conn(), &config.name, 0, 1).await?;
    let previous = latest
        .first()
        .map(|i| i.material_revisions.as_slice())
        .unwrap_or_default();
    let material_revisions = crate::materials::revisions_in(tx, config, previous, picked).await?;
    let upstream_revisions = upstream_revisions(tx, config, upstream).await?;
    let mut labels: BTreeMap<String, String> = upstream_revisions
        .iter()
        .map(|u| (u.material.clone(), u.label.clone()))
        .collect();
    for r in &material_revisions {
        labels.insert(r.material.clone(), r.revision.clone());
    }
    let label = render_label(&config.label_template, counter, &labels);
    let environment = snapshot.environment_of(&config.name);
    let environment_variables = environment
        .map(|e| e.environment_variables.clone())
        .unwrap_or_default();
    store::insert_instance(
        tx.conn(),
        NewInstance {
            pipeline_name: &config.name,
            counter,
            label: &label,
            plan: config,
            triggered_by: actor,
            environment: environment.map(|e| e.name.as_str()),
            environment_variables: &environment_variables,
            trigger_variables: &variables,
            now: now_millis(),
            material_revisions: &material_revisions,
            upstream_revisions: &upstream_revisions,
        },
    )
    .await?;
    if config.lock_behavior != LockBehavior::None {
        store::set_locked_by(tx.conn(), &config.name, Some(counter)).await?;
    }
    let instance = instance_or_404(tx.conn(), &config.name, counter).await?;
    let first = first.name.clone();
    start_stage(tx, &instance, &first, 1, actor).await?;
    publish_instance(tx, &config.name, counter).await?;
    Ok(counter)
}

/// Per dependency material of `config`, the upstream instance it runs after: the triggering
/// instance for its own pipeline, else the newest instance whose stage passed (none yet: the
/// material has no revision). `${material}` labels give the upstream's label.
async fn upstream_revisions(
    tx: &mut WriteTx,
    config: &PipelineConfig,
    upstream: Option<&PipelineInstance>,
) -> Result<Vec<UpstreamRevision>> {
    let mut revisions = Vec::new();
    for material in &config.materials {
        if let MaterialSource::Dependency {
            pipeline, stage, ..
        } = &material.source
        {
            let found = match upstream {
                Some(up) if up.pipeline_name.eq_ignore_ascii_case(pipeline) => Some(up.clone()),
                _ => latest_passed(tx, pipeline, stage).await?,
            };
            if let Some(found) = found {
                revisions.push(UpstreamRevision {
                    material: material.name.clone(),
                    pipeline: found.pipeline_name,
                    counter: found.counter,
                    label: found.label,
                    stage: stage.clone(),
                });
            }
        }
    }
    Ok(revisions)
}

/// The newest of `pipeline`'s latest 500 instances whose every stage passed.
async fn latest_passed_instance(mut conn: Conn<'_>, pipeline: &str) -> Result<Option<i64>> {
    const PAGE: i64 = 50;
    for page in 0..10 {
        let (instances, _) = store::history(conn.reborrow(), pipeline, page * PAGE, PAGE).await?;
        if instances.is_empty() {
            break;
        }
        let order: Vec<i64> = instances.iter().map(|i| i.counter).collect();
        let views = instance_views_by_counter(conn.reborrow(), instances).await?;
        for counter in order {
            if views.get(&counter).is_some_and(|v| {
                !v.stages.is_empty() && v.stages.iter().all(|s| s.status == StageStatus::Passed)
            }) {
                return Ok(Some(counter));
            }
        }
    }
    Ok(None)
}

/// The newest of `pipeline`'s latest 20 instances whose `stage` passed.
async fn latest_passed(
    tx: &mut WriteTx,
    pipeline: &str,
    stage: &str,
) -> Result<Option<PipelineInstance>> {
    let (page, _) = store::history(tx.conn(), pipeline, 0, 20).await?;
    for instance in page {
        let view = instance_view(tx.conn(), &instance.pipeline_name, instance.counter).await?;
        if view
            .stages
            .iter()
            .any(|s| s.name.eq_ignore_ascii_case(stage) && s.status == StageStatus::Passed)
        {
            return Ok(Some(view.instance));
        }
    }
    Ok(None)
}

/// Fan-in (the simple case GoCD users expect): `downstream`, whose upstream `passed` just
/// passed, runs only once every other upstream it depends on has passed at the same
/// revision of each git material they share with `passed`. Answers why it waits, if it does
/// (the last upstream to catch up triggers it, so it runs once, consistently).
async fn fan_in_wait(
    tx: &mut WriteTx,
    downstream: &PipelineConfig,
    passed: &PipelineInstance,
) -> Result<Option<String>> {
    for (_, upstream, stage, ignored) in downstream.dependencies() {
        if ignored || upstream.eq_ignore_ascii_case(&passed.pipeline_name) {
            continue;
        }
        let Some(other) = latest_passed(tx, upstream, stage).await? else {
            return Ok(Some(format!(
                "upstream {upstream} has not passed {stage} yet"
            )));
        };
        for mine in &passed.material_revisions {
            if let Some(theirs) = other
                .material_revisions
                .iter()
                .find(|t| t.fingerprint == mine.fingerprint && t.revision != mine.revision)
            {
                return Ok(Some(format!(
                    "upstream {upstream} last passed {stage} at {} {}, not {}",
                    mine.material,
                    crate::domain::material::short_revision(&theirs.revision),
                    crate::domain::material::short_revision(&mine.revision)
                )));
            }
        }
    }
    Ok(None)
}

/// The revisions `downstream`'s own git materials take when `passed` triggers it: those
/// `passed` ran of the repositories they share (so a commit polled since does not mix in).
fn revisions_shared_with(
    downstream: &PipelineConfig,
    passed: &PipelineInstance,
) -> BTreeMap<String, String> {
    downstream
        .materials
        .iter()
        .filter_map(|m| match &m.source {
            MaterialSource::Git(git) => {
                let fingerprint =
                    crate::domain::material::Fingerprint::of_git(&git.url, &git.branch);
                passed
                    .material_revisions
                    .iter()
                    .find(|r| r.fingerprint == fingerprint)
                    .map(|r| (fingerprint.to_string(), r.revision.clone()))
            }
            _ => None,
        })
        .collect()
}

/// Records stage run `stage_counter` of `stage` and schedules its jobs.
async fn start_stage(
    tx: &mut WriteTx,
    instance: &PipelineInstance,
    stage: &str,
    stage_counter: i64,
    actor: &str,
) -> Result<()> {
    let plan = &instance.plan;
    let Some(config) = plan.stage(stage) else {
        return Err(Error::NotFound(format!(
            "pipeline {} has no stage {stage}",
            plan.name
        )));
    };
    let key = StageKey {
        pipeline: &instance.pipeline_name,
        pipeline_counter: instance.counter,
        stage: &config.name,
        stage_counter,
    };
    store::insert_stage_run(tx.conn(), &key, actor, now_millis()).await?;
    let facts: InstanceFacts = instance.facts();
    let agents = crate::agents::list_in(tx).await?;
    let matching = |job: &JobConfig| -> Vec<Uuid> {
        let needs = Requirements {
            resources: job.resources.clone(),
            environment: instance.environment.clone(),
            agent: None,
        };
        agents
            .iter()
            .filter(|a| a.agent_config_state == ConfigState::Enabled && a.matches(&needs))
            .map(|a| a.uuid)
            .collect()
    };
    for job in plan_jobs(plan, config, &facts, matching) {
        let tasks: Vec<Task> = job.config.tasks.iter().map(Task::from).collect();
        let build_id = job_runs::insert_run(
            tx,
            NewRun {
                pipeline_name: &instance.pipeline_name,
                pipeline_counter: instance.counter,
                stage_name: &config.name,
                stage_counter,
                job_name: &job.name,
                tasks: &tasks,
                resources: &job.config.resources,
                environment: instance.environment.as_deref(),
                environment_variables: &job.environment_variables,
                rescheduled_from: None,
                scheduled_by: Some(actor),
                clean_workspace: config.clean_workspace,
                pipeline_label: Some(&instance.label),
                // GoCD's timeout is minutes of console silence; absent: the server's default.
                timeout_seconds: job
                    .config
                    .timeout
                    .map(|minutes| i64::try_from(minutes.saturating_mul(60)).unwrap_or(i64::MAX)),
                pinned_agent: job.agent,
            },
        )
        .await?;
        let run = job_runs::fetch_run_or_404(tx.conn(), build_id).await?;
        job_runs::publish_run(tx, &run);
    }
    crate::scheduler::publish_pending(tx).await
}

/// What a run's end means for its pipeline: called by the scheduler inside the write that
/// ended `run`. A run of no pipeline instance (an ad-hoc job) changes nothing here.
pub(crate) async fn after_run(
    tx: &mut WriteTx,
    run: &JobRun,
    configs: &ConfigSources,
) -> Result<()> {
    let key = StageKey {
        pipeline: &run.pipeline_name,
        pipeline_counter: run.pipeline_counter,
        stage: &run.stage_name,
        stage_counter: run.stage_counter,
    };
    let Some(stage_run) = store::stage_run(tx.conn(), &key).await? else {
        return Ok(());
    };
    if stage_run.result.is_none() {
        let jobs = job_runs::store::latest_of_stage(
            tx.conn(),
            &run.pipeline_name,
            run.pipeline_counter,
            &run.stage_name,
            run.stage_counter,
        )
        .await?;
        let facts: Vec<_> = jobs.iter().map(|j| (j.state, j.result)).collect();
        let status = stage_status(&facts);
        if status.is_finished()
            && store::finish_stage_run(tx.conn(), &key, status.result(), now_millis()).await?
        {
            stage_finished(tx, run, status, configs).await?;
        }
    }
    publish_instance(tx, &run.pipeline_name, run.pipeline_counter).await
}

async fn stage_finished(
    tx: &mut WriteTx,
    run: &JobRun,
    status: StageStatus,
    configs: &ConfigSources,
) -> Result<()> {
    let instance = instance_or_404(tx.conn(), &run.pipeline_name, run.pipeline_counter).await?;
    match after_stage(&instance.plan, &run.stage_name, status) {
        AfterStage::Start(next) => {
            let view = instance_view(tx.conn(), &instance.pipeline_name, instance.counter).await?;
            let counter = view
                .stages
                .iter()
                .find(|s| s.name.eq_ignore_ascii_case(&next))
                .and_then(|s| s.counter)
                .unwrap_or(0)
                + 1;
            start_stage(tx, &instance, &next, counter, CHANGES).await?;
        }
        AfterStage::Await(_) => release_lock(tx, &instance, true).await?,
        AfterStage::Finished { passed } => release_lock(tx, &instance, passed).await?,
    }
    if status == StageStatus::Passed {
        let snapshot = configs.snapshot();
        for downstream in snapshot.triggered_by_stage(&run.pipeline_name, &run.stage_name) {
            if downstream.stages.first().is_some_and(|s| s.approval.manual) {
                continue;
            }
            if let Some(why) = fan_in_wait(tx, downstream, &instance).await? {
                tracing::info!(pipeline = %downstream.name, "not triggered yet: {why}");
                continue;
            }
            let upstream = Some(&instance);
            let picked = revisions_shared_with(downstream, &instance);
            match trigger_in(
                tx,
                &snapshot,
                downstream,
                CHANGES,
                BTreeMap::new(),
                upstream,
                &picked,
            )
            .await
            {
                Ok(_) => {}
                // Paused or locked: GoCD does not queue it either; the next pass triggers it.
                Err(Error::Conflict(why)) => {
                    tracing::info!(pipeline = %downstream.name, "not triggered: {why}")
                }
                Err(other) => return Err(other),
            }
        }
    }
    Ok(())
}

/// The lock an instance holds goes when it ends (or waits), unless it failed and the
/// pipeline locks on failure.
async fn release_lock(tx: &mut WriteTx, instance: &PipelineInstance, passed: bool) -> Result<()> {
    let keep = instance.plan.lock_behavior == LockBehavior::LockOnFailure && !passed;
    let state = store::state(tx.conn(), &instance.pipeline_name).await?;
    if !keep && state.locked_by == Some(instance.counter) {
        store::set_locked_by(tx.conn(), &instance.pipeline_name, None).await?;
    }
    Ok(())
}

/// `pipeline_updated` for instance `counter` as `tx` leaves it.
async fn publish_instance(tx: &mut WriteTx, pipeline: &str, counter: i64) -> Result<()> {
    let view = instance_view(tx.conn(), pipeline, counter).await?;
    tx.publish(
        Topic::PipelinesUpdates,
        DomainEvent::PipelineUpdated {
            pipeline: view.instance.pipeline_name.clone(),
            counter: Some(counter),
            stages: view
                .stages
                .iter()
                .map(|s| (s.name.clone(), s.status))
                .collect(),
        },
    );
    Ok(())
}

/// `pipeline_updated` for a pipeline's own change (pause, lock), with its latest instance.
async fn publish_latest(tx: &mut WriteTx, pipeline: &str) -> Result<()> {
    let (page, _) = store::history(tx.conn(), pipeline, 0, 1).await?;
    match page.first() {
        Some(latest) => publish_instance(tx, pipeline, latest.counter).await,
        None => {
            tx.publish(
                Topic::PipelinesUpdates,
                DomainEvent::PipelineUpdated {
                    pipeline: pipeline.to_string(),
                    counter: None,
                    stages: vec![],
                },
            );
            Ok(())
        }
    }
}
