//! Pipeline instances and their stages: GoCD's stage statuses and how a stage's jobs decide
//! them, what follows a stage's end, the instance's label, and the jobs (with their
//! variables) a stage of an instance's plan schedules.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::job_run::{JobResult, JobState};
use super::material::{MaterialRevision, UpstreamRevision, revision_variables};
use super::pipeline_config::{JobConfig, PipelineConfig, RunInstances, StageConfig};

/// A stage as the dashboard shows it (CONTRACT.md's `data-status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum StageStatus {
    /// A job is still Scheduled, Assigned or running, and none failed.
    Building,
    /// A job failed while others still run.
    Failing,
    Passed,
    Failed,
    Cancelled,
    /// A manual stage whose turn has come, waiting for someone to approve it.
    Awaiting,
    /// Not reached, or stopped by an earlier failure.
    NotRun,
}
text_enum!(StageStatus {
    Building,
    Failing,
    Passed,
    Failed,
    Cancelled,
    Awaiting,
    NotRun
});

impl StageStatus {
    pub fn is_finished(self) -> bool {
        matches!(
            self,
            StageStatus::Passed | StageStatus::Failed | StageStatus::Cancelled
        )
    }

    /// A finished stage's status from its result.
    pub fn of_result(result: JobResult) -> StageStatus {
        match result {
            JobResult::Passed => StageStatus::Passed,
            JobResult::Failed => StageStatus::Failed,
            _ => StageStatus::Cancelled,
        }
    }

    /// The result GoCD gives a finished stage.
    pub fn result(self) -> JobResult {
        match self {
            StageStatus::Passed => JobResult::Passed,
            StageStatus::Failed => JobResult::Failed,
            StageStatus::Cancelled => JobResult::Cancelled,
            _ => JobResult::Unknown,
        }
    }
}

/// A stage run's status from its jobs' latest runs (state and result), as GoCD decides it:
/// running while any job runs (`Failing` once one failed), then `Cancelled` if a job was
/// cancelled, `Failed` if one failed, else `Passed`.
pub fn stage_status(jobs: &[(JobState, JobResult)]) -> StageStatus {
    let failed = jobs.iter().any(|(_, r)| *r == JobResult::Failed);
    if jobs.iter().any(|(s, _)| *s != JobState::Completed) {
        return if failed {
            StageStatus::Failing
        } else {
            StageStatus::Building
        };
    }
    if jobs.iter().any(|(_, r)| *r == JobResult::Cancelled) {
        StageStatus::Cancelled
    } else if failed {
        StageStatus::Failed
    } else {
        StageStatus::Passed
    }
}

/// What a stage that just finished leads to, within its instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AfterStage {
    /// Schedule this stage (its approval is `success`).
    Start(String),
    /// The next stage is manual: it waits for someone.
    Await(String),
    /// The instance is over: the last stage passed, or one did not pass.
    Finished { passed: bool },
}

/// What follows `stage` of `plan` ending as `status` (a finished status).
pub fn after_stage(plan: &PipelineConfig, stage: &str, status: StageStatus) -> AfterStage {
    if status != StageStatus::Passed {
        return AfterStage::Finished { passed: false };
    }
    let position = plan
        .stages
        .iter()
        .position(|s| s.name.eq_ignore_ascii_case(stage));
    match position.and_then(|i| plan.stages.get(i + 1)) {
        None => AfterStage::Finished { passed: true },
        Some(next) if next.approval.manual => AfterStage::Await(next.name.clone()),
        Some(next) => AfterStage::Start(next.name.clone()),
    }
}

/// May `stage` of an instance be started by hand now? `previous` is the status of the stage
/// before it (`None` for the first stage); `current` is the stage's own latest status, if it
/// ran. A running stage cannot be started again; a stage after one that did not pass may be
/// only when it is manual and does not insist on success (GoCD's `allow_only_on_success`).
pub fn may_run_stage(
    stage: &StageConfig,
    previous: Option<StageStatus>,
    current: Option<StageStatus>,
) -> Result<(), String> {
    if let Some(status) = current
        && !status.is_finished()
    {
        return Err(format!("stage {} is still {status}", stage.name));
    }
    match previous {
        None | Some(StageStatus::Passed) => Ok(()),
        Some(StageStatus::Failed | StageStatus::Cancelled) if current.is_some() => Ok(()),
        Some(StageStatus::Failed | StageStatus::Cancelled)
            if stage.approval.manual && !stage.approval.allow_only_on_success =>
        {
            Ok(())
        }
        Some(StageStatus::Failed | StageStatus::Cancelled) => Err(format!(
            "stage {} may only run once the stage before it passed",
            stage.name
        )),
        Some(status) => Err(format!(
            "stage {} must wait: the stage before it is {status}",
            stage.name
        )),
    }
}

/// A piece of a label template: text as written, or a value, `${name}` or `${name[:N]}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LabelPiece<'a> {
    Text(&'a str),
    Value { name: &'a str, cut: Option<usize> },
}

/// A label template's pieces in order; an unclosed `${` is text.
pub fn label_pieces(template: &str) -> Vec<LabelPiece<'_>> {
    let mut pieces = Vec::new();
    let mut rest = template;
    while let Some(start) = rest.find("${") {
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            break;
        };
        if start > 0 {
            pieces.push(LabelPiece::Text(&rest[..start]));
        }
        let inner = &after[..end];
        let (name, cut) = match inner.split_once("[:") {
            Some((name, n)) => (
                name,
                n.strip_suffix(']').and_then(|n| n.parse::<usize>().ok()),
            ),
            None => (inner, None),
        };
        pieces.push(LabelPiece::Value { name, cut });
        rest = &after[end + 1..];
    }
    if !rest.is_empty() {
        pieces.push(LabelPiece::Text(rest));
    }
    pieces
}

/// The label of instance `counter`: `${COUNT}` is the counter, `${material}` and
/// `${material[:N]}` the material's label or revision (a dependency material gives the
/// upstream instance's label); a material with nothing to give is empty.
pub fn render_label(template: &str, counter: i64, materials: &BTreeMap<String, String>) -> String {
    let mut out = String::with_capacity(template.len() + 8);
    for piece in label_pieces(template) {
        let (name, cut) = match piece {
            LabelPiece::Text(text) => {
                out.push_str(text);
                continue;
            }
            LabelPiece::Value { name, cut } => (name, cut),
        };
        let value = if name.eq_ignore_ascii_case("COUNT") {
            counter.to_string()
        } else {
            materials
                .iter()
                .find(|(m, _)| m.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.clone())
                .unwrap_or_default()
        };
        match cut {
            Some(n) => out.extend(value.chars().take(n)),
            None => out.push_str(&value),
        }
    }
    out
}

/// One job run a stage schedules: its name (a `run_instances` copy is `JOB-runInstance-N`)
/// and its variables, job > stage > pipeline (with the trigger's) > environment.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedJob<'a> {
    pub name: String,
    pub config: &'a JobConfig,
    pub environment_variables: BTreeMap<String, String>,
    /// The one agent this copy of a `run_instances: all` job runs on.
    pub agent: Option<Uuid>,
}

/// The facts about an instance every job's variables carry.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct InstanceFacts {
    pub label: String,
    pub trigger_user: String,
    pub environment: Option<String>,
    pub environment_variables: BTreeMap<String, String>,
    /// Given when the instance was triggered; they override the pipeline's.
    pub trigger_variables: BTreeMap<String, String>,
    /// GoCD's `GO_REVISION…` variables of the instance's materials (the server's: they win).
    pub material_variables: BTreeMap<String, String>,
}

/// The job runs `stage` of `plan` schedules, in the order the config lists its jobs.
/// `run_instances: all` gives one copy per agent `agents_for` names (the enabled agents that
/// match the job: the caller's to find), each pinned to its agent; with none, one copy that
/// waits, unpinned, for an agent to match.
pub fn plan_jobs<'a>(
    plan: &'a PipelineConfig,
    stage: &'a StageConfig,
    facts: &InstanceFacts,
    agents_for: impl Fn(&JobConfig) -> Vec<Uuid>,
) -> Vec<PlannedJob<'a>> {
    let mut jobs = Vec::new();
    for job in &stage.jobs {
        let mut variables = facts.environment_variables.clone();
        variables.extend(plan.environment_variables.clone());
        variables.extend(facts.trigger_variables.clone());
        variables.extend(stage.environment_variables.clone());
        variables.extend(job.environment_variables.clone());
        variables.extend(facts.material_variables.clone());
        variables.insert("GO_PIPELINE_LABEL".into(), facts.label.clone());
        variables.insert("GO_TRIGGER_USER".into(), facts.trigger_user.clone());
        if let Some(environment) = &facts.environment {
            variables.insert("GO_ENVIRONMENT_NAME".into(), environment.clone());
        }
        let copies: Option<(&str, Vec<Option<Uuid>>)> = match job.run_instances {
            RunInstances::One => None,
            RunInstances::Count(n) => Some(("runInstance", vec![None; n.max(1) as usize])),
            RunInstances::All => {
                let agents: Vec<Option<Uuid>> = agents_for(job).into_iter().map(Some).collect();
                Some((
                    "runOnAll",
                    if agents.is_empty() {
                        vec![None]
                    } else {
                        agents
                    },
                ))
            }
        };
        match copies {
            None => jobs.push(PlannedJob {
                name: job.name.clone(),
                config: job,
                environment_variables: variables,
                agent: None,
            }),
            Some((kind, agents)) => {
                let count = agents.len();
                for (index, agent) in (1..=count).zip(agents) {
                    let mut variables = variables.clone();
                    variables.insert("GO_JOB_RUN_INDEX".into(), index.to_string());
                    variables.insert("GO_JOB_RUN_COUNT".into(), count.to_string());
                    jobs.push(PlannedJob {
                        name: format!("{}-{kind}-{index}", job.name),
                        config: job,
                        environment_variables: variables,
                        agent,
                    });
                }
            }
        }
    }
    jobs
}

/// The configured job a job run's name belongs to (`build-runInstance-2` → `build`).
pub fn configured_job_name(run_name: &str) -> &str {
    for marker in ["-runInstance-", "-runOnAll-"] {
        if let Some((base, n)) = run_name.rsplit_once(marker)
            && n.parse::<u32>().is_ok()
        {
            return base;
        }
    }
    run_name
}

/// An instance of a pipeline: its counter, label, who triggered it, and the plan it runs.
#[derive(Debug, Clone, PartialEq)]
pub struct PipelineInstance {
    pub pipeline_name: String,
    pub counter: i64,
    pub label: String,
    pub plan: PipelineConfig,
    /// A user's name, or `changes` for an automatic trigger.
    pub triggered_by: String,
    pub environment: Option<String>,
    pub environment_variables: BTreeMap<String, String>,
    pub trigger_variables: BTreeMap<String, String>,
    pub created_at: i64,
    /// What it was built from: per git material, its revision (the build cause).
    pub material_revisions: Vec<MaterialRevision>,
    /// Per dependency material, the upstream instance it runs after.
    pub upstream_revisions: Vec<UpstreamRevision>,
}

impl PipelineInstance {
    pub fn facts(&self) -> InstanceFacts {
        InstanceFacts {
            label: self.label.clone(),
            trigger_user: self.triggered_by.clone(),
            environment: self.environment.clone(),
            environment_variables: self.environment_variables.clone(),
            trigger_variables: self.trigger_variables.clone(),
            material_variables: revision_variables(&self.material_revisions),
        }
    }
}

/// One run of a stage of an instance (a re-run is the next counter).
#[derive(Debug, Clone, PartialEq)]
pub struct StageRun {
    pub stage_name: String,
    pub stage_counter: i64,
    pub triggered_by: String,
    /// Set once every job of it completed.
    pub result: Option<JobResult>,
    pub cancelled_by: Option<String>,
    pub scheduled_at: i64,
    pub completed_at: Option<i64>,
}

/// The latest run of one job of a stage run, as stage statuses need it.
#[derive(Debug, Clone, PartialEq)]
pub struct JobFact {
    pub stage_name: String,
    pub stage_counter: i64,
    pub job_name: String,
    pub state: JobState,
    pub result: JobResult,
}

/// A stage of an instance as the dashboard and the APIs show it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StageSummary {
    pub name: String,
    /// Its latest run's counter, if it ran.
    pub counter: Option<i64>,
    pub status: StageStatus,
    pub manual: bool,
    /// Whether someone may start it now (approve it, or run it again).
    pub can_run: bool,
    pub triggered_by: Option<String>,
    pub scheduled_at: Option<i64>,
    pub completed_at: Option<i64>,
}

/// The stages of `plan`, in order, each from its latest run (`runs`) and that run's jobs
/// (`jobs`); a stage that has not run is `Awaiting` when it is manual and the one before
/// passed, else `NotRun`.
pub fn summarize_stages(
    plan: &PipelineConfig,
    runs: &[StageRun],
    jobs: &[JobFact],
) -> Vec<StageSummary> {
    let mut out: Vec<StageSummary> = Vec::with_capacity(plan.stages.len());
    for stage in &plan.stages {
        let previous = out.last().map(|s| s.status);
        let latest = runs
            .iter()
            .filter(|r| r.stage_name.eq_ignore_ascii_case(&stage.name))
            .max_by_key(|r| r.stage_counter);
        let current = latest.map(|run| match run.result {
            Some(result) if result != JobResult::Unknown => StageStatus::of_result(result),
            _ => {
                let states: Vec<_> = jobs
                    .iter()
                    .filter(|j| {
                        j.stage_counter == run.stage_counter
                            && j.stage_name.eq_ignore_ascii_case(&stage.name)
                    })
                    .map(|j| (j.state, j.result))
                    .collect();
                match stage_status(&states) {
                    // Every job done but the stage not yet closed: still settling.
                    status if status.is_finished() => StageStatus::Building,
                    status => status,
                }
            }
        });
        let status = current.unwrap_or(match previous {
            None | Some(StageStatus::Passed) if stage.approval.manual => StageStatus::Awaiting,
            _ => StageStatus::NotRun,
        });
        let can_run = may_run_stage(stage, previous, current).is_ok()
            && (current.is_some() || stage.approval.manual || previous.is_none());
        out.push(StageSummary {
            name: stage.name.clone(),
            counter: latest.map(|r| r.stage_counter),
            status,
            manual: stage.approval.manual,
            can_run,
            triggered_by: latest.map(|r| r.triggered_by.clone()),
            scheduled_at: latest.map(|r| r.scheduled_at),
            completed_at: latest.and_then(|r| r.completed_at),
        });
    }
    out
}

/// Whether any stage of an instance still runs.
pub fn is_running(stages: &[StageSummary]) -> bool {
    stages
        .iter()
        .any(|s| matches!(s.status, StageStatus::Building | StageStatus::Failing))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::pipeline_config::{Approval, LockBehavior};

    fn done(result: JobResult) -> (JobState, JobResult) {
        (JobState::Completed, result)
    }

    #[test]
    fn a_stage_is_building_until_every_job_is_done_and_failing_once_one_failed() {
        let running = (JobState::Building, JobResult::Unknown);
        assert_eq!(
            stage_status(&[running, done(JobResult::Passed)]),
            StageStatus::Building
        );
        assert_eq!(
            stage_status(&[running, done(JobResult::Failed)]),
            StageStatus::Failing
        );
        assert_eq!(
            stage_status(&[done(JobResult::Passed), done(JobResult::Passed)]),
            StageStatus::Passed
        );
        assert_eq!(
            stage_status(&[done(JobResult::Failed), done(JobResult::Passed)]),
            StageStatus::Failed
        );
        assert_eq!(
            stage_status(&[done(JobResult::Failed), done(JobResult::Cancelled)]),
            StageStatus::Cancelled
        );
    }

    fn stage(name: &str, manual: bool) -> StageConfig {
        StageConfig {
            name: name.into(),
            fetch_materials: true,
            keep_artifacts: false,
            clean_workspace: false,
            approval: Approval {
                manual,
                ..Approval::default()
            },
            environment_variables: BTreeMap::new(),
            jobs: vec![job("j", RunInstances::One)],
        }
    }

    fn job(name: &str, run_instances: RunInstances) -> JobConfig {
        JobConfig {
            name: name.into(),
            resources: vec![],
            timeout: None,
            run_instances,
            environment_variables: BTreeMap::from([("SCOPE".into(), "job".into())]),
            tabs: BTreeMap::new(),
            artifacts: vec![],
            tasks: vec![],
        }
    }

    fn plan(stages: Vec<StageConfig>) -> PipelineConfig {
        PipelineConfig {
            name: "shop".into(),
            group: "g".into(),
            label_template: "${COUNT}".into(),
            lock_behavior: LockBehavior::None,
            display_order: -1,
            timer: None,
            tracking_tool: None,
            environment_variables: BTreeMap::from([
                ("SCOPE".into(), "pipeline".into()),
                ("P".into(), "pipeline".into()),
            ]),
            parameters: BTreeMap::new(),
            materials: vec![],
            stages,
        }
    }

    #[test]
    fn a_passed_stage_starts_the_next_or_waits_for_a_manual_one_and_a_failure_ends_it() {
        let p = plan(vec![
            stage("build", false),
            stage("test", false),
            stage("deploy", true),
        ]);
        assert_eq!(
            after_stage(&p, "build", StageStatus::Passed),
            AfterStage::Start("test".into())
        );
        assert_eq!(
            after_stage(&p, "TEST", StageStatus::Passed),
            AfterStage::Await("deploy".into())
        );
        assert_eq!(
            after_stage(&p, "deploy", StageStatus::Passed),
            AfterStage::Finished { passed: true }
        );
        assert_eq!(
            after_stage(&p, "build", StageStatus::Failed),
            AfterStage::Finished { passed: false }
        );
    }

    #[test]
    fn a_manual_stage_after_a_failure_runs_unless_it_insists_on_success() {
        let mut deploy = stage("deploy", true);
        assert!(may_run_stage(&deploy, Some(StageStatus::Failed), None).is_ok());
        deploy.approval.allow_only_on_success = true;
        let refused = may_run_stage(&deploy, Some(StageStatus::Failed), None).unwrap_err();
        assert!(refused.contains("passed"), "{refused}");
        assert!(may_run_stage(&deploy, Some(StageStatus::Passed), None).is_ok());
        let auto = stage("test", false);
        assert!(may_run_stage(&auto, Some(StageStatus::Failed), None).is_err());
        assert!(may_run_stage(&auto, Some(StageStatus::Building), None).is_err());
        // Re-running a stage that ran: allowed once it finished, whatever came before.
        assert!(may_run_stage(&auto, Some(StageStatus::Failed), Some(StageStatus::Failed)).is_ok());
        assert!(may_run_stage(&auto, None, Some(StageStatus::Building)).is_err());
    }

    #[test]
    fn labels_substitute_the_counter_and_materials_and_cut_them() {
        let materials = BTreeMap::from([("Upstream".to_string(), "1.2.3-45".to_string())]);
        assert_eq!(render_label("${COUNT}", 7, &materials), "7");
        assert_eq!(
            render_label("v${upstream}-${COUNT}", 7, &materials),
            "v1.2.3-45-7"
        );
        assert_eq!(render_label("${upstream[:3]}", 7, &materials), "1.2");
        assert_eq!(render_label("x${nothing}y", 7, &materials), "xy");
        assert_eq!(render_label("${COUNT", 7, &materials), "${COUNT");
    }

    #[test]
    fn jobs_take_variables_by_scope_and_run_instances_become_numbered_copies() {
        let mut s = stage("build", false);
        s.environment_variables
            .insert("SCOPE".into(), "stage".into());
        s.environment_variables.insert("S".into(), "stage".into());
        s.jobs = vec![
            job("unit", RunInstances::Count(2)),
            job("lint", RunInstances::One),
        ];
        let p = plan(vec![s.clone()]);
        let facts = InstanceFacts {
            label: "7".into(),
            trigger_user: "alice".into(),
            environment: Some("prod".into()),
            environment_variables: BTreeMap::from([
                ("E".into(), "env".into()),
                ("P".into(), "env".into()),
            ]),
            trigger_variables: BTreeMap::from([("P".into(), "trigger".into())]),
            material_variables: BTreeMap::from([("GO_REVISION".into(), "abc".into())]),
        };
        let jobs = plan_jobs(&p, &s, &facts, |_| vec![]);
        let names: Vec<_> = jobs.iter().map(|j| j.name.as_str()).collect();
        assert_eq!(names, ["unit-runInstance-1", "unit-runInstance-2", "lint"]);
        let vars = &jobs[1].environment_variables;
        assert_eq!(vars["SCOPE"], "job");
        assert_eq!(vars["S"], "stage");
        assert_eq!(vars["P"], "trigger");
        assert_eq!(vars["E"], "env");
        assert_eq!(vars["GO_JOB_RUN_INDEX"], "2");
        assert_eq!(vars["GO_JOB_RUN_COUNT"], "2");
        assert_eq!(vars["GO_PIPELINE_LABEL"], "7");
        assert_eq!(vars["GO_TRIGGER_USER"], "alice");
        assert_eq!(vars["GO_ENVIRONMENT_NAME"], "prod");
        assert_eq!(vars["GO_REVISION"], "abc");
        assert!(
            !jobs[2]
                .environment_variables
                .contains_key("GO_JOB_RUN_INDEX")
        );
        assert_eq!(configured_job_name("unit-runInstance-2"), "unit");
        assert_eq!(configured_job_name("deploy-runOnAll-10"), "deploy");
        assert_eq!(
            configured_job_name("odd-runInstance-x"),
            "odd-runInstance-x"
        );
    }

    #[test]
    fn run_on_all_pins_one_copy_to_each_matching_agent_or_waits_with_one() {
        let mut s = stage("deploy", false);
        s.jobs = vec![job("install", RunInstances::All)];
        let p = plan(vec![s.clone()]);
        let (a, b) = (Uuid::from_u128(1), Uuid::from_u128(2));
        let jobs = plan_jobs(&p, &s, &InstanceFacts::default(), |_| vec![a, b]);
        let planned: Vec<_> = jobs.iter().map(|j| (j.name.as_str(), j.agent)).collect();
        assert_eq!(
            planned,
            [
                ("install-runOnAll-1", Some(a)),
                ("install-runOnAll-2", Some(b))
            ]
        );
        assert_eq!(jobs[1].environment_variables["GO_JOB_RUN_COUNT"], "2");
        let none = plan_jobs(&p, &s, &InstanceFacts::default(), |_| vec![]);
        let planned: Vec<_> = none.iter().map(|j| (j.name.as_str(), j.agent)).collect();
        assert_eq!(planned, [("install-runOnAll-1", None)]);
    }

    fn ran(stage: &str, counter: i64, result: Option<JobResult>) -> StageRun {
        StageRun {
            stage_name: stage.into(),
            stage_counter: counter,
            triggered_by: "alice".into(),
            result,
            cancelled_by: None,
            scheduled_at: 1,
            completed_at: None,
        }
    }

    #[test]
    fn stages_of_an_instance_show_running_awaiting_and_not_run() {
        let p = plan(vec![
            stage("build", false),
            stage("test", false),
            stage("deploy", true),
        ]);
        let fact = |stage: &str, state, result| JobFact {
            stage_name: stage.into(),
            stage_counter: 1,
            job_name: "j".into(),
            state,
            result,
        };
        let statuses = |runs: &[StageRun], jobs: &[JobFact]| {
            summarize_stages(&p, runs, jobs)
                .into_iter()
                .map(|s| s.status)
                .collect::<Vec<_>>()
        };
        use StageStatus::*;
        assert_eq!(
            statuses(
                &[ran("build", 1, None)],
                &[fact("build", JobState::Building, JobResult::Unknown)]
            ),
            [Building, NotRun, NotRun]
        );
        let passed = [
            ran("build", 1, Some(JobResult::Passed)),
            ran("test", 1, Some(JobResult::Passed)),
        ];
        assert_eq!(statuses(&passed, &[]), [Passed, Passed, Awaiting]);
        let summary = summarize_stages(&p, &passed, &[]);
        assert!(summary[2].can_run, "an awaiting stage may be approved");
        let failed = [ran("build", 1, Some(JobResult::Failed))];
        let summary = summarize_stages(&p, &failed, &[]);
        assert_eq!(
            summary.iter().map(|s| s.status).collect::<Vec<_>>(),
            [Failed, NotRun, NotRun]
        );
        assert!(summary[0].can_run, "a failed stage may be re-run");
        assert!(
            !summary[1].can_run,
            "an automatic stage after a failure may not"
        );
        // The latest run of a stage counts.
        let rerun = [
            ran("build", 1, Some(JobResult::Failed)),
            ran("build", 2, None),
        ];
        assert_eq!(
            statuses(
                &rerun,
                &[JobFact {
                    stage_counter: 2,
                    ..fact("build", JobState::Scheduled, JobResult::Unknown)
                }]
            ),
            [Building, NotRun, NotRun]
        );
    }
}
