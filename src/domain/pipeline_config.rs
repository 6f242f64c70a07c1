//! Pipeline configuration as ferrocd understood it from a GoCD YAML document: the model the
//! parser (`crate::gocd_yaml`) builds, the config sources hold, and a pipeline instance
//! snapshots as its plan (so a reload never changes a running instance).
//!
//! Everything here is already resolved: `#{param}`s are substituted, scalars are coerced to
//! their field's type, nested task lists are flattened, the single-job stage shorthand is a
//! stage with one job. Names keep the case they were written in; comparisons between them
//! are case-insensitive, as GoCD's are. Its serde shape is what `GET
//! /api/pipelines/{name}/config` shows.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One YAML document: its pipelines and environments, and what was accepted but not acted
/// on (unknown keys below the top level, keys that a later issue acts on).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ConfigDocument {
    /// 1 when absent; 1–10.
    pub format_version: u32,
    pub pipelines: Vec<PipelineConfig>,
    pub environments: Vec<EnvironmentConfig>,
    pub warnings: Vec<ConfigIssue>,
}

/// An error or a warning about a document: where (its key path, e.g.
/// `pipelines.shop.stages[2].deploy.jobs.prod.tasks[0].exec.args`, and the line where the
/// YAML gives one) and what.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigIssue {
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line: Option<u32>,
    pub message: String,
}

impl std::fmt::Display for ConfigIssue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.line {
            Some(line) => write!(f, "{} (line {line}): {}", self.path, self.message),
            None => write!(f, "{}: {}", self.path, self.message),
        }
    }
}

/// A config problem with the source it belongs to (a file's path, or `api:NAME`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourcedIssue {
    pub file: String,
    #[serde(flatten)]
    pub issue: ConfigIssue,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PipelineConfig {
    pub name: String,
    pub group: String,
    /// `${COUNT}` when absent.
    pub label_template: String,
    pub lock_behavior: LockBehavior,
    /// -1 when absent; lowest first within the group.
    pub display_order: i64,
    pub timer: Option<TimerConfig>,
    pub tracking_tool: Option<TrackingTool>,
    pub environment_variables: BTreeMap<String, String>,
    /// As written; already substituted everywhere else.
    pub parameters: BTreeMap<String, String>,
    pub materials: Vec<Material>,
    pub stages: Vec<StageConfig>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum LockBehavior {
    /// Only one instance at a time; a failed one keeps the pipeline locked until unlocked.
    LockOnFailure,
    /// Only one instance at a time; it unlocks when the instance ends, however.
    UnlockWhenFinished,
    #[default]
    None,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimerConfig {
    pub spec: String,
    pub only_on_changes: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrackingTool {
    pub link: String,
    pub regex: String,
}

/// A material: its name (the key under `materials`, unique in the pipeline) and what it is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Material {
    pub name: String,
    #[serde(flatten)]
    pub source: MaterialSource,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum MaterialSource {
    Git(GitMaterial),
    /// `pipeline:` — triggered when the upstream stage passes.
    Dependency {
        pipeline: String,
        stage: String,
        ignore_for_scheduling: bool,
    },
    /// svn, hg, p4, tfs: parsed and shown; polled by a later issue.
    Scm {
        scm: ScmKind,
        /// The URL (svn, hg, tfs) or port (p4).
        url: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        destination: Option<String>,
        /// The other keys, as text.
        attributes: BTreeMap<String, String>,
    },
    /// `type: configrepo`: the config repository's own material (the materials issue).
    ConfigRepo {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        destination: Option<String>,
        ignore: Vec<String>,
        includes: Vec<String>,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GitMaterial {
    pub url: String,
    /// `master` when absent, as GoCD.
    pub branch: String,
    pub shallow_clone: bool,
    pub auto_update: bool,
    pub destination: Option<String>,
    /// Changes only to files matching these do not trigger (`ignore`, or `blacklist`).
    pub ignore: Vec<String>,
    /// Only changes to files matching these trigger (`includes`, or `whitelist`).
    pub includes: Vec<String>,
    pub username: Option<String>,
    /// Plain text from the file; never shown (the API and pages print `****`).
    #[serde(default, skip_serializing)]
    pub password: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScmKind {
    Svn,
    Hg,
    P4,
    Tfs,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageConfig {
    pub name: String,
    /// true when absent.
    pub fetch_materials: bool,
    pub keep_artifacts: bool,
    pub clean_workspace: bool,
    pub approval: Approval,
    pub environment_variables: BTreeMap<String, String>,
    pub jobs: Vec<JobConfig>,
}

/// When a stage starts: on its own when the one before passed (`success`, the default), or
/// once someone approves it (`manual`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Approval {
    pub manual: bool,
    /// A manual stage after a failed one may be approved unless this is set.
    pub allow_only_on_success: bool,
    /// Who may approve (empty: anyone who may trigger).
    pub users: Vec<String>,
    /// Kept and warned about: ferrocd has no roles yet.
    pub roles: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobConfig {
    pub name: String,
    pub resources: Vec<String>,
    /// Minutes of console silence before the job is cancelled; `Some(0)` never; `None`: the
    /// server's `--default-job-timeout`.
    pub timeout: Option<u64>,
    pub run_instances: RunInstances,
    pub environment_variables: BTreeMap<String, String>,
    /// Tab name → artifact path.
    pub tabs: BTreeMap<String, String>,
    pub artifacts: Vec<ArtifactConfig>,
    pub tasks: Vec<TaskConfig>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunInstances {
    #[default]
    One,
    /// N copies, `JOB-runInstance-1` … `JOB-runInstance-N`.
    Count(u32),
    /// One copy per enabled agent that matches, `JOB-runOnAll-1` ….
    All,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArtifactConfig {
    pub kind: ArtifactKind,
    pub source: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ArtifactKind {
    Build,
    Test,
}

/// When a task runs, given how the tasks before it went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunIf {
    /// Only while every task before it passed.
    #[default]
    Passed,
    /// Only once a task before it failed.
    Failed,
    /// Always.
    Any,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskConfig {
    #[serde(flatten)]
    pub kind: TaskKind,
    pub run_if: RunIf,
    /// Runs if the job is cancelled while this task runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_cancel: Option<Box<TaskConfig>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum TaskKind {
    /// Runs `command` directly (no shell) with `arguments`, each one argv element.
    Exec {
        command: String,
        arguments: Vec<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        working_directory: Option<String>,
    },
    /// GoCD's script-executor: the text, written to a file and run with `bash`.
    Script { script: String },
    /// Fetches an artifact (the artifacts issue runs it).
    Fetch {
        /// This pipeline when absent; an ancestor path `a/b` allowed.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pipeline: Option<String>,
        stage: String,
        job: String,
        source: String,
        is_file: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        destination: Option<String>,
    },
    /// A task plugin's task: accepted, fails at start (ferrocd runs no task plugins).
    Plugin {
        id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        version: Option<String>,
        options: BTreeMap<String, String>,
    },
    /// `ant`, `nant`, `rake`: accepted, fail at start until an issue builds them.
    Builder {
        tool: BuilderTool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        build_file: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        target: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        working_directory: Option<String>,
    },
}

impl TaskKind {
    /// The YAML key that names the type (`exec`, `script`, `fetch`, `plugin`, `ant` …).
    pub fn type_name(&self) -> &'static str {
        match self {
            TaskKind::Exec { .. } => "exec",
            TaskKind::Script { .. } => "script",
            TaskKind::Fetch { .. } => "fetch",
            TaskKind::Plugin { .. } => "plugin",
            TaskKind::Builder { tool, .. } => tool.as_str(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BuilderTool {
    Ant,
    Nant,
    Rake,
}

impl BuilderTool {
    pub fn as_str(self) -> &'static str {
        match self {
            BuilderTool::Ant => "ant",
            BuilderTool::Nant => "nant",
            BuilderTool::Rake => "rake",
        }
    }
}

/// A top-level `environments` entry: pipelines and agents grouped, with variables for the
/// pipelines' jobs (the lowest precedence).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct EnvironmentConfig {
    pub name: String,
    pub environment_variables: BTreeMap<String, String>,
    pub pipelines: Vec<String>,
    /// Agent uuids.
    pub agents: Vec<String>,
}

impl PipelineConfig {
    pub fn stage(&self, name: &str) -> Option<&StageConfig> {
        self.stages
            .iter()
            .find(|s| s.name.eq_ignore_ascii_case(name))
    }

    /// The upstream pipelines and stages this one's dependency materials name.
    pub fn dependencies(&self) -> impl Iterator<Item = (&Material, &str, &str, bool)> {
        self.materials.iter().filter_map(|m| match &m.source {
            MaterialSource::Dependency {
                pipeline,
                stage,
                ignore_for_scheduling,
            } => Some((m, pipeline.as_str(), stage.as_str(), *ignore_for_scheduling)),
            _ => None,
        })
    }
}
