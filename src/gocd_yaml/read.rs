//! The node tree → a [`ConfigDocument`], following GoCD's YAML plugin and the checks its
//! server makes: the document, its pipelines and environments, and their stages and jobs
//! (materials and tasks have their own files). Every problem found is collected, so one
//! pass names all of them.

use std::collections::BTreeMap;

use crate::domain::pipeline::{LabelPiece, label_pieces};
use crate::domain::pipeline_config::{
    Approval, ConfigDocument, ConfigIssue, EnvironmentConfig, JobConfig, LockBehavior, Material,
    MaterialSource, PipelineConfig, RunInstances, StageConfig, TimerConfig, TrackingTool,
};

use super::fields::{Fields, Leftovers, Names, Reader, commented_params, shape};
use super::loader::{self, Node, Value, key_path};
use super::{materials, tasks};

/// Reads one YAML document. An empty document is an error; one with only environments is not.
pub fn parse_document(text: &str) -> Result<ConfigDocument, Vec<ConfigIssue>> {
    let Some(root) = loader::load(text)? else {
        return Err(vec![ConfigIssue {
            path: "(document)".to_string(),
            line: None,
            message: "the document is empty: give `pipelines` or `environments`".to_string(),
        }]);
    };
    let mut reader = Reader {
        commented_params: commented_params(text),
        ..Reader::default()
    };
    let document = read_document(&mut reader, &root);
    if reader.errors.is_empty() {
        let mut document = document;
        document.warnings = reader.warnings;
        Ok(document)
    } else {
        Err(reader.errors)
    }
}

const TOP_KEYS: &[&str] = &["format_version", "pipelines", "environments", "common"];

fn read_document(reader: &mut Reader, root: &Node) -> ConfigDocument {
    let mut document = ConfigDocument {
        format_version: 1,
        ..ConfigDocument::default()
    };
    let Value::Map(entries) = &root.value else {
        reader.error(
            "(document)",
            root.line,
            format!(
                "expected a map of `pipelines`, `environments` …, found {}",
                shape(root)
            ),
        );
        return document;
    };
    let mut top = Fields::new(entries, "", root.line);
    // GoCD matches this one key ignoring case.
    let version_key = entries
        .iter()
        .find(|e| e.key.eq_ignore_ascii_case("format_version"))
        .map(|e| e.key.clone());
    // An empty `format_version:` is absent, so 1.
    if let Some(key) = version_key
        && let Some(node) = top.get(&key)
    {
        let text = reader.raw_text(node, &key).unwrap_or_default();
        match text.trim().parse::<u32>() {
            Ok(version @ 1..=10) => document.format_version = version,
            _ => reader.error(
                &key,
                node.line,
                format!(
                    "format_version `{text}` is not supported: it must be an integer from 1 to 10"
                ),
            ),
        }
    }
    // Only a home for anchors, as in GoCD.
    top.get_entry("common");
    if let Some(node) = top.get("pipelines") {
        document.pipelines = read_pipelines(reader, node);
    }
    if let Some(node) = top.get("environments") {
        document.environments = read_environments(reader, node);
    }
    top.finish(reader, Leftovers::Refused, TOP_KEYS);
    document
}

fn read_pipelines(reader: &mut Reader, node: &Node) -> Vec<PipelineConfig> {
    let Some(map) = reader.map(node, "pipelines", "pipelines by name") else {
        return Vec::new();
    };
    let mut pipelines: Vec<PipelineConfig> = Vec::new();
    let mut names = Names::default();
    for entry in map.entries() {
        let path = key_path("pipelines", &entry.key);
        if !reader.unique_name(
            &mut names,
            &entry.key,
            &path,
            entry.key_line,
            "pipeline",
            "the document",
        ) {
            continue;
        }
        if let Some(pipeline) = read_pipeline(reader, &entry.key, &entry.value, &path) {
            pipelines.push(pipeline);
        }
    }
    pipelines
}

const PIPELINE_KEYS: &[&str] = &[
    "group",
    "label_template",
    "lock_behavior",
    "locking",
    "display_order",
    "timer",
    "tracking_tool",
    "environment_variables",
    "secure_variables",
    "parameters",
    "materials",
    "stages",
    "template",
];

fn read_pipeline(
    reader: &mut Reader,
    name: &str,
    node: &Node,
    path: &str,
) -> Option<PipelineConfig> {
    let mut fields = reader.map(node, path, "a pipeline")?;
    // Parameters are read as written, then substituted into every other string.
    let errors_before = reader.errors.len();
    reader.params = None;
    let parameters = reader.text_map(&mut fields, "parameters", true);
    // GoCD names parameters as it names pipelines; `#{a b}` could never be referenced.
    let parameters_path = fields.path_of("parameters");
    for parameter in parameters.keys() {
        let path = key_path(&parameters_path, parameter);
        reader.check_name(parameter, &path, fields.line_of("parameters"));
    }
    reader.params = Some(parameters.clone());

    let template = reader.opt_text(&mut fields, "template");
    if let Some(template) = &template {
        reader.error(
            &fields.path_of("template"),
            fields.line_of("template"),
            format!(
                "pipeline {name} uses server-side template {template}; ferrocd has no templates"
            ),
        );
    }
    let group = reader
        .required_text(&mut fields, "group", "the pipeline group")
        .unwrap_or_default();
    if !group.is_empty() {
        reader.check_name(&group, &fields.path_of("group"), fields.line_of("group"));
    }
    let label_template = reader
        .opt_text(&mut fields, "label_template")
        .unwrap_or_else(|| "${COUNT}".to_string());
    let lock_behavior = read_lock_behavior(reader, &mut fields);
    let display_order = reader
        .integer(&mut fields, "display_order", i64::MIN)
        .unwrap_or(-1);
    let timer = fields
        .get("timer")
        .and_then(|node| read_timer(reader, node, &key_path(path, "timer")));
    let tracking_tool = fields
        .get("tracking_tool")
        .and_then(|node| read_tracking_tool(reader, node, &key_path(path, "tracking_tool")));
    let environment_variables = reader.text_map(&mut fields, "environment_variables", true);
    reader.refuse_ciphertext(&mut fields, "secure_variables");
    let materials = match fields.get("materials") {
        Some(node) => materials::read_materials(reader, node, &key_path(path, "materials")),
        None => Vec::new(),
    };
    check_label_template(reader, &fields, name, &label_template, &materials);
    let stages = match fields.get("stages") {
        Some(node) => read_stages(reader, node, &key_path(path, "stages")),
        None => {
            if template.is_none() {
                reader.error(
                    &fields.path_of("stages"),
                    fields.line,
                    format!("pipeline {name} has no stages: give at least one"),
                );
            }
            Vec::new()
        }
    };
    if let Some(entry) = fields.get_entry("mingle") {
        reader.warn(
            &fields.path_of("mingle"),
            entry.key_line,
            "`mingle` is ignored: GoCD's plugin never read it, and format 8 removed it",
        );
    }
    fields.finish(reader, Leftovers::Warned, PIPELINE_KEYS);
    reader.params = None;
    (reader.errors.len() == errors_before).then(|| PipelineConfig {
        name: name.to_string(),
        group,
        label_template,
        lock_behavior,
        display_order,
        timer,
        tracking_tool,
        environment_variables,
        parameters,
        materials,
        stages,
    })
}

fn read_lock_behavior(reader: &mut Reader, fields: &mut Fields) -> LockBehavior {
    let from_locking = fields.get("locking").is_some().then(|| {
        if reader.boolean(fields, "locking", false) {
            LockBehavior::LockOnFailure
        } else {
            LockBehavior::None
        }
    });
    let Some(text) = reader.opt_text(fields, "lock_behavior") else {
        return from_locking.unwrap_or_default();
    };
    let behavior = match text.as_str() {
        "lockOnFailure" => LockBehavior::LockOnFailure,
        "unlockWhenFinished" => LockBehavior::UnlockWhenFinished,
        "none" => LockBehavior::None,
        _ => {
            reader.error(
                &fields.path_of("lock_behavior"),
                fields.line_of("lock_behavior"),
                format!(
                    "lock_behavior `{text}` is not one of lockOnFailure, unlockWhenFinished, none"
                ),
            );
            LockBehavior::None
        }
    };
    if from_locking.is_some_and(|locking| locking != behavior) {
        reader.warn(
            &fields.path_of("locking"),
            fields.line_of("locking"),
            "`locking` disagrees with `lock_behavior`; `lock_behavior` is used",
        );
    }
    behavior
}

fn read_timer(reader: &mut Reader, node: &Node, path: &str) -> Option<TimerConfig> {
    let mut fields = reader.map(node, path, "a timer")?;
    let spec = reader.required_text(
        &mut fields,
        "spec",
        "a Quartz cron spec, e.g. `0 15 10 * * ? *`",
    );
    let only_on_changes = reader.boolean(&mut fields, "only_on_changes", false);
    let spec_line = fields.line_of("spec");
    fields.finish(reader, Leftovers::Warned, &["spec", "only_on_changes"]);
    let spec = spec?;
    if let Err(why) = crate::domain::timer::TimerSpec::parse(&spec) {
        reader.error(&key_path(path, "spec"), spec_line, why);
        return None;
    }
    Some(TimerConfig {
        spec,
        only_on_changes,
    })
}

fn read_tracking_tool(reader: &mut Reader, node: &Node, path: &str) -> Option<TrackingTool> {
    let mut fields = reader.map(node, path, "a tracking tool")?;
    let link = reader.required_text(&mut fields, "link", "a URL with `${ID}` in it");
    let regex = reader.required_text(
        &mut fields,
        "regex",
        "the pattern that finds the id in a commit message",
    );
    let link_line = fields.line_of("link");
    fields.finish(reader, Leftovers::Warned, &["link", "regex"]);
    let (link, regex) = (link?, regex?);
    if !link.contains("${ID}") {
        reader.error(
            &key_path(path, "link"),
            link_line,
            format!("tracking tool link `{link}` must contain `${{ID}}`"),
        );
        return None;
    }
    Some(TrackingTool { link, regex })
}

/// `stages:`: a list of one-key maps; one level of nested lists (an alias of a stage list
/// among stages) is flattened.
fn read_stages(reader: &mut Reader, node: &Node, path: &str) -> Vec<StageConfig> {
    let Value::List(items) = &node.value else {
        reader.error(
            path,
            node.line,
            format!("`stages` must be a list of stages, found {}", shape(node)),
        );
        return Vec::new();
    };
    let mut stages: Vec<StageConfig> = Vec::new();
    let mut names = Names::default();
    let mut flat: Vec<(String, &Node)> = Vec::new();
    for (i, item) in items.iter().enumerate() {
        match &item.value {
            Value::List(inner) => flat.extend(
                inner
                    .iter()
                    .enumerate()
                    .map(|(j, n)| (format!("{path}[{i}][{j}]"), n)),
            ),
            _ => flat.push((format!("{path}[{i}]"), item)),
        }
    }
    if flat.is_empty() {
        reader.error(path, node.line, "a pipeline needs at least one stage");
    }
    for (item_path, item) in flat {
        let Some((name, body, stage_path)) = single_key(reader, item, &item_path, "a stage") else {
            continue;
        };
        if !reader.unique_name(
            &mut names,
            &name,
            &stage_path,
            item.line,
            "stage",
            "the pipeline",
        ) {
            continue;
        }
        if let Some(stage) = read_stage(reader, &name, body, &stage_path) {
            stages.push(stage);
        }
    }
    stages
}

/// A one-key map item (a stage, a task, an artifact): its key, its value and its path. GoCD
/// reads only the first key; a second one would be lost, so it is an error.
pub fn single_key<'n>(
    reader: &mut Reader,
    item: &'n Node,
    path: &str,
    what: &str,
) -> Option<(String, &'n Node, String)> {
    let Value::Map(entries) = &item.value else {
        reader.error(
            path,
            item.line,
            format!("expected {what}, a map with one key, found {}", shape(item)),
        );
        return None;
    };
    match entries.as_slice() {
        [only] => Some((only.key.clone(), &only.value, key_path(path, &only.key))),
        [] => {
            reader.error(
                path,
                item.line,
                format!("expected {what}, a map with one key, found an empty map"),
            );
            None
        }
        [first, rest @ ..] => {
            let extra: Vec<String> = rest.iter().map(|e| format!("`{}`", e.key)).collect();
            reader.error(
                &key_path(path, &rest[0].key),
                rest[0].key_line,
                format!(
                    "{what} is a map with one key (`{}`); {} would be lost (indent it under `{}`?)",
                    first.key,
                    extra.join(", "),
                    first.key
                ),
            );
            None
        }
    }
}

const STAGE_KEYS: &[&str] = &[
    "fetch_materials",
    "keep_artifacts",
    "clean_workspace",
    "approval",
    "environment_variables",
    "secure_variables",
    "jobs",
];

fn read_stage(reader: &mut Reader, name: &str, node: &Node, path: &str) -> Option<StageConfig> {
    let mut fields = reader.map(node, path, "a stage")?;
    let fetch_materials = reader.boolean(&mut fields, "fetch_materials", true);
    let keep_artifacts = reader.boolean(&mut fields, "keep_artifacts", false);
    let clean_workspace = reader.boolean(&mut fields, "clean_workspace", false);
    let approval = match fields.get("approval") {
        Some(node) => read_approval(reader, node, &fields.path_of("approval")),
        None => Approval::default(),
    };
    let environment_variables = reader.text_map(&mut fields, "environment_variables", true);
    reader.refuse_ciphertext(&mut fields, "secure_variables");
    let jobs = if let Some(jobs) = fields.get("jobs") {
        let jobs = read_jobs(reader, jobs, &fields.path_of("jobs"));
        fields.finish(reader, Leftovers::Warned, STAGE_KEYS);
        jobs
    } else if fields.has("tasks") {
        // The single-job shorthand: the job's keys sit on the stage; the job is named after it.
        let job = read_job_fields(reader, name, &mut fields, Some(&environment_variables));
        let known: Vec<&str> = STAGE_KEYS.iter().chain(JOB_KEYS).copied().collect();
        fields.finish(reader, Leftovers::Warned, &known);
        job.into_iter().collect()
    } else {
        reader.error(
            path,
            node.line,
            format!("stage {name} has neither `jobs` nor `tasks`: give `jobs`, or `tasks` if the stage is one job"),
        );
        fields.finish(reader, Leftovers::Warned, STAGE_KEYS);
        return None;
    };
    Some(StageConfig {
        name: name.to_string(),
        fetch_materials,
        keep_artifacts,
        clean_workspace,
        approval,
        environment_variables,
        jobs,
    })
}

fn read_approval(reader: &mut Reader, node: &Node, path: &str) -> Approval {
    let kind = |reader: &mut Reader, text: &str, path: &str, line: u32| -> bool {
        match text {
            "manual" => true,
            "success" | "auto" => false,
            _ => {
                reader.error(
                    path,
                    line,
                    format!("approval `{text}` is not one of manual, success, auto"),
                );
                false
            }
        }
    };
    if let Value::Scalar { .. } = node.value {
        let text = reader.text(node, path).unwrap_or_default();
        return Approval {
            manual: kind(reader, &text, path, node.line),
            ..Approval::default()
        };
    }
    let Some(mut fields) = reader.map(node, path, "an approval") else {
        return Approval::default();
    };
    let manual = match reader.required_text(&mut fields, "type", "manual or success") {
        Some(text) => kind(
            reader,
            &text,
            &fields.path_of("type"),
            fields.line_of("type"),
        ),
        None => false,
    };
    let allow_only_on_success = reader.boolean(&mut fields, "allow_only_on_success", false);
    let users = reader.text_list(&mut fields, "users");
    let roles = reader.text_list(&mut fields, "roles");
    if !roles.is_empty() {
        reader.warn(
            &fields.path_of("roles"),
            fields.line_of("roles"),
            format!("roles ({}) are kept, but ferrocd has no roles yet: they do not limit who may approve", roles.join(", ")),
        );
    }
    fields.finish(
        reader,
        Leftovers::Warned,
        &["type", "allow_only_on_success", "users", "roles"],
    );
    Approval {
        manual,
        allow_only_on_success,
        users,
        roles,
    }
}

fn read_jobs(reader: &mut Reader, node: &Node, path: &str) -> Vec<JobConfig> {
    if let Value::List(_) = node.value {
        reader.error(path, node.line, "`jobs` must be a map of job name → job, not a list (drop the `-` before each job name)");
        return Vec::new();
    }
    let Some(map) = reader.map(node, path, "jobs by name") else {
        return Vec::new();
    };
    let mut jobs: Vec<JobConfig> = Vec::new();
    let mut names = Names::default();
    if map.entries().is_empty() {
        reader.error(path, node.line, "a stage needs at least one job");
    }
    for entry in map.entries() {
        let job_path = key_path(path, &entry.key);
        if !reader.unique_name(
            &mut names,
            &entry.key,
            &job_path,
            entry.key_line,
            "job",
            "the stage",
        ) {
            continue;
        }
        let Some(mut fields) = reader.map(&entry.value, &job_path, "a job") else {
            continue;
        };
        let job = read_job_fields(reader, &entry.key, &mut fields, None);
        fields.finish(reader, Leftovers::Warned, JOB_KEYS);
        jobs.extend(job);
    }
    jobs
}

const JOB_KEYS: &[&str] = &[
    "tasks",
    "resources",
    "timeout",
    "run_instances",
    "environment_variables",
    "secure_variables",
    "tabs",
    "artifacts",
    "elastic_profile_id",
];

/// A job's keys, from its own map or (the single-job shorthand) its stage's, whose variables
/// `stage_variables` are then the job's too, as GoCD reads the one map for both.
fn read_job_fields(
    reader: &mut Reader,
    name: &str,
    fields: &mut Fields,
    stage_variables: Option<&BTreeMap<String, String>>,
) -> Option<JobConfig> {
    if let Some(node) = fields.get("elastic_profile_id") {
        let profile = reader
            .text(node, &fields.path_of("elastic_profile_id"))
            .unwrap_or_default();
        reader.error(
            &fields.path_of("elastic_profile_id"),
            node.line,
            format!("job {name} runs on elastic agent profile `{profile}`; ferrocd has no elastic agents (use `resources`)"),
        );
    }
    if let Some(entry) = fields.get_entry("properties") {
        reader.warn(
            &fields.path_of("properties"),
            entry.key_line,
            "job `properties` are ignored: GoCD removed them in format 7",
        );
    }
    let resources = reader.text_list(fields, "resources");
    let timeout = reader.integer(fields, "timeout", 0).map(|t| t as u64);
    let run_instances = read_run_instances(reader, fields);
    let environment_variables = match stage_variables {
        Some(variables) => variables.clone(),
        None => {
            let variables = reader.text_map(fields, "environment_variables", true);
            reader.refuse_ciphertext(fields, "secure_variables");
            variables
        }
    };
    let tabs = reader.text_map(fields, "tabs", true);
    let artifacts = match fields.get("artifacts") {
        Some(node) => tasks::read_artifacts(reader, node, &fields.path_of("artifacts")),
        None => Vec::new(),
    };
    let errors_before = reader.errors.len();
    let tasks = match fields.get("tasks") {
        Some(node) => tasks::read_tasks(reader, node, &fields.path_of("tasks")),
        None => Vec::new(),
    };
    if reader.errors.len() > errors_before {
        return None;
    }
    if tasks.is_empty() {
        reader.error(
            &fields.path_of("tasks"),
            fields.line_of("tasks"),
            format!("job {name} has no tasks: give at least one"),
        );
        return None;
    }
    Some(JobConfig {
        name: name.to_string(),
        resources,
        timeout,
        run_instances,
        environment_variables,
        tabs,
        artifacts,
        tasks,
    })
}

fn read_run_instances(reader: &mut Reader, fields: &mut Fields) -> RunInstances {
    let Some(node) = fields.get("run_instances") else {
        return RunInstances::One;
    };
    let path = fields.path_of("run_instances");
    let text = reader.text(node, &path).unwrap_or_default();
    if text == "all" {
        return RunInstances::All;
    }
    match text.trim().parse::<u32>() {
        Ok(count) if count >= 1 => RunInstances::Count(count),
        _ => {
            reader.error(
                &path,
                node.line,
                format!("run_instances `{text}` is neither an integer of at least 1 nor `all`"),
            );
            RunInstances::One
        }
    }
}

fn read_environments(reader: &mut Reader, node: &Node) -> Vec<EnvironmentConfig> {
    let Some(map) = reader.map(node, "environments", "environments by name") else {
        return Vec::new();
    };
    let mut environments: Vec<EnvironmentConfig> = Vec::new();
    let mut names = Names::default();
    for entry in map.entries() {
        let path = key_path("environments", &entry.key);
        if !reader.unique_name(
            &mut names,
            &entry.key,
            &path,
            entry.key_line,
            "environment",
            "the document",
        ) {
            continue;
        }
        let Some(mut fields) = reader.map(&entry.value, &path, "an environment") else {
            continue;
        };
        let environment_variables = reader.text_map(&mut fields, "environment_variables", true);
        reader.refuse_ciphertext(&mut fields, "secure_variables");
        let pipelines = reader.text_list(&mut fields, "pipelines");
        let mut seen: BTreeMap<String, ()> = BTreeMap::new();
        for pipeline in &pipelines {
            if seen.insert(pipeline.to_ascii_lowercase(), ()).is_some() {
                reader.error(
                    &fields.path_of("pipelines"),
                    fields.line_of("pipelines"),
                    format!("pipeline `{pipeline}` is listed twice"),
                );
            }
        }
        let agents = reader.text_list(&mut fields, "agents");
        fields.finish(
            reader,
            Leftovers::Warned,
            &[
                "environment_variables",
                "secure_variables",
                "pipelines",
                "agents",
            ],
        );
        environments.push(EnvironmentConfig {
            name: entry.key.clone(),
            environment_variables,
            pipelines,
            agents,
        });
    }
    environments
}

/// The values a label template names, as GoCD checks them: `${COUNT}`, or a material of the
/// pipeline (else an error, as GoCD's). A non-git SCM material's revision is empty (ferrocd
/// polls git only), and `${env:NAME}` is not read yet: warnings.
fn check_label_template(
    reader: &mut Reader,
    fields: &Fields,
    pipeline: &str,
    template: &str,
    materials: &[Material],
) {
    let path = fields.path_of("label_template");
    let line = fields.line_of("label_template");
    for piece in label_pieces(template) {
        let LabelPiece::Value { name, .. } = piece else {
            continue;
        };
        if name.eq_ignore_ascii_case("COUNT") {
            continue;
        }
        if name.starts_with("env:") {
            reader.warn(
                &path,
                line,
                format!(
                    "${{{name}}}: environment variables in labels are not read yet: it is empty"
                ),
            );
            continue;
        }
        match materials.iter().find(|m| m.name.eq_ignore_ascii_case(name)) {
            None => reader.error(
                &path,
                line,
                format!(
                    "${{{name}}}: pipeline {pipeline} has no material named {name} (its materials: {})",
                    if materials.is_empty() {
                        "none".to_string()
                    } else {
                        materials.iter().map(|m| m.name.as_str()).collect::<Vec<_>>().join(", ")
                    }
                ),
            ),
            Some(m)
                if !matches!(
                    m.source,
                    MaterialSource::Dependency { .. } | MaterialSource::Git(_)
                ) =>
            {
                reader.warn(
                &path,
                line,
                    format!(
                        "${{{name}}}: material {name}'s revision is empty: ferrocd polls git materials only"
                    ),
                )
            }
            Some(_) => {}
        }
    }
}
