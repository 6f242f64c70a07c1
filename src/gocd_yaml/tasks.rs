//! A job's `tasks:` and `artifacts:`. Tasks are one-key maps whose key is the type; nested
//! lists (an alias of a task list among tasks) are flattened at any depth. Unknown keys in a
//! task are errors: GoCD drops them, and `args:` lost on an exec runs the command bare.

use crate::domain::pipeline_config::{
    ArtifactConfig, ArtifactKind, BuilderTool, RunIf, TaskConfig, TaskKind,
};

use super::fields::{Fields, Leftovers, Reader, shape};
use super::loader::{Node, Value};
use super::read::single_key;

pub fn read_tasks(reader: &mut Reader, node: &Node, path: &str) -> Vec<TaskConfig> {
    let Value::List(_) = node.value else {
        reader.error(
            path,
            node.line,
            format!("`tasks` must be a list of tasks, found {}", shape(node)),
        );
        return Vec::new();
    };
    let mut flat = Vec::new();
    flatten(node, path.to_string(), &mut flat);
    flat.into_iter()
        .filter_map(|(item_path, item)| read_task(reader, item, &item_path))
        .collect()
}

fn flatten<'n>(node: &'n Node, path: String, out: &mut Vec<(String, &'n Node)>) {
    match &node.value {
        Value::List(items) => {
            for (i, item) in items.iter().enumerate() {
                flatten(item, format!("{path}[{i}]"), out);
            }
        }
        _ => out.push((path, node)),
    }
}

const TASK_TYPES: &str = "exec, script, fetch, plugin, ant, nant, rake";

fn read_task(reader: &mut Reader, item: &Node, path: &str) -> Option<TaskConfig> {
    let (kind, body, task_path) = single_key(reader, item, path, "a task")?;
    if kind == "script" {
        // A plain string: it cannot carry run_if or on_cancel.
        let script = match &body.value {
            Value::Scalar { .. } if !body.is_null() => reader.text(body, &task_path)?,
            _ => {
                reader.error(
                    &task_path,
                    body.line,
                    format!(
                        "`script` takes the script's text, found {}",
                        if body.is_null() {
                            "nothing"
                        } else {
                            shape(body)
                        }
                    ),
                );
                return None;
            }
        };
        return Some(TaskConfig {
            kind: TaskKind::Script { script },
            run_if: RunIf::Passed,
            on_cancel: None,
        });
    }
    let mut fields = reader.map(body, &task_path, "the task's settings")?;
    let run_if = read_run_if(reader, &mut fields);
    let on_cancel = match fields.get("on_cancel") {
        Some(node) => {
            let cancel_path = fields.path_of("on_cancel");
            if let Value::List(_) = node.value {
                reader.error(
                    &cancel_path,
                    node.line,
                    "`on_cancel` takes one task, not a list",
                );
                None
            } else {
                read_task(reader, node, &cancel_path).map(Box::new)
            }
        }
        None => None,
    };
    let (task, known): (Option<TaskKind>, &[&str]) = match kind.as_str() {
        "exec" => (
            read_exec(reader, &mut fields),
            &[
                "command",
                "arguments",
                "working_directory",
                "run_if",
                "on_cancel",
            ],
        ),
        "fetch" => (
            read_fetch(reader, &mut fields),
            &[
                "artifact_origin",
                "pipeline",
                "stage",
                "job",
                "source",
                "is_file",
                "destination",
                "run_if",
                "on_cancel",
            ],
        ),
        "plugin" => (
            read_plugin(reader, &mut fields),
            &[
                "configuration",
                "options",
                "secure_options",
                "run_if",
                "on_cancel",
            ],
        ),
        "ant" | "nant" | "rake" => {
            let tool = match kind.as_str() {
                "ant" => BuilderTool::Ant,
                "nant" => BuilderTool::Nant,
                _ => BuilderTool::Rake,
            };
            (
                read_builder(reader, &mut fields, tool),
                &[
                    "build_file",
                    "target",
                    "working_directory",
                    "nant_path",
                    "run_if",
                    "on_cancel",
                ],
            )
        }
        other => {
            reader.error(
                &task_path,
                item.line,
                format!("unknown task type `{other}`: a task is one of {TASK_TYPES}"),
            );
            return None;
        }
    };
    fields.finish(reader, Leftovers::Refused, known);
    let task = task?;
    if !matches!(task, TaskKind::Exec { .. } | TaskKind::Fetch { .. }) {
        reader.warn(&task_path, item.line, format!("the {kind} task is accepted, but ferrocd cannot run it yet: the job fails when it starts"));
    }
    Some(TaskConfig {
        kind: task,
        run_if,
        on_cancel,
    })
}

fn read_run_if(reader: &mut Reader, fields: &mut Fields) -> RunIf {
    let Some(text) = reader.opt_text(fields, "run_if") else {
        return RunIf::Passed;
    };
    match text.as_str() {
        "passed" => RunIf::Passed,
        "failed" => RunIf::Failed,
        "any" => RunIf::Any,
        _ => {
            reader.error(
                &fields.path_of("run_if"),
                fields.line_of("run_if"),
                format!("run_if `{text}` is not one of passed, failed, any"),
            );
            RunIf::Passed
        }
    }
}

fn read_exec(reader: &mut Reader, fields: &mut Fields) -> Option<TaskKind> {
    let command = reader.required_text(fields, "command", "the program to run");
    let mut arguments = Vec::new();
    if let Some(node) = fields.get("arguments") {
        let path = fields.path_of("arguments");
        match &node.value {
            Value::List(items) => {
                for (i, item) in items.iter().enumerate() {
                    // One item, one argv element; `- ` alone is an empty argument.
                    let argument = if item.is_null() {
                        Some(String::new())
                    } else {
                        reader.text(item, &format!("{path}[{i}]"))
                    };
                    arguments.extend(argument);
                }
            }
            _ => reader.error(
                &path,
                node.line,
                format!(
                    "`arguments` must be a list, one item per argument, found {}",
                    shape(node)
                ),
            ),
        }
    }
    let working_directory = reader.opt_text(fields, "working_directory");
    // GoCD refuses a blank command too; there would be nothing to run.
    if command.as_deref().is_some_and(|c| c.trim().is_empty()) {
        reader.error(
            &fields.path_of("command"),
            fields.line_of("command"),
            "`command` is blank: give the program to run",
        );
        return None;
    }
    Some(TaskKind::Exec {
        command: command?,
        arguments,
        working_directory,
    })
}

fn read_fetch(reader: &mut Reader, fields: &mut Fields) -> Option<TaskKind> {
    if let Some(origin) = reader.opt_text(fields, "artifact_origin") {
        match origin.as_str() {
            "gocd" => {}
            "external" => {
                reader.error(
                    &fields.path_of("artifact_origin"),
                    fields.line_of("artifact_origin"),
                    "fetching an external artifact needs an artifact plugin and its store; ferrocd has neither",
                );
                for key in ["artifact_id", "configuration"] {
                    fields.get_entry(key);
                }
            }
            other => reader.error(
                &fields.path_of("artifact_origin"),
                fields.line_of("artifact_origin"),
                format!("artifact_origin `{other}` is not one of gocd, external"),
            ),
        }
    }
    let pipeline = reader.opt_text(fields, "pipeline");
    let stage = reader.required_text(fields, "stage", "the stage that made the artifact");
    let job = reader.required_text(fields, "job", "the job that made the artifact");
    let source = reader.required_text(fields, "source", "the artifact's path");
    let is_file = reader.boolean(fields, "is_file", false);
    let destination = reader.opt_text(fields, "destination");
    Some(TaskKind::Fetch {
        pipeline,
        stage: stage?,
        job: job?,
        source: source?,
        is_file,
        destination,
    })
}

fn read_plugin(reader: &mut Reader, fields: &mut Fields) -> Option<TaskKind> {
    reader.refuse_ciphertext(fields, "secure_options");
    let options = reader.text_map(fields, "options", false);
    let Some(node) = fields.get("configuration") else {
        reader.error(
            &fields.path_of("configuration"),
            fields.line,
            "`configuration` with the plugin's `id` is required",
        );
        return None;
    };
    let mut configuration = reader.map(
        node,
        &fields.path_of("configuration"),
        "the plugin's id and version",
    )?;
    let id = reader.required_text(&mut configuration, "id", "the task plugin's id");
    let version = reader.opt_text(&mut configuration, "version");
    configuration.finish(reader, Leftovers::Refused, &["id", "version"]);
    Some(TaskKind::Plugin {
        id: id?,
        version,
        options,
    })
}

fn read_builder(reader: &mut Reader, fields: &mut Fields, tool: BuilderTool) -> Option<TaskKind> {
    let build_file = reader.opt_text(fields, "build_file");
    let target = reader.opt_text(fields, "target");
    let working_directory = reader.opt_text(fields, "working_directory");
    if tool == BuilderTool::Nant
        && let Some(node) = fields.get("nant_path")
    {
        reader.warn(
            &fields.path_of("nant_path"),
            node.line,
            "`nant_path` is not kept: ferrocd has no nant runner yet",
        );
    }
    Some(TaskKind::Builder {
        tool,
        build_file,
        target,
        working_directory,
    })
}

pub fn read_artifacts(reader: &mut Reader, node: &Node, path: &str) -> Vec<ArtifactConfig> {
    let Value::List(items) = &node.value else {
        reader.error(
            path,
            node.line,
            format!("`artifacts` must be a list, found {}", shape(node)),
        );
        return Vec::new();
    };
    let mut artifacts = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let Some((kind, body, artifact_path)) =
            single_key(reader, item, &format!("{path}[{i}]"), "an artifact")
        else {
            continue;
        };
        let kind = match kind.as_str() {
            "build" => ArtifactKind::Build,
            "test" => ArtifactKind::Test,
            "external" => {
                reader.error(&artifact_path, item.line, "an external artifact needs an artifact plugin store (`store_id`); ferrocd has none");
                continue;
            }
            other => {
                reader.error(
                    &artifact_path,
                    item.line,
                    format!("unknown artifact type `{other}`: one of build, test, external"),
                );
                continue;
            }
        };
        let Some(mut fields) = reader.map(
            body,
            &artifact_path,
            "the artifact's source and destination",
        ) else {
            continue;
        };
        let source = reader.required_text(&mut fields, "source", "the path to upload");
        let destination = reader.opt_text(&mut fields, "destination");
        fields.finish(reader, Leftovers::Warned, &["source", "destination"]);
        if let Some(source) = source {
            artifacts.push(ArtifactConfig {
                kind,
                source,
                destination,
            });
        }
    }
    artifacts
}
