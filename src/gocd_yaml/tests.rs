//! The parser against real files (the corpus in tests/fixtures/gocd-yaml-corpus, with what
//! GoCD's own plugin made of each), the format's documented examples, one test per kind of
//! error naming where it is, and properties over arbitrary text.

use std::collections::BTreeMap;

use proptest::prelude::*;
use serde_json::Value as Json;

use super::fields::substitute;
use super::{check_sources, parse_document};
use crate::domain::pipeline_config::*;

fn corpus(relative: &str) -> String {
    let path = format!(
        "{}/tests/fixtures/gocd-yaml-corpus/{relative}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn plugin_json(file: &str) -> Json {
    serde_json::from_str(&corpus(&format!("plugin-json/{file}.json"))).expect("plugin JSON")
}

fn ok(text: &str) -> ConfigDocument {
    parse_document(text).unwrap_or_else(|issues| panic!("refused: {issues:#?}"))
}

fn errors(text: &str) -> Vec<ConfigIssue> {
    match parse_document(text) {
        Ok(document) => panic!("accepted: {document:#?}"),
        Err(issues) => issues,
    }
}

/// The one error at `path` whose message holds every one of `words`.
#[track_caller]
fn assert_error(issues: &[ConfigIssue], path: &str, words: &[&str]) {
    assert!(
        issues
            .iter()
            .any(|i| i.path == path && words.iter().all(|w| i.message.contains(w))),
        "no error at {path} saying {words:?} in {issues:#?}"
    );
}

#[track_caller]
fn assert_warning(document: &ConfigDocument, path: &str, words: &[&str]) {
    assert!(
        document
            .warnings
            .iter()
            .any(|i| i.path == path && words.iter().all(|w| i.message.contains(w))),
        "no warning at {path} saying {words:?} in {:#?}",
        document.warnings
    );
}

/// Drops each line whose key is one of `keys` (`key:` or `- key:`) with the lines indented
/// under it: a refused file, less what ferrocd refuses, to compare the rest with GoCD.
fn without_keys(text: &str, keys: &[&str]) -> String {
    let mut out = String::new();
    let mut skipping_deeper_than: Option<usize> = None;
    for line in text.split_inclusive('\n') {
        let indent = line.len() - line.trim_start().len();
        let content = line.trim();
        if let Some(limit) = skipping_deeper_than {
            if content.is_empty() || indent > limit {
                continue;
            }
            skipping_deeper_than = None;
        }
        let bare = content.strip_prefix("- ").unwrap_or(content);
        if keys.iter().any(|k| bare.starts_with(&format!("{k}:"))) {
            skipping_deeper_than = Some(indent);
            continue;
        }
        out.push_str(line);
    }
    out
}

// ---------------------------------------------------------------- the corpus, file by file

/// What ferrocd says of each accepted-by-GoCD corpus file: `None` accepted, or the things it
/// needs from outside, each named by some error. Every error must be one of those needs.
const CORPUS: &[(&str, &[&str])] = &[
    ("OpenSCAP__openscap__.gocd.yaml", &[]),
    (
        "PremiereGlobal__vault-helm-chart__deploy.gocd.yaml",
        &["pluggable SCM `527fb0d8-c691-4693-a601-20a26ddd7d41`"],
    ),
    (
        "ThoughtWorksInc__ml-app-template__ci.gocd.yaml",
        &["elastic agent profile", "artifact plugin store"],
    ),
    (
        "advancedtelematic__gocd-dhall-example__pipelines.gocd.yaml",
        &[],
    ),
    (
        "arvindsv__test-config-repo__test.gocd.yaml",
        &["`encrypted_password`"],
    ),
    (
        "chadlwilson__gocd-git-path-material-plugin__sample-pipelines.gocd.yaml",
        &["SCM plugin `git-path`"],
    ),
    (
        "getgauge__gocd-yml-config__nightly.gocd.yaml",
        &["`secure_variables`", "elastic agent profile `centos-all`"],
    ),
    (
        "getgauge__gocd-yml-config__report.gocd.yaml",
        &["elastic agent profile `centos-all`"],
    ),
    (
        "gocd-contrib__openstack-elastic-agent__ci.gocd.yaml",
        &["`secure_variables`"],
    ),
    ("kudulab__releaser__pipeline.gocd.yaml", &[]),
    (
        "nhsconnect__prm-deductions-support-infra__pipeline.gocd.yaml",
        &[],
    ),
    ("openSUSE__openSUSE-release-tools__bci.gocd.yaml", &[]),
    (
        "qnib__gocd-repo-manifest-tensorflow__environments.gocd.yaml",
        &[],
    ),
    (
        "rapido-labs__silent-assassin__ci.gocd.yaml",
        &["uses server-side template go-hermes; ferrocd has no templates"],
    ),
    ("srkama__gocd-pipelines__template-example.gocd.yaml", &[]),
    (
        "gocd-contrib__gocd-cli__ci.gocd.yml",
        &[
            "`encrypted_password`",
            "`secure_variables`",
            "elastic agent profile `ecs-golang-build`",
        ],
    ),
    (
        "gocd__gocd-trial-launcher__ci.gocd.yml",
        &["elastic agent profile `ecs-gocd-dev-build`"],
    ),
];

/// The kinds of thing a corpus file may be refused for: each names what it needs from outside.
const OUTSIDE_NEEDS: &[&str] = &[
    "ferrocd has no templates",
    "ferrocd has no elastic agents",
    "holds ciphertext made with a GoCD server's cipher key",
    "pluggable SCM",
    "SCM plugin",
    "artifact plugin store",
];

#[test]
fn every_corpus_file_is_accepted_or_refused_for_what_it_needs_from_outside() {
    let listed: Vec<String> = std::fs::read_dir(format!(
        "{}/tests/fixtures/gocd-yaml-corpus",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
    .map(|e| e.unwrap().file_name().into_string().unwrap())
    .filter(|n| n.ends_with(".gocd.yaml") || n.ends_with(".gocd.yml"))
    .collect();
    assert_eq!(
        listed.len(),
        CORPUS.len(),
        "a corpus file without an expectation: {listed:?}"
    );
    for (file, needs) in CORPUS {
        assert!(
            listed.iter().any(|l| l == file),
            "{file} is not in the corpus"
        );
        match parse_document(&corpus(file)) {
            Ok(document) => {
                assert!(needs.is_empty(), "{file} accepted, but it needs {needs:?}");
                for warning in &document.warnings {
                    assert!(
                        !warning.path.is_empty() && !warning.message.is_empty(),
                        "{file}: {warning:?}"
                    );
                }
            }
            Err(issues) => {
                assert!(!needs.is_empty(), "{file} refused: {issues:#?}");
                for need in *needs {
                    assert!(
                        issues.iter().any(|i| i.message.contains(need)),
                        "{file}: nothing says {need:?} in {issues:#?}"
                    );
                }
                for issue in &issues {
                    assert!(
                        OUTSIDE_NEEDS.iter().any(|n| issue.message.contains(n)),
                        "{file}: refused for something it does not need from outside: {issue}"
                    );
                }
            }
        }
    }
}

#[test]
fn accepted_corpus_files_match_what_gocd_read() {
    for (file, _) in CORPUS.iter().filter(|(_, needs)| needs.is_empty()) {
        compare_with_plugin(file, &ok(&corpus(file)));
    }
}

/// Refused files, less the keys they were refused for, still read as GoCD read the rest.
/// `chadlwilson` (every pipeline's material is a plugin's) and `rapido-labs` (templates, no
/// stages) have nothing left to compare.
#[test]
fn refused_corpus_files_read_as_gocd_read_them_less_what_is_refused() {
    let cases: &[(&str, &[&str])] = &[
        (
            "PremiereGlobal__vault-helm-chart__deploy.gocd.yaml",
            &["gitBranches"],
        ),
        (
            "ThoughtWorksInc__ml-app-template__ci.gocd.yaml",
            &["elastic_profile_id", "external"],
        ),
        (
            "arvindsv__test-config-repo__test.gocd.yaml",
            &["encrypted_password"],
        ),
        (
            "getgauge__gocd-yml-config__nightly.gocd.yaml",
            &["elastic_profile_id", "secure_variables"],
        ),
        (
            "getgauge__gocd-yml-config__report.gocd.yaml",
            &["elastic_profile_id"],
        ),
        (
            "gocd-contrib__openstack-elastic-agent__ci.gocd.yaml",
            &["secure_variables"],
        ),
        (
            "gocd-contrib__gocd-cli__ci.gocd.yml",
            &[
                "elastic_profile_id",
                "secure_variables",
                "encrypted_password",
            ],
        ),
        (
            "gocd__gocd-trial-launcher__ci.gocd.yml",
            &["elastic_profile_id"],
        ),
    ];
    for (file, keys) in cases {
        let text = without_keys(&corpus(file), keys);
        assert!(
            parse_document(&corpus(file)).is_err(),
            "{file} whole is refused"
        );
        compare_with_plugin(file, &ok(&text));
    }
}

fn json_str<'j>(json: &'j Json, key: &str) -> Option<&'j str> {
    json.get(key).and_then(Json::as_str)
}

fn json_list<'j>(json: &'j Json, key: &str) -> &'j [Json] {
    json.get(key)
        .and_then(Json::as_array)
        .map_or(&[], Vec::as_slice)
}

/// `[{name, value}]` as GoCD lists variables (ciphertext ones, `encrypted_value`, left out).
fn json_variables(
    json: &Json,
    key: &str,
    resolve: &dyn Fn(&str) -> String,
) -> BTreeMap<String, String> {
    json_list(json, key)
        .iter()
        .filter_map(|v| {
            Some((
                json_str(v, "name")?.to_string(),
                resolve(json_str(v, "value")?),
            ))
        })
        .collect()
}

/// Compares names, order, groups, materials, approvals, resources, variables and tasks with
/// the plugin's JSON. The plugin's JSON is before `#{param}` resolution; its strings are
/// resolved here with the pipeline's parameters by the same `substitute` the parser uses
/// (tested on its own in `fields`), so a param the parser forgot to resolve still shows.
fn compare_with_plugin(file: &str, document: &ConfigDocument) {
    let json = plugin_json(file);
    let expected: Vec<&str> = json_list(&json, "pipelines")
        .iter()
        .map(|p| json_str(p, "name").unwrap())
        .collect();
    let read: Vec<&str> = document.pipelines.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(read, expected, "{file}: pipelines");
    let environments: Vec<&str> = json_list(&json, "environments")
        .iter()
        .map(|e| json_str(e, "name").unwrap())
        .collect();
    let read: Vec<&str> = document
        .environments
        .iter()
        .map(|e| e.name.as_str())
        .collect();
    assert_eq!(read, environments, "{file}: environments");
    for (environment, json) in document
        .environments
        .iter()
        .zip(json_list(&json, "environments"))
    {
        let pipelines: Vec<&str> = json_list(json, "pipelines")
            .iter()
            .map(|p| p.as_str().unwrap())
            .collect();
        assert_eq!(
            environment.pipelines, pipelines,
            "{file}: environment {}",
            environment.name
        );
        assert_eq!(
            environment.environment_variables,
            json_variables(json, "environment_variables", &|s| s.to_string())
        );
    }
    for (pipeline, json) in document.pipelines.iter().zip(json_list(&json, "pipelines")) {
        let at = format!("{file}: pipeline {}", pipeline.name);
        let params: BTreeMap<String, String> = json_list(json, "parameters")
            .iter()
            .map(|p| {
                (
                    json_str(p, "name").unwrap().to_string(),
                    json_str(p, "value").unwrap_or("").to_string(),
                )
            })
            .collect();
        assert_eq!(pipeline.parameters, params, "{at}: parameters");
        let resolve = |s: &str| substitute(s, &params).unwrap_or_else(|e| panic!("{at}: {e}"));
        assert_eq!(
            pipeline.group,
            json_str(json, "group").unwrap(),
            "{at}: group"
        );
        assert_eq!(
            pipeline.label_template,
            json_str(json, "label_template").map_or("${COUNT}".to_string(), resolve),
            "{at}: label"
        );
        assert_eq!(
            pipeline.display_order,
            json.get("display_order_weight")
                .and_then(Json::as_i64)
                .unwrap_or(-1),
            "{at}"
        );
        assert_eq!(
            pipeline.environment_variables,
            json_variables(json, "environment_variables", &resolve),
            "{at}: variables"
        );
        match json.get("timer") {
            Some(timer) => {
                let ours = pipeline
                    .timer
                    .as_ref()
                    .unwrap_or_else(|| panic!("{at}: no timer"));
                assert_eq!(ours.spec, json_str(timer, "spec").unwrap(), "{at}: timer");
                assert_eq!(
                    ours.only_on_changes,
                    timer
                        .get("only_on_changes")
                        .and_then(Json::as_bool)
                        .unwrap_or(false),
                    "{at}"
                );
            }
            None => assert_eq!(pipeline.timer, None, "{at}: timer"),
        }
        let lock = match (
            json_str(json, "lock_behavior"),
            json.get("enable_pipeline_locking").and_then(Json::as_bool),
        ) {
            (Some("lockOnFailure"), _) | (None, Some(true)) => LockBehavior::LockOnFailure,
            (Some("unlockWhenFinished"), _) => LockBehavior::UnlockWhenFinished,
            _ => LockBehavior::None,
        };
        assert_eq!(pipeline.lock_behavior, lock, "{at}: lock");
        compare_materials(
            &at,
            &pipeline.materials,
            json_list(json, "materials"),
            &resolve,
        );
        let stages: Vec<&str> = json_list(json, "stages")
            .iter()
            .map(|s| json_str(s, "name").unwrap())
            .collect();
        let read: Vec<&str> = pipeline.stages.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(read, stages, "{at}: stages");
        for (stage, json) in pipeline.stages.iter().zip(json_list(json, "stages")) {
            let at = format!("{at} stage {}", stage.name);
            let approval = json.get("approval");
            let manual = approval.and_then(|a| json_str(a, "type")) == Some("manual");
            assert_eq!(stage.approval.manual, manual, "{at}: approval");
            let only_on_success = approval
                .and_then(|a| a.get("allow_only_on_success"))
                .and_then(Json::as_bool)
                .unwrap_or(false);
            assert_eq!(
                stage.approval.allow_only_on_success, only_on_success,
                "{at}: allow_only_on_success"
            );
            let roles: Vec<&str> = approval
                .map_or(&[][..], |a| json_list(a, "roles"))
                .iter()
                .map(|r| r.as_str().unwrap())
                .collect();
            assert_eq!(stage.approval.roles, roles, "{at}: roles");
            let flag =
                |key: &str, default: bool| json.get(key).and_then(Json::as_bool).unwrap_or(default);
            assert_eq!(
                stage.clean_workspace,
                flag("clean_working_directory", false),
                "{at}: clean_workspace"
            );
            assert_eq!(
                stage.fetch_materials,
                flag("fetch_materials", true),
                "{at}: fetch_materials"
            );
            assert_eq!(
                stage.keep_artifacts,
                flag("never_cleanup_artifacts", false),
                "{at}: keep_artifacts"
            );
            assert_eq!(
                stage.environment_variables,
                json_variables(json, "environment_variables", &resolve),
                "{at}: variables"
            );
            let jobs: Vec<&str> = json_list(json, "jobs")
                .iter()
                .map(|j| json_str(j, "name").unwrap())
                .collect();
            let read: Vec<&str> = stage.jobs.iter().map(|j| j.name.as_str()).collect();
            assert_eq!(read, jobs, "{at}: jobs");
            for (job, json) in stage.jobs.iter().zip(json_list(json, "jobs")) {
                compare_job(&format!("{at} job {}", job.name), job, json, &resolve);
            }
        }
    }
}

fn compare_materials(
    at: &str,
    materials: &[Material],
    json: &[Json],
    resolve: &dyn Fn(&str) -> String,
) {
    // Plugin and package materials are refused (and cut from the text compared).
    let json: Vec<&Json> = json
        .iter()
        .filter(|m| !matches!(json_str(m, "type"), Some("plugin" | "package")))
        .collect();
    let names: Vec<&str> = json.iter().map(|m| json_str(m, "name").unwrap()).collect();
    let read: Vec<&str> = materials.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(read, names, "{at}: materials");
    for (material, json) in materials.iter().zip(json) {
        let json: &Json = json;
        let at = format!("{at} material {}", material.name);
        let filter = |key: &str| -> Vec<String> {
            json.get("filter")
                .map_or(&[][..], |f| json_list(f, key))
                .iter()
                .map(|g| g.as_str().unwrap().to_string())
                .collect()
        };
        let includes = [filter("includes"), filter("whitelist")].concat();
        let ignore = [filter("ignore"), filter("blacklist")].concat();
        match (&material.source, json_str(json, "type").unwrap_or("")) {
            (MaterialSource::Git(git), "git") => {
                assert_eq!(git.url, resolve(json_str(json, "url").unwrap()), "{at}");
                assert_eq!(
                    git.branch,
                    json_str(json, "branch").unwrap_or("master"),
                    "{at}"
                );
                assert_eq!(
                    git.destination.as_deref(),
                    json_str(json, "destination"),
                    "{at}"
                );
                assert_eq!(
                    git.shallow_clone,
                    json.get("shallow_clone")
                        .and_then(Json::as_bool)
                        .unwrap_or(false),
                    "{at}"
                );
                assert_eq!(
                    git.auto_update,
                    json.get("auto_update")
                        .and_then(Json::as_bool)
                        .unwrap_or(true),
                    "{at}"
                );
                assert_eq!(git.username.as_deref(), json_str(json, "username"), "{at}");
                assert_eq!((&git.includes, &git.ignore), (&includes, &ignore), "{at}");
            }
            (
                MaterialSource::Dependency {
                    pipeline, stage, ..
                },
                "dependency",
            ) => {
                assert_eq!(
                    pipeline,
                    &resolve(json_str(json, "pipeline").unwrap()),
                    "{at}"
                );
                assert_eq!(stage, &resolve(json_str(json, "stage").unwrap()), "{at}");
            }
            (
                MaterialSource::Scm {
                    scm,
                    url,
                    destination,
                    ..
                },
                kind,
            ) => {
                assert_eq!(
                    serde_json::to_value(scm).unwrap().as_str(),
                    Some(kind),
                    "{at}"
                );
                assert_eq!(url, json_str(json, "url").unwrap(), "{at}");
                assert_eq!(
                    destination.as_deref(),
                    json_str(json, "destination"),
                    "{at}"
                );
            }
            (
                MaterialSource::ConfigRepo {
                    destination,
                    ignore: i,
                    includes: w,
                },
                "configrepo",
            ) => {
                assert_eq!(
                    destination.as_deref(),
                    json_str(json, "destination"),
                    "{at}"
                );
                assert_eq!((w, i), (&includes, &ignore), "{at}");
            }
            (ours, theirs) => panic!("{at}: read {ours:?}, GoCD read a {theirs} material"),
        }
    }
}

fn compare_job(at: &str, job: &JobConfig, json: &Json, resolve: &dyn Fn(&str) -> String) {
    let resources: Vec<String> = json_list(json, "resources")
        .iter()
        .map(|r| resolve(r.as_str().unwrap()))
        .collect();
    assert_eq!(job.resources, resources, "{at}: resources");
    assert_eq!(
        job.timeout,
        json.get("timeout").and_then(Json::as_u64),
        "{at}: timeout"
    );
    let run_instances = match json.get("run_instance_count") {
        None => RunInstances::One,
        Some(Json::String(all)) if all == "all" => RunInstances::All,
        Some(count) => RunInstances::Count(
            count
                .as_u64()
                .or_else(|| count.as_str()?.parse().ok())
                .unwrap() as u32,
        ),
    };
    assert_eq!(job.run_instances, run_instances, "{at}: run_instances");
    assert_eq!(
        job.environment_variables,
        json_variables(json, "environment_variables", resolve),
        "{at}: variables"
    );
    let artifacts: Vec<(String, Option<String>)> = json_list(json, "artifacts")
        .iter()
        .filter(|a| json_str(a, "type") != Some("external"))
        .map(|a| {
            (
                resolve(json_str(a, "source").unwrap()),
                json_str(a, "destination").map(resolve),
            )
        })
        .collect();
    let read: Vec<(String, Option<String>)> = job
        .artifacts
        .iter()
        .map(|a| (a.source.clone(), a.destination.clone()))
        .collect();
    assert_eq!(read, artifacts, "{at}: artifacts");
    let tasks = json_list(json, "tasks");
    assert_eq!(job.tasks.len(), tasks.len(), "{at}: tasks {:#?}", job.tasks);
    for (i, (task, json)) in job.tasks.iter().zip(tasks).enumerate() {
        compare_task(&format!("{at} task {i}"), task, json, resolve);
    }
}

fn compare_task(at: &str, task: &TaskConfig, json: &Json, resolve: &dyn Fn(&str) -> String) {
    let run_if = match json_str(json, "run_if") {
        Some("failed") => RunIf::Failed,
        Some("any") => RunIf::Any,
        _ => RunIf::Passed,
    };
    assert_eq!(task.run_if, run_if, "{at}: run_if");
    let text = |key: &str| json_str(json, key).map(resolve);
    match (&task.kind, json_str(json, "type").unwrap()) {
        (
            TaskKind::Exec {
                command,
                arguments,
                working_directory,
            },
            "exec",
        ) => {
            assert_eq!(Some(command.clone()), text("command"), "{at}: command");
            let expected: Vec<String> = json_list(json, "arguments")
                .iter()
                .map(|a| resolve(a.as_str().unwrap()))
                .collect();
            assert_eq!(arguments, &expected, "{at}: arguments");
            assert_eq!(
                working_directory.clone(),
                text("working_directory"),
                "{at}: working_directory"
            );
        }
        (TaskKind::Script { script }, "plugin") => {
            let plugin = json
                .get("plugin_configuration")
                .and_then(|p| json_str(p, "id"));
            assert_eq!(plugin, Some("script-executor"), "{at}");
            let option = json_list(json, "configuration")
                .iter()
                .find(|c| json_str(c, "key") == Some("script"));
            assert_eq!(
                Some(script.clone()),
                option.and_then(|o| json_str(o, "value")).map(resolve),
                "{at}: script"
            );
        }
        (
            TaskKind::Fetch {
                pipeline,
                stage,
                job,
                source,
                is_file,
                destination,
            },
            "fetch",
        ) => {
            assert_eq!(pipeline.clone(), text("pipeline"), "{at}");
            assert_eq!(
                (Some(stage.clone()), Some(job.clone())),
                (text("stage"), text("job")),
                "{at}"
            );
            assert_eq!(Some(source.clone()), text("source"), "{at}");
            assert_eq!(
                *is_file,
                json.get("is_source_a_file")
                    .and_then(Json::as_bool)
                    .unwrap_or(false),
                "{at}"
            );
            assert_eq!(destination.clone(), text("destination"), "{at}");
        }
        (
            TaskKind::Builder {
                tool,
                build_file,
                target,
                working_directory,
            },
            kind,
        ) => {
            assert_eq!(tool.as_str(), kind, "{at}");
            assert_eq!(
                (build_file.clone(), target.clone()),
                (text("build_file"), text("target")),
                "{at}"
            );
            assert_eq!(working_directory.clone(), text("working_directory"), "{at}");
        }
        (ours, theirs) => panic!("{at}: read {ours:?}, GoCD read a {theirs} task"),
    }
}

#[test]
fn the_environments_only_file_needs_its_pipelines_from_other_sources() {
    let document = ok(&corpus(
        "qnib__gocd-repo-manifest-tensorflow__environments.gocd.yaml",
    ));
    assert!(document.pipelines.is_empty());
    assert!(!document.environments.is_empty());
    let issues = check_sources(&[("environments.gocd.yaml", &document)]);
    assert!(!issues.is_empty());
    for (source, issue) in &issues {
        assert_eq!(*source, 0);
        assert!(issue.message.contains("which is not defined"), "{issue}");
        assert!(issue.path.starts_with("environments."), "{issue}");
    }
    // Env values `false`/`true` stay text.
    let values: Vec<&String> = document
        .environments
        .iter()
        .flat_map(|e| e.environment_variables.values())
        .collect();
    assert!(
        values.iter().any(|v| *v == "false" || *v == "true"),
        "{values:?}"
    );
}

#[test]
fn the_trial_launcher_alone_lacks_its_upstream_pipelines() {
    let text = without_keys(
        &corpus("gocd__gocd-trial-launcher__ci.gocd.yml"),
        &["elastic_profile_id"],
    );
    let document = ok(&text);
    let issues = check_sources(&[("ci.gocd.yml", &document)]);
    let messages: Vec<&str> = issues.iter().map(|(_, i)| i.message.as_str()).collect();
    assert!(
        messages.contains(&"upstream pipeline regression-SPAs is not defined"),
        "{messages:?}"
    );
    assert!(
        messages.contains(&"upstream pipeline PublishStableRelease is not defined"),
        "{messages:?}"
    );
    assert_eq!(issues.len(), 2, "{issues:#?}");
    let fetch = &document.pipelines[1].stages[0].jobs[0].tasks[0];
    assert!(
        matches!(&fetch.kind, TaskKind::Fetch { pipeline: Some(p), .. } if p == "installers/smoke/regression-SPAs")
    );
}

#[test]
fn corpus_quirks_read_as_gocd_reads_them() {
    // An empty `destination:` is absent.
    let kudulab = ok(&corpus("kudulab__releaser__pipeline.gocd.yaml"));
    assert!(
        kudulab.pipelines[0]
            .stages
            .iter()
            .flat_map(|s| &s.jobs)
            .flat_map(|j| &j.artifacts)
            .all(|a| a.destination.as_deref() != Some(""))
    );
    // `roles:` written on a single-job stage is no such key: a warning names it.
    let suse = ok(&corpus("openSUSE__openSUSE-release-tools__bci.gocd.yaml"));
    assert!(
        suse.warnings
            .iter()
            .any(|w| w.path.ends_with(".roles") && w.message.contains("unknown key `roles`")),
        "{:#?}",
        suse.warnings
    );
    assert!(suse.pipelines[0].stages[0].approval.manual);
    // Merge keys: the stages take the common stage's keys.
    let srkama = ok(&corpus(
        "srkama__gocd-pipelines__template-example.gocd.yaml",
    ));
    let deploy = &srkama.pipelines[0].stages[1];
    assert!(deploy.approval.manual && deploy.approval.allow_only_on_success);
    assert_eq!(deploy.jobs[0].name, "deploy-to-server");
    assert_eq!(deploy.jobs[0].resources, ["docker"]);
    // The ex_gocd dogfood file has no materials: ferrocd makes them optional.
    let ex_gocd = ok(&corpus("rejected/d-led__ex_gocd__pipeline.gocd.yaml"));
    assert_eq!(ex_gocd.pipelines.len(), 3);
    assert!(ex_gocd.pipelines.iter().all(|p| p.materials.is_empty()));
    let docker = &ex_gocd.pipelines[0].stages[1].jobs[0].tasks[0].kind;
    assert!(
        matches!(docker, TaskKind::Exec { arguments, .. } if arguments == &["info", "--format", "'{{.ServerVersion}}'"])
    );
}

#[test]
fn rejected_files_are_refused_where_the_problem_is() {
    let issues = errors(&corpus(
        "rejected/sheroy__gocd-pipeline-repo__pipelines.gocd.yaml",
    ));
    assert!(
        issues
            .iter()
            .any(|i| i.path.contains("jobs") && i.message.contains("not a list")),
        "{issues:#?}"
    );
    assert!(
        issues.iter().all(|i| i.path.starts_with("pipelines.")),
        "{issues:#?}"
    );
}

// ---------------------------------------------------------------- the plugin's examples

#[test]
fn the_plugins_invalid_examples_are_refused() {
    let simple_invalid = errors(&corpus(
        "plugin-examples/tomzo__gocd-yaml-config-plugin__simple-invalid.gocd.yaml",
    ));
    assert_error(
        &simple_invalid,
        "pipelines.pipe1.materials",
        &["must be a map", "not a list"],
    );
    let invalid = errors(&corpus(
        "plugin-examples/tomzo__gocd-yaml-config-plugin__invalid-materials.gocd.yaml",
    ));
    // A stray backquote after `arguments:` (line 21): the parser's error, where it noticed.
    assert_eq!(invalid.len(), 1, "{invalid:#?}");
    assert!(
        invalid[0].message.starts_with("not valid YAML"),
        "{invalid:#?}"
    );
    assert!(matches!(invalid[0].line, Some(21..=23)), "{invalid:#?}");
    assert!(invalid[0].path.ends_with("tasks[0].exec"), "{invalid:#?}");
    let duplicate = errors(&corpus(
        "plugin-examples/tomzo__gocd-yaml-config-plugin__duplicate-materials.gocd.yaml",
    ));
    assert_error(
        &duplicate,
        "pipelines.pipe1.materials.upstream",
        &["duplicate key `upstream`"],
    );
}

#[test]
fn the_plugins_valid_examples_are_accepted_or_refused_for_their_ciphertext() {
    for (name, json) in [
        ("simple", "simple"),
        ("aliases", "aliases"),
        ("format-version-9", "format-version-9"),
        ("format-version-10", "format-version-10"),
    ] {
        let document = ok(&corpus(&format!(
            "plugin-examples/tomzo__gocd-yaml-config-plugin__{name}.gocd.yaml"
        )));
        compare_with_expected(
            name,
            &document,
            &serde_json::from_str(&corpus(&format!(
                "plugin-examples/tomzo__gocd-yaml-config-plugin__expected__{json}.gocd.json"
            )))
            .unwrap(),
        );
    }
    let rich = errors(&corpus(
        "plugin-examples/tomzo__gocd-yaml-config-plugin__rich.gocd.yaml",
    ));
    assert_eq!(rich.len(), 1, "{rich:#?}");
    assert_error(
        &rich,
        "pipelines.pipe2.stages[0].build.jobs.csharp.secure_variables",
        &["(PASSWORD)", "ciphertext"],
    );
    let readme = errors(&corpus(
        "plugin-examples/tomzo__gocd-yaml-config-plugin__README-example.gocd.yaml",
    ));
    assert_eq!(readme.len(), 1, "{readme:#?}");
    assert_error(
        &readme,
        "environments.testing.secure_variables",
        &["(ENV_PASSWORD)", "ciphertext"],
    );
}

/// The plugin's expected JSON for one example (a single pipeline under `pipeline`, or a
/// whole answer with `pipelines`).
fn compare_with_expected(name: &str, document: &ConfigDocument, json: &Json) {
    let pipelines: Vec<&Json> = match json.get("pipelines") {
        Some(list) => list.as_array().unwrap().iter().collect(),
        None => vec![json],
    };
    assert_eq!(document.pipelines.len(), pipelines.len(), "{name}");
    for (pipeline, json) in document.pipelines.iter().zip(pipelines) {
        let at = format!("{name}: {}", pipeline.name);
        assert_eq!(pipeline.name, json_str(json, "name").unwrap(), "{at}");
        assert_eq!(pipeline.group, json_str(json, "group").unwrap(), "{at}");
        compare_materials(
            &at,
            &pipeline.materials,
            json_list(json, "materials"),
            &|s| s.to_string(),
        );
        let stages: Vec<&str> = json_list(json, "stages")
            .iter()
            .map(|s| json_str(s, "name").unwrap())
            .collect();
        assert_eq!(
            pipeline
                .stages
                .iter()
                .map(|s| s.name.as_str())
                .collect::<Vec<_>>(),
            stages,
            "{at}"
        );
        for (stage, json) in pipeline.stages.iter().zip(json_list(json, "stages")) {
            for (job, json) in stage.jobs.iter().zip(json_list(json, "jobs")) {
                compare_job(&format!("{at} {}", job.name), job, json, &|s| s.to_string());
            }
        }
    }
}

#[test]
fn the_readme_example_less_its_secure_variable_reads_fully() {
    let text = without_keys(
        &corpus("plugin-examples/tomzo__gocd-yaml-config-plugin__README-example.gocd.yaml"),
        &["secure_variables"],
    );
    let document = ok(&text);
    assert_eq!(document.format_version, 9);
    assert_eq!(document.environments[0].name, "testing");
    assert_eq!(
        document.environments[0].pipelines,
        ["example-deploy-testing", "build-testing"]
    );
    let pipe = &document.pipelines[0];
    assert_eq!(
        (pipe.name.as_str(), pipe.group.as_str(), pipe.display_order),
        ("mypipe1", "mygroup", 10)
    );
    assert_eq!(pipe.label_template, "${mygit[:8]}");
    assert_eq!(
        pipe.parameters,
        BTreeMap::from([("param1".to_string(), "value1".to_string())])
    );
    assert!(
        matches!(&pipe.materials[1].source, MaterialSource::Dependency { pipeline, stage, ignore_for_scheduling: false } if pipeline == "pipe2" && stage == "test")
    );
    let job = &pipe.stages[0].jobs[0];
    assert_eq!(job.name, "csharp");
    assert_eq!(
        job.artifacts.iter().map(|a| a.kind).collect::<Vec<_>>(),
        [ArtifactKind::Build, ArtifactKind::Test, ArtifactKind::Test]
    );
    assert_eq!(
        job.tabs.get("report").map(String::as_str),
        Some("test-reports/index.html")
    );
    let kinds: Vec<&str> = job.tasks.iter().map(|t| t.kind.type_name()).collect();
    assert_eq!(kinds, ["fetch", "exec", "script"]);
    // The agent runs fetch tasks: nothing to warn of.
    assert!(
        !document.warnings.iter().any(|w| w.path.ends_with(".fetch")),
        "{:#?}",
        document.warnings
    );
}

// ---------------------------------------------------------------- the reference's examples

const EXAMPLE_1: &str = "format_version: 10
pipelines:
  hello-build:
    group: demo
    materials:
      src:
        git: https://git.example.com/hello.git
    stages:
      - build:
          resources: [linux]
          tasks:
            - exec: {command: make, arguments: [all]}
";

const EXAMPLE_2: &str = "format_version: 10
pipelines:
  shop-api:
    group: shop
    lock_behavior: unlockWhenFinished
    materials:
      code:
        git: https://git.example.com/shop/api.git
        branch: main
        shallow_clone: true
    stages:
      - build:
          clean_workspace: true
          jobs:
            compile:
              resources: [linux, rust]
              tasks:
                - exec: {command: cargo, arguments: [build, --release]}
      - test:
          jobs:
            unit:
              timeout: 20
              tasks:
                - exec: {command: cargo, arguments: [test]}
            lint:
              tasks:
                - script: |
                    cargo fmt --check
                    cargo clippy -- -D warnings
      - deploy:
          approval:
            type: manual
            allow_only_on_success: true
            roles: [release-managers]
          jobs:
            production:
              environment_variables: {TARGET: prod}
              tasks:
                - exec: {command: ./deploy.sh, arguments: [--target, prod]}
";

fn exec(command: &str, arguments: &[&str]) -> TaskConfig {
    TaskConfig {
        kind: TaskKind::Exec {
            command: command.into(),
            arguments: arguments.iter().map(|a| a.to_string()).collect(),
            working_directory: None,
        },
        run_if: RunIf::Passed,
        on_cancel: None,
    }
}

fn job(name: &str, tasks: Vec<TaskConfig>) -> JobConfig {
    JobConfig {
        name: name.into(),
        resources: vec![],
        timeout: None,
        run_instances: RunInstances::One,
        environment_variables: BTreeMap::new(),
        tabs: BTreeMap::new(),
        artifacts: vec![],
        tasks,
    }
}

fn stage(name: &str, jobs: Vec<JobConfig>) -> StageConfig {
    StageConfig {
        name: name.into(),
        fetch_materials: true,
        keep_artifacts: false,
        clean_workspace: false,
        approval: Approval::default(),
        environment_variables: BTreeMap::new(),
        jobs,
    }
}

fn git(name: &str, url: &str, branch: &str) -> Material {
    Material {
        name: name.into(),
        source: MaterialSource::Git(GitMaterial {
            url: url.into(),
            branch: branch.into(),
            shallow_clone: false,
            auto_update: true,
            destination: None,
            ignore: vec![],
            includes: vec![],
            username: None,
            password: None,
        }),
    }
}

fn pipeline(
    name: &str,
    group: &str,
    materials: Vec<Material>,
    stages: Vec<StageConfig>,
) -> PipelineConfig {
    PipelineConfig {
        name: name.into(),
        group: group.into(),
        label_template: "${COUNT}".into(),
        lock_behavior: LockBehavior::None,
        display_order: -1,
        timer: None,
        tracking_tool: None,
        environment_variables: BTreeMap::new(),
        parameters: BTreeMap::new(),
        materials,
        stages,
    }
}

#[test]
fn example_1_single_job_stage() {
    let document = ok(EXAMPLE_1);
    let mut build = job("build", vec![exec("make", &["all"])]);
    build.resources = vec!["linux".into()];
    let expected = pipeline(
        "hello-build",
        "demo",
        vec![git("src", "https://git.example.com/hello.git", "master")],
        vec![stage("build", vec![build])],
    );
    assert_eq!(document.format_version, 10);
    assert_eq!(document.pipelines, [expected]);
    assert_eq!(document.warnings, []);
}

#[test]
fn example_2_build_test_deploy_with_a_manual_gate() {
    let document = ok(EXAMPLE_2);
    let mut code = git("code", "https://git.example.com/shop/api.git", "main");
    if let MaterialSource::Git(g) = &mut code.source {
        g.shallow_clone = true;
    }
    let mut compile = job("compile", vec![exec("cargo", &["build", "--release"])]);
    compile.resources = vec!["linux".into(), "rust".into()];
    let mut build = stage("build", vec![compile]);
    build.clean_workspace = true;
    let mut unit = job("unit", vec![exec("cargo", &["test"])]);
    unit.timeout = Some(20);
    let lint = job(
        "lint",
        vec![TaskConfig {
            kind: TaskKind::Script {
                script: "cargo fmt --check\ncargo clippy -- -D warnings\n".into(),
            },
            run_if: RunIf::Passed,
            on_cancel: None,
        }],
    );
    let mut production = job(
        "production",
        vec![exec("./deploy.sh", &["--target", "prod"])],
    );
    production.environment_variables = BTreeMap::from([("TARGET".to_string(), "prod".to_string())]);
    let mut deploy = stage("deploy", vec![production]);
    deploy.approval = Approval {
        manual: true,
        allow_only_on_success: true,
        users: vec![],
        roles: vec!["release-managers".into()],
    };
    let mut expected = pipeline(
        "shop-api",
        "shop",
        vec![code],
        vec![build, stage("test", vec![unit, lint]), deploy],
    );
    expected.lock_behavior = LockBehavior::UnlockWhenFinished;
    assert_eq!(document.pipelines, [expected]);
    assert_eq!(document.warnings.len(), 1, "{:#?}", document.warnings);
    assert_warning(
        &document,
        "pipelines.shop-api.stages[2].deploy.approval.roles",
        &["release-managers", "no roles yet"],
    );
}

// ---------------------------------------------------------------- each kind of error

/// A one-pipeline document with `body` as its one job's extra lines (indented 10).
fn with_job(job_lines: &str) -> String {
    format!(
        "pipelines:\n  p:\n    group: g\n    stages:\n      - s:\n          jobs:\n            j:\n{}",
        job_lines
            .lines()
            .map(|l| format!("              {l}\n"))
            .collect::<String>()
    )
}

const JOB: &str = "pipelines.p.stages[0].s.jobs.j";

#[test]
fn exec_args_is_refused_pointing_at_arguments() {
    let issues = errors(&with_job(
        "tasks:\n  - exec:\n      command: ls\n      args: -la",
    ));
    assert_error(
        &issues,
        &format!("{JOB}.tasks[0].exec.args"),
        &["unknown key `args`", "did you mean `arguments`?"],
    );
    assert_eq!(issues[0].line, Some(11));
}

#[test]
fn exec_needs_a_command_and_arguments_as_a_list() {
    let issues = errors(&with_job(
        "tasks:\n  - exec:\n      arguments: [a]\n  - exec:\n      command: ls\n      arguments: -la",
    ));
    assert_error(
        &issues,
        &format!("{JOB}.tasks[0].exec.command"),
        &["`command` is required"],
    );
    assert_error(
        &issues,
        &format!("{JOB}.tasks[1].exec.arguments"),
        &["must be a list"],
    );
}

#[test]
fn exec_reads_every_field_and_scalars_as_text() {
    let document = ok(&with_job(
        "tasks:\n  - exec:\n      command: make\n      arguments: [1.10, 0755, yes, ~, '']\n      working_directory: src\n      run_if: any\n      on_cancel:\n        exec: {command: cleanup}",
    ));
    let task = &document.pipelines[0].stages[0].jobs[0].tasks[0];
    assert_eq!(
        task.kind,
        TaskKind::Exec {
            command: "make".into(),
            arguments: vec![
                "1.10".into(),
                "0755".into(),
                "yes".into(),
                "~".into(),
                "".into()
            ],
            working_directory: Some("src".into())
        }
    );
    assert_eq!(task.run_if, RunIf::Any);
    assert_eq!(task.on_cancel.as_deref(), Some(&exec("cleanup", &[])));
    let issues = errors(&with_job(
        "tasks:\n  - exec:\n      command: make\n      run_if: sometimes",
    ));
    assert_error(
        &issues,
        &format!("{JOB}.tasks[0].exec.run_if"),
        &["`sometimes`", "passed, failed, any"],
    );
    let issues = errors(&with_job(
        "tasks:\n  - exec:\n      command: make\n      on_cancel: [{exec: {command: a}}]",
    ));
    assert_error(
        &issues,
        &format!("{JOB}.tasks[0].exec.on_cancel"),
        &["one task"],
    );
}

#[test]
fn tasks_ferrocd_cannot_run_yet_are_accepted_with_a_warning() {
    let document = ok(&with_job(
        "tasks:\n  - fetch: {stage: a, job: b, source: c, is_file: Y}\n  - plugin:\n      configuration: {id: p, version: 1}\n      options: {k: 1}\n  - ant: {target: t}\n  - nant: {build_file: b}\n  - rake:",
    ));
    let tasks = &document.pipelines[0].stages[0].jobs[0].tasks;
    assert_eq!(
        tasks.iter().map(|t| t.kind.type_name()).collect::<Vec<_>>(),
        ["fetch", "plugin", "ant", "nant", "rake"]
    );
    assert!(matches!(
        &tasks[0].kind,
        TaskKind::Fetch {
            is_file: true,
            pipeline: None,
            ..
        }
    ));
    assert!(
        matches!(&tasks[1].kind, TaskKind::Plugin { id, version: Some(v), options } if id == "p" && v == "1" && options["k"] == "1")
    );
    for (i, kind) in ["plugin", "ant", "nant", "rake"].iter().enumerate() {
        assert_warning(
            &document,
            &format!("{JOB}.tasks[{}].{kind}", i + 1),
            &[kind, "cannot run it yet"],
        );
    }
    // The agent runs fetch tasks.
    assert!(
        !document.warnings.iter().any(|w| w.path.contains("fetch")),
        "{:#?}",
        document.warnings
    );
}

#[test]
fn unknown_keys_in_tasks_and_materials_are_errors_elsewhere_warnings() {
    let issues = errors(&with_job(
        "tasks:\n  - fetch: {stage: a, job: b, source: c, sauce: d}",
    ));
    assert_error(
        &issues,
        &format!("{JOB}.tasks[0].fetch.sauce"),
        &["unknown key `sauce`", "did you mean `source`?"],
    );
    let issues = errors(
        "pipelines:\n  p:\n    group: g\n    materials:\n      m: {git: u, brunch: x}\n    stages: [{s: {tasks: [script: x]}}]\n",
    );
    assert_error(
        &issues,
        "pipelines.p.materials.m.brunch",
        &["unknown key `brunch`", "`branch`"],
    );
    let document = ok(
        "pipelines:\n  p:\n    group: g\n    mystery: 1\n    stages:\n      - s:\n          roles: [a]\n          jobs:\n            j:\n              inputs: x\n              tasks: [script: x]\n",
    );
    assert_warning(&document, "pipelines.p.mystery", &["unknown key"]);
    assert_warning(
        &document,
        "pipelines.p.stages[0].s.roles",
        &["unknown key `roles`"],
    );
    assert_warning(
        &document,
        "pipelines.p.stages[0].s.jobs.j.inputs",
        &["unknown key `inputs`"],
    );
    let issues = errors("pipeline:\n  p: {}\n");
    assert_error(
        &issues,
        "pipeline",
        &["unknown key `pipeline`", "`pipelines`"],
    );
}

#[test]
fn one_key_maps_with_extra_keys_are_refused() {
    let issues = errors(
        "pipelines:\n  p:\n    group: g\n    stages:\n      - s:\n          tasks: [script: x]\n        t:\n          tasks: [script: y]\n",
    );
    assert_error(
        &issues,
        "pipelines.p.stages[0].t",
        &["one key (`s`)", "`t`"],
    );
    let issues = errors(&with_job(
        "tasks:\n  - exec:\n      command: a\n    run_if: any",
    ));
    assert_error(
        &issues,
        &format!("{JOB}.tasks[0].run_if"),
        &["one key (`exec`)", "`run_if`"],
    );
    let issues = errors(&with_job(
        "tasks: [script: x]\nartifacts:\n  - build:\n      source: a\n    test:\n      source: b",
    ));
    assert_error(
        &issues,
        &format!("{JOB}.artifacts[0].test"),
        &["one key (`build`)"],
    );
}

#[test]
fn nested_task_lists_flatten_at_any_depth_stage_lists_one_level() {
    let document = ok(&with_job(
        "tasks:\n  - script: a\n  - - script: b\n    - - script: c\n  - script: d",
    ));
    let scripts: Vec<String> = document.pipelines[0].stages[0].jobs[0]
        .tasks
        .iter()
        .map(|t| match &t.kind {
            TaskKind::Script { script } => script.clone(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(scripts, ["a", "b", "c", "d"]);
    let stages = "common:\n  two: &two\n    - b: {tasks: [script: b]}\n    - c: {tasks: [script: c]}\npipelines:\n  p:\n    group: g\n    stages:\n      - a: {tasks: [script: a]}\n      - *two\n";
    let names: Vec<String> = ok(stages).pipelines[0]
        .stages
        .iter()
        .map(|s| s.name.clone())
        .collect();
    assert_eq!(names, ["a", "b", "c"]);
    let issues = errors(
        "pipelines:\n  p:\n    group: g\n    stages:\n      - - - a: {tasks: [script: a]}\n",
    );
    assert_error(
        &issues,
        "pipelines.p.stages[0][0]",
        &["expected a stage", "found a list"],
    );
}

#[test]
fn stages_need_jobs_or_tasks_and_jobs_need_tasks() {
    let issues = errors(
        "pipelines:\n  p:\n    group: g\n    stages:\n      - empty:\n          clean_workspace: true\n      - s:\n          jobs:\n            j:\n              resources: [a]\n",
    );
    assert_error(
        &issues,
        "pipelines.p.stages[0].empty",
        &["neither `jobs` nor `tasks`"],
    );
    assert_error(
        &issues,
        "pipelines.p.stages[1].s.jobs.j.tasks",
        &["job j has no tasks"],
    );
    let issues = errors("pipelines:\n  p:\n    group: g\n");
    assert_error(&issues, "pipelines.p.stages", &["no stages"]);
}

#[test]
fn the_single_job_shorthand_is_one_job_named_after_the_stage() {
    let document = ok(
        "pipelines:\n  p:\n    group: g\n    stages:\n      - build:\n          clean_workspace: yes\n          resources: [linux]\n          timeout: 0\n          run_instances: all\n          tasks: [script: make]\n",
    );
    let stage = &document.pipelines[0].stages[0];
    assert!(stage.clean_workspace);
    assert_eq!(stage.jobs.len(), 1);
    assert_eq!(
        (
            stage.jobs[0].name.as_str(),
            stage.jobs[0].timeout,
            stage.jobs[0].run_instances
        ),
        ("build", Some(0), RunInstances::All)
    );
    assert_eq!(stage.jobs[0].resources, ["linux"]);
}

#[test]
fn jobs_as_a_list_is_refused() {
    let issues = errors(
        "pipelines:\n  p:\n    group: g\n    stages:\n      - s:\n          jobs:\n            - j:\n                tasks: [script: x]\n",
    );
    assert_error(
        &issues,
        "pipelines.p.stages[0].s.jobs",
        &["must be a map", "not a list"],
    );
}

#[test]
fn approval_short_and_long_forms() {
    let stage_with = |approval: &str| {
        format!(
            "pipelines:\n  p:\n    group: g\n    stages:\n      - s:\n          approval: {approval}\n          tasks: [script: x]\n"
        )
    };
    assert!(
        ok(&stage_with("manual")).pipelines[0].stages[0]
            .approval
            .manual
    );
    assert!(
        !ok(&stage_with("success")).pipelines[0].stages[0]
            .approval
            .manual
    );
    assert!(
        !ok(&stage_with("auto")).pipelines[0].stages[0]
            .approval
            .manual
    );
    assert_error(
        &errors(&stage_with("Manual")),
        "pipelines.p.stages[0].s.approval",
        &["`Manual`", "manual, success, auto"],
    );
    let long = ok(&stage_with(
        "{type: manual, allow_only_on_success: on, users: [ann, bob]}",
    ));
    assert_eq!(
        long.pipelines[0].stages[0].approval,
        Approval {
            manual: true,
            allow_only_on_success: true,
            users: vec!["ann".into(), "bob".into()],
            roles: vec![]
        }
    );
    assert_error(
        &errors(&stage_with("{users: [ann]}")),
        "pipelines.p.stages[0].s.approval.type",
        &["`type` is required"],
    );
    assert_error(
        &errors(&stage_with("{type: later}")),
        "pipelines.p.stages[0].s.approval.type",
        &["`later`"],
    );
}

#[test]
fn params_are_substituted_everywhere_in_a_pipeline() {
    let text = "pipelines:
  p:
    group: g
    label_template: '#{prefix}-${COUNT}'
    parameters:
      prefix: rel
      up: upstream
      stage: build
      empty:
    environment_variables:
      HASH: 'a##b#{prefix}'
      COMMENT: #{prefix}
    materials:
      dep:
        pipeline: '#{up}'
        stage: '#{stage}'
    stages:
      - s:
          tasks:
            - fetch: {pipeline: '#{up}', stage: '#{stage}', job: j, source: '#{prefix}/x'}
            - exec: {command: 'echo', arguments: ['#{prefix}#{empty}']}
  upstream:
    group: g
    stages: [{build: {tasks: [script: x]}}]
";
    let document = ok(text);
    let p = &document.pipelines[0];
    assert_eq!(p.label_template, "rel-${COUNT}");
    assert_eq!(p.environment_variables["HASH"], "a#brel");
    // Unquoted, `#{prefix}` is a YAML comment: the value is empty, as GoCD reads it.
    assert_eq!(p.environment_variables["COMMENT"], "");
    assert_warning(
        &document,
        "pipelines.p.environment_variables.COMMENT",
        &["the value is empty", "YAML comment", "'#{…}'"],
    );
    assert_eq!(p.parameters["empty"], "");
    assert!(
        matches!(&p.materials[0].source, MaterialSource::Dependency { pipeline, stage, .. } if pipeline == "upstream" && stage == "build")
    );
    assert!(
        matches!(&p.stages[0].jobs[0].tasks[0].kind, TaskKind::Fetch { pipeline: Some(u), stage, source, .. } if u == "upstream" && stage == "build" && source == "rel/x")
    );
    assert_eq!(p.stages[0].jobs[0].tasks[1], exec("echo", &["rel"]));
    assert_eq!(check_sources(&[("a", &document)]), []);
    let issues = errors(&with_job("tasks:\n  - exec: {command: '#{tool}'}"));
    assert_error(
        &issues,
        &format!("{JOB}.tasks[0].exec.command"),
        &["parameter `tool` is not defined"],
    );
    let issues = errors(&with_job("tasks:\n  - exec:\n      command: #{tool}"));
    assert_error(
        &issues,
        &format!("{JOB}.tasks[0].exec.command"),
        &["`command` is required", "starts a YAML comment"],
    );
}

#[test]
fn booleans_are_yaml_1_1_words_and_other_text_is_refused() {
    let stage_with = |value: &str| {
        format!(
            "pipelines:\n  p:\n    group: g\n    stages:\n      - s:\n          clean_workspace: {value}\n          tasks: [script: x]\n"
        )
    };
    for (word, expected) in [
        ("Y", true),
        ("on", true),
        ("TRUE", true),
        ("off", false),
        ("No", false),
        ("n", false),
    ] {
        assert_eq!(
            ok(&stage_with(word)).pipelines[0].stages[0].clean_workspace,
            expected,
            "{word}"
        );
    }
    assert_error(
        &errors(&stage_with("maybe")),
        "pipelines.p.stages[0].s.clean_workspace",
        &["expected a boolean", "`maybe`"],
    );
    assert_error(
        &errors(&stage_with("1")),
        "pipelines.p.stages[0].s.clean_workspace",
        &["expected a boolean", "`1`"],
    );
}

#[test]
fn string_fields_keep_the_source_text() {
    let document = ok(&with_job(
        "environment_variables: {A: 1.10, B: 0755, C: yes, D: ~, E: 1e3}\ntasks: [script: x]",
    ));
    let vars = &document.pipelines[0].stages[0].jobs[0].environment_variables;
    assert_eq!(
        vars.values().map(String::as_str).collect::<Vec<_>>(),
        ["1.10", "0755", "yes", "~", "1e3"]
    );
}

#[test]
fn integers_are_checked() {
    let issues = errors(&with_job(
        "timeout: -1\nrun_instances: 0\ntasks: [script: x]",
    ));
    assert_error(
        &issues,
        &format!("{JOB}.timeout"),
        &["`-1`", "least allowed, 0"],
    );
    assert_error(&issues, &format!("{JOB}.run_instances"), &["`0`", "`all`"]);
    let issues = errors(&with_job(
        "timeout: soon\nrun_instances: 3\ntasks: [script: x]",
    ));
    assert_error(
        &issues,
        &format!("{JOB}.timeout"),
        &["expected an integer", "`soon`"],
    );
    let document = ok(&with_job("run_instances: '3'\ntasks: [script: x]"));
    assert_eq!(
        document.pipelines[0].stages[0].jobs[0].run_instances,
        RunInstances::Count(3)
    );
    let issues = errors(
        "pipelines:\n  p:\n    group: g\n    display_order: first\n    stages: [{s: {tasks: [script: x]}}]\n",
    );
    assert_error(&issues, "pipelines.p.display_order", &["`first`"]);
}

#[test]
fn format_version_is_1_to_10_and_any_key_at_any_version() {
    assert_eq!(
        ok("format_version: 3\nenvironments: {e: {}}\n").format_version,
        3
    );
    assert_eq!(
        ok("FORMAT_VERSION: '10'\nenvironments: {e: {}}\n").format_version,
        10
    );
    assert_eq!(ok("environments: {e: {}}\n").format_version, 1);
    assert_eq!(
        ok("format_version:\nenvironments: {e: {}}\n").format_version,
        1
    );
    for bad in ["0", "11", "two", "1.5"] {
        assert_error(
            &errors(&format!(
                "format_version: {bad}\nenvironments: {{e: {{}}}}\n"
            )),
            "format_version",
            &[&format!("`{bad}`"), "1 to 10"],
        );
    }
    // `locking` (format 1) and `ignore_for_scheduling` (format 9) under format 1 and 10 alike.
    for version in [1, 10] {
        let text = format!(
            "format_version: {version}\npipelines:\n  up: {{group: g, stages: [{{s: {{tasks: [script: x]}}}}]}}\n  p:\n    group: g\n    locking: on\n    materials:\n      up: {{pipeline: up, stage: s, ignore_for_scheduling: true}}\n    stages: [{{s: {{tasks: [script: x]}}}}]\n"
        );
        let document = ok(&text);
        assert_eq!(
            document.pipelines[1].lock_behavior,
            LockBehavior::LockOnFailure
        );
        assert!(matches!(
            document.pipelines[1].materials[0].source,
            MaterialSource::Dependency {
                ignore_for_scheduling: true,
                ..
            }
        ));
    }
}

#[test]
fn lock_behavior_takes_its_three_values() {
    let with = |value: &str| {
        format!(
            "pipelines:\n  p:\n    group: g\n    lock_behavior: {value}\n    stages: [{{s: {{tasks: [script: x]}}}}]\n"
        )
    };
    assert_eq!(
        ok(&with("lockOnFailure")).pipelines[0].lock_behavior,
        LockBehavior::LockOnFailure
    );
    assert_eq!(
        ok(&with("none")).pipelines[0].lock_behavior,
        LockBehavior::None
    );
    assert_error(
        &errors(&with("always")),
        "pipelines.p.lock_behavior",
        &["`always`", "lockOnFailure, unlockWhenFinished, none"],
    );
}

#[test]
fn templates_elastic_profiles_and_ciphertext_are_refused_naming_them() {
    let issues = errors("pipelines:\n  p:\n    group: g\n    template: t1\n");
    assert_error(
        &issues,
        "pipelines.p.template",
        &["pipeline p uses server-side template t1; ferrocd has no templates"],
    );
    assert_eq!(
        issues.len(),
        1,
        "a template pipeline needs no stages: {issues:#?}"
    );
    let issues = errors(&with_job("elastic_profile_id: k8s\ntasks: [script: x]"));
    assert_error(
        &issues,
        &format!("{JOB}.elastic_profile_id"),
        &["`k8s`", "no elastic agents"],
    );
    let issues = errors(
        "environments:\n  e:\n    secure_variables: {S: 'AES:x'}\npipelines:\n  p:\n    group: g\n    secure_variables: {T: 'AES:y'}\n    materials:\n      m: {git: u, encrypted_password: 'AES:z'}\n    stages: [{s: {secure_variables: {U: 'AES:u'}, tasks: [script: x]}}]\n",
    );
    assert_error(
        &issues,
        "environments.e.secure_variables",
        &["(S)", "ciphertext", "GoCD server"],
    );
    assert_error(
        &issues,
        "pipelines.p.secure_variables",
        &["(T)", "ciphertext"],
    );
    assert_error(
        &issues,
        "pipelines.p.materials.m.encrypted_password",
        &["`encrypted_password`", "ciphertext"],
    );
    assert_error(
        &issues,
        "pipelines.p.stages[0].s.secure_variables",
        &["(U)", "ciphertext"],
    );
    assert_eq!(issues.len(), 4, "{issues:#?}");
}

#[test]
fn plugin_materials_packages_and_external_artifacts_name_what_they_need() {
    let issues = errors(
        "pipelines:\n  p:\n    group: g\n    materials:\n      a: {scm: 1234-abcd}\n      b: {plugin_configuration: {id: git-path, version: 1}, options: {url: u}}\n      c: {package: pkg-9}\n    stages: [{s: {tasks: [script: x]}}]\n",
    );
    assert_error(
        &issues,
        "pipelines.p.materials.a",
        &["pluggable SCM `1234-abcd`", "SCM id"],
    );
    assert_error(
        &issues,
        "pipelines.p.materials.b",
        &["SCM plugin `git-path`"],
    );
    assert_error(&issues, "pipelines.p.materials.c", &["package `pkg-9`"]);
    assert_eq!(issues.len(), 3, "{issues:#?}");
    let issues = errors(&with_job(
        "artifacts:\n  - external: {id: img, store_id: hub}\ntasks: [script: x]",
    ));
    assert_error(
        &issues,
        &format!("{JOB}.artifacts[0].external"),
        &["artifact plugin store"],
    );
    let issues = errors(&with_job(
        "tasks:\n  - fetch: {artifact_origin: external, stage: a, job: b, artifact_id: x}",
    ));
    assert_error(
        &issues,
        &format!("{JOB}.tasks[0].fetch.artifact_origin"),
        &["external artifact", "artifact plugin"],
    );
}

#[test]
fn git_materials_and_their_defaults() {
    let document = ok(
        "format_version: 10\npipelines:\n  p:\n    group: g\n    materials:\n      a: {type: git, url: 'https://x/a.git', destination: a, blacklist: ['*.md'], auto_update: false, username: bot, password: pw}\n      b: {git: 'https://x/b.git', destination: b, whitelist: [src], shallow_clone: yes, branch: dev}\n    stages: [{s: {tasks: [script: x]}}]\n",
    );
    let [a, b] = &document.pipelines[0].materials[..] else {
        panic!()
    };
    let MaterialSource::Git(a) = &a.source else {
        panic!()
    };
    let MaterialSource::Git(b) = &b.source else {
        panic!()
    };
    assert_eq!(
        (
            a.url.as_str(),
            a.branch.as_str(),
            a.auto_update,
            a.shallow_clone
        ),
        ("https://x/a.git", "master", false, false)
    );
    assert_eq!(
        (
            a.ignore.clone(),
            a.username.as_deref(),
            a.password.as_deref()
        ),
        (vec!["*.md".to_string()], Some("bot"), Some("pw"))
    );
    assert_eq!(
        (b.branch.as_str(), b.shallow_clone, b.includes.clone()),
        ("dev", true, vec!["src".to_string()])
    );
    let issues = errors(
        "pipelines:\n  p:\n    group: g\n    materials:\n      a: {git: u1}\n      b: {git: u2, destination: x}\n      c: {svn: u3, destination: x}\n      d: {git: u4, ignore: [a], includes: [b], destination: d}\n    stages: [{s: {tasks: [script: x]}}]\n",
    );
    assert_error(
        &issues,
        "pipelines.p.materials.a.destination",
        &["needs a `destination`", "several SCM materials"],
    );
    assert_error(
        &issues,
        "pipelines.p.materials.c.destination",
        &["`x`", "another material's"],
    );
    assert_error(
        &issues,
        "pipelines.p.materials.d",
        &["`ignore` or with `includes`, not both"],
    );
    let issues = errors(
        "pipelines:\n  p:\n    group: g\n    materials:\n      a: {type: git}\n      b: {branch: x}\n      c: {type: cvs}\n    stages: [{s: {tasks: [script: x]}}]\n",
    );
    assert_error(
        &issues,
        "pipelines.p.materials.a.url",
        &["`url` is required"],
    );
    assert_error(&issues, "pipelines.p.materials.b", &["has no type"]);
    assert_error(&issues, "pipelines.p.materials.c.type", &["`cvs`"]);
}

#[test]
fn other_materials_svn_hg_p4_tfs_and_the_config_repo() {
    let document = ok(
        "pipelines:\n  p:\n    group: g\n    materials:\n      s: {svn: 'https://svn/x', username: u, check_externals: true, destination: s}\n      h: {type: hg, url: 'https://hg/x', destination: h}\n      c: {type: configrepo, blacklist: [docs], destination: c}\n      d: {pipeline: up, stage: s}\n    stages: [{s: {tasks: [script: x]}}]\n  up: {group: g, stages: [{s: {tasks: [script: x]}}]}\n",
    );
    let materials = &document.pipelines[0].materials;
    assert!(
        matches!(&materials[0].source, MaterialSource::Scm { scm: ScmKind::Svn, url, attributes, .. } if url == "https://svn/x" && attributes["username"] == "u" && attributes["check_externals"] == "true")
    );
    assert!(
        matches!(&materials[1].source, MaterialSource::Scm { scm: ScmKind::Hg, destination: Some(d), .. } if d == "h")
    );
    assert!(
        matches!(&materials[2].source, MaterialSource::ConfigRepo { ignore, .. } if ignore == &["docs"])
    );
    let issues = errors(
        "pipelines:\n  p:\n    group: g\n    materials:\n      d: {pipeline: up}\n    stages: [{s: {tasks: [script: x]}}]\n",
    );
    assert_error(
        &issues,
        "pipelines.p.materials.d.stage",
        &["`stage` is required"],
    );
}

#[test]
fn names_are_checked_and_duplicates_found_ignoring_case() {
    let issues = errors(
        "pipelines:\n  'bad name':\n    group: g\n    stages: [{s: {tasks: [script: x]}}]\n  p:\n    group: g\n    materials:\n      M: {git: a, destination: a}\n      m: {git: b, destination: b}\n    environment_variables: {X: 1, x: 2}\n    stages:\n      - Build: {tasks: [script: x]}\n      - build:\n          jobs:\n            J: {tasks: [script: x]}\n            j: {tasks: [script: x]}\n  P:\n    group: g\n    stages: [{s: {tasks: [script: x]}}]\n",
    );
    assert_error(
        &issues,
        "pipelines.bad name",
        &["`bad name`", "letters, digits"],
    );
    assert_error(
        &issues,
        "pipelines.p.materials.m",
        &["material `m` appears twice"],
    );
    assert_error(
        &issues,
        "pipelines.p.environment_variables.x",
        &["duplicate name `x`"],
    );
    assert_error(
        &issues,
        "pipelines.p.stages[1].build",
        &["stage `build` appears twice"],
    );
    assert_error(
        &issues,
        "pipelines.P",
        &["pipeline `P` appears twice in the document"],
    );
    let long = "x".repeat(256);
    let issues = errors(&format!("environments:\n  {long}: {{}}\n"));
    assert_error(
        &issues,
        &format!("environments.{long}"),
        &["longer than 255"],
    );
    let issues = errors(
        "pipelines:\n  p:\n    group: g\n    stages:\n      - s:\n          jobs:\n            J: {tasks: [script: x]}\n            j: {tasks: [script: x]}\n",
    );
    assert_error(
        &issues,
        "pipelines.p.stages[0].s.jobs.j",
        &["job `j` appears twice"],
    );
}

#[test]
fn group_is_required_materials_are_optional_but_a_map() {
    assert_error(
        &errors("pipelines:\n  p:\n    stages: [{s: {tasks: [script: x]}}]\n"),
        "pipelines.p.group",
        &["`group` is required"],
    );
    let document = ok("pipelines:\n  p:\n    group: g\n    stages: [{s: {tasks: [script: x]}}]\n");
    assert!(document.pipelines[0].materials.is_empty());
    assert_eq!(
        (
            document.pipelines[0].label_template.as_str(),
            document.pipelines[0].display_order
        ),
        ("${COUNT}", -1)
    );
}

#[test]
fn timers_and_tracking_tools() {
    let document = ok(
        "pipelines:\n  p:\n    group: g\n    timer: {spec: '0 0 22 ? * MON-FRI', only_on_changes: yes}\n    tracking_tool: {link: 'http://t/${ID}', regex: 'x-(\\d+)'}\n    stages: [{s: {tasks: [script: x]}}]\n",
    );
    assert_eq!(
        document.pipelines[0].timer,
        Some(TimerConfig {
            spec: "0 0 22 ? * MON-FRI".into(),
            only_on_changes: true
        })
    );
    assert_eq!(
        document.pipelines[0].tracking_tool.as_ref().unwrap().link,
        "http://t/${ID}"
    );
    let issues = errors(
        "pipelines:\n  p:\n    group: g\n    timer: {spec: '* * *'}\n    tracking_tool: {link: 'http://t/', regex: x}\n    stages: [{s: {tasks: [script: x]}}]\n",
    );
    assert_error(&issues, "pipelines.p.timer.spec", &["`* * *`", "6 or 7"]);
    assert_error(&issues, "pipelines.p.tracking_tool.link", &["${ID}"]);
    let issues = errors(
        "pipelines:\n  p:\n    group: g\n    timer: {spec: '0 0 12 ? * 6L'}\n    stages: [{s: {tasks: [script: x]}}]\n",
    );
    assert_error(&issues, "pipelines.p.timer.spec", &["`L`", "not support"]);
}

#[test]
fn environments_read_variables_pipelines_and_agents() {
    let document = ok(
        "environments:\n  prod:\n    environment_variables: {A: 'on'}\n    pipelines: [p]\n    agents: [uuid-1]\n",
    );
    assert_eq!(
        document.environments,
        [EnvironmentConfig {
            name: "prod".into(),
            environment_variables: BTreeMap::from([("A".to_string(), "on".to_string())]),
            pipelines: vec!["p".into()],
            agents: vec!["uuid-1".into()],
        }]
    );
}

#[test]
fn the_document_itself() {
    assert_error(&errors(""), "(document)", &["empty"]);
    assert_error(&errors("# nothing\n"), "(document)", &["empty"]);
    assert_error(&errors("- a\n- b\n"), "(document)", &["found a list"]);
    assert_error(
        &errors("pipelines: {}\nother: 1\n"),
        "other",
        &["unknown key `other`"],
    );
    assert_error(
        &errors("pipelines:\n  p: {group: g}\n  p: {group: h}\n"),
        "pipelines.p",
        &["duplicate key `p`"],
    );
    assert_error(
        &errors("pipelines: !custom {}\n"),
        "pipelines",
        &["custom tag"],
    );
    let issues = errors("pipelines:\n  p: [unclosed\n");
    assert!(
        issues[0].message.starts_with("not valid YAML") && issues[0].line.is_some(),
        "{issues:#?}"
    );
    // `common` holds anchors and is otherwise ignored; the second document is not read.
    let document = ok(
        "common:\n  t: &t {tasks: [script: x]}\npipelines:\n  p: {group: g, stages: [{s: *t}]}\n---\nnot: [read\n",
    );
    assert_eq!(document.pipelines[0].stages[0].jobs[0].name, "s");
}

#[test]
fn many_errors_are_collected_at_once() {
    let issues = errors(
        "pipelines:\n  a:\n    stages: [{s: {tasks: [script: x]}}]\n  b:\n    group: g\n    stages: [{s: {clean_workspace: maybe, tasks: [{exec: {args: x}}]}}]\n",
    );
    assert_error(&issues, "pipelines.a.group", &["required"]);
    assert_error(
        &issues,
        "pipelines.b.stages[0].s.clean_workspace",
        &["`maybe`"],
    );
    assert_error(
        &issues,
        "pipelines.b.stages[0].s.tasks[0].exec.args",
        &["arguments"],
    );
    assert_error(
        &issues,
        "pipelines.b.stages[0].s.tasks[0].exec.command",
        &["required"],
    );
}

#[test]
fn merge_keys_that_repeat_a_key_are_duplicates() {
    let issues = errors(
        "common:\n  base: &base {group: g, stages: [{s: {tasks: [script: x]}}]}\npipelines:\n  p:\n    <<: *base\n    group: h\n",
    );
    assert_error(&issues, "pipelines.p.group", &["duplicate key `group`"]);
    let document = ok(
        "common:\n  base: &base {group: g, stages: [{s: {tasks: [script: x]}}]}\npipelines:\n  p:\n    <<: *base\n    label_template: x\n",
    );
    assert_eq!(document.pipelines[0].group, "g");
}

#[test]
fn alias_bombs_are_refused_quickly() {
    let mut text =
        String::from("common:\n  a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
    for i in 1..12 {
        let p = format!("*a{}", i - 1);
        text.push_str(&format!("  a{i}: &a{i} [{}]\n", [p.as_str(); 9].join(", ")));
    }
    text.push_str("pipelines: {}\n");
    let started = std::time::Instant::now();
    let issues = errors(&text);
    assert!(
        started.elapsed() < std::time::Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert!(
        issues[0].message.contains("more than 100000 nodes"),
        "{issues:#?}"
    );
    assert!(issues[0].path.starts_with("common.a"), "{issues:#?}");
}

// ---------------------------------------------------------------- across sources

/// Checks a source `a.gocd.yaml` defining pipeline `up` (stage `build`) with a second one,
/// `b.gocd.yaml`, holding `b`.
fn check_with_upstream(b: &str) -> Vec<(usize, ConfigIssue)> {
    let a = ok("pipelines:\n  up:\n    group: g\n    stages: [{build: {tasks: [script: x]}}]\n");
    let b = ok(b);
    check_sources(&[("a.gocd.yaml", &a), ("b.gocd.yaml", &b)])
}

/// Some issue is on source `source` at `path` and its message holds `words`.
#[track_caller]
fn assert_sourced(issues: &[(usize, ConfigIssue)], source: usize, path: &str, words: &str) {
    assert!(
        issues
            .iter()
            .any(|(s, i)| *s == source && i.path == path && i.message.contains(words)),
        "no issue on source {source} at {path} saying {words:?} in {issues:#?}"
    );
}

#[test]
fn a_pipeline_in_two_sources_is_an_error_on_the_later() {
    let issues =
        check_with_upstream("pipelines:\n  UP: {group: g, stages: [{s: {tasks: [script: x]}}]}\n");
    assert_eq!(issues.len(), 1, "{issues:#?}");
    assert_sourced(
        &issues,
        1,
        "pipelines.UP",
        "pipeline UP is also defined in a.gocd.yaml",
    );
}

#[test]
fn dependencies_must_name_a_defined_pipeline_and_stage() {
    let issues = check_with_upstream(
        "pipelines:\n  down:\n    group: g\n    materials:\n      m1: {pipeline: UP, stage: BUILD}\n      m2: {pipeline: up, stage: deploy}\n      m3: {pipeline: nowhere, stage: s}\n    stages: [{s: {tasks: [script: x]}}]\n",
    );
    assert_eq!(issues.len(), 2, "{issues:#?}");
    for (source, path, words) in [
        (
            1,
            "pipelines.down.materials.m2.stage",
            "upstream pipeline up has no stage deploy",
        ),
        (
            1,
            "pipelines.down.materials.m3.pipeline",
            "upstream pipeline nowhere is not defined",
        ),
    ] {
        assert_sourced(&issues, source, path, words);
    }
}

#[test]
fn dependency_cycles_are_named() {
    let text = "pipelines:\n  a: {group: g, materials: {m: {pipeline: c, stage: s}}, stages: [{s: {tasks: [script: x]}}]}\n  b: {group: g, materials: {m: {pipeline: a, stage: s}}, stages: [{s: {tasks: [script: x]}}]}\n  c: {group: g, materials: {m: {pipeline: b, stage: s}}, stages: [{s: {tasks: [script: x]}}]}\n  d: {group: g, materials: {m: {pipeline: c, stage: s}}, stages: [{s: {tasks: [script: x]}}]}\n  self: {group: g, materials: {m: {pipeline: self, stage: s}}, stages: [{s: {tasks: [script: x]}}]}\n";
    let document = ok(text);
    let issues = check_sources(&[("x", &document)]);
    assert_eq!(issues.len(), 2, "{issues:#?}");
    for (source, path, words) in [
        (
            0,
            "pipelines.a.materials",
            "dependency cycle: a → c → b → a",
        ),
        (
            0,
            "pipelines.self.materials",
            "dependency cycle: self → self",
        ),
    ] {
        assert_sourced(&issues, source, path, words);
    }
}

#[test]
fn environments_must_name_defined_pipelines_once() {
    let issues = check_with_upstream(
        "environments:\n  e1: {pipelines: [up, ghost]}\n  e2: {pipelines: [UP]}\n",
    );
    assert_eq!(issues.len(), 2, "{issues:#?}");
    for (source, path, words) in [
        (
            1,
            "environments.e1.pipelines",
            "names pipeline ghost, which is not defined",
        ),
        (1, "environments.e2.pipelines", "in environments e1 and e2"),
    ] {
        assert_sourced(&issues, source, path, words);
    }
}

// ---------------------------------------------------------------- properties

fn check_issues(result: &Result<ConfigDocument, Vec<ConfigIssue>>) -> Result<(), TestCaseError> {
    let issues = match result {
        Ok(document) => &document.warnings,
        Err(issues) => {
            prop_assert!(!issues.is_empty());
            issues
        }
    };
    for issue in issues {
        prop_assert!(!issue.path.is_empty(), "{issue:?}");
        prop_assert!(!issue.message.is_empty(), "{issue:?}");
    }
    Ok(())
}

const PIECES: &[&str] = &[
    "pipelines",
    "stages",
    "jobs",
    "tasks",
    "exec",
    "command",
    "arguments",
    "script",
    "group",
    "materials",
    "git",
    "pipeline",
    "stage",
    "approval",
    "manual",
    "environments",
    "common",
    "<<",
    "format_version",
    ":",
    ": ",
    "- ",
    "\n",
    "\n  ",
    "\n    ",
    "  ",
    "[",
    "]",
    "{",
    "}",
    ",",
    "&a",
    "*a",
    "&b",
    "*b",
    "#",
    "#{p}",
    "##",
    "'",
    "\"",
    "!",
    "!!str",
    "|",
    ">",
    "---",
    "...",
    "~",
    "yes",
    "1.10",
    "x",
    "é",
    "\t",
    "?",
    "%YAML 1.2\n",
];

/// A value of GoCD's shape, more or less: maps with its keys and others, lists, scalars.
fn yaml_value() -> impl Strategy<Value = String> {
    let key = prop::sample::select(vec![
        "pipelines",
        "group",
        "stages",
        "jobs",
        "tasks",
        "exec",
        "command",
        "arguments",
        "script",
        "materials",
        "git",
        "pipeline",
        "stage",
        "approval",
        "type",
        "environments",
        "format_version",
        "timeout",
        "run_instances",
        "resources",
        "secure_variables",
        "template",
        "parameters",
        "\"q\"",
        "<<",
        "x",
        "X",
        "fetch",
        "rake",
        "artifacts",
        "build",
    ]);
    let scalar = prop::sample::select(vec![
        "a", "1", "0", "-1", "yes", "manual", "all", "'#{p}'", "'##'", "''", "~", "\"x y\"", "10",
        "success",
    ]);
    scalar
        .prop_map(str::to_string)
        .prop_recursive(5, 64, 6, move |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..5)
                    .prop_map(|items| format!("[{}]", items.join(", "))),
                prop::collection::vec((key.clone(), inner), 0..5).prop_map(|entries| format!(
                    "{{{}}}",
                    entries
                        .iter()
                        .map(|(k, v)| format!("{k}: {v}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                )),
            ]
        })
}

/// A pipeline as generated: (name, stages of (name, clean_workspace word, manual, jobs of
/// (name, tasks of (command, arguments)))).
type GeneratedJob = (String, Vec<(String, Vec<String>)>);
type GeneratedStage = (String, (String, bool), bool, Vec<GeneratedJob>);

fn generated_name() -> impl Strategy<Value = String> {
    "[A-Za-z0-9_.-]{1,12}"
}

/// Any printable text on one line (YAML allows no control characters), written
/// single-quoted: it must come back as written.
fn generated_text() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "1.10", "0755", "yes", "~", "null", "-c", "#{x}", "##", "a: b", "- x", "", " lead",
            "it's"
        ])
        .prop_map(str::to_string),
        "[ -~äé→]{0,20}",
    ]
}

fn boolean_word() -> impl Strategy<Value = (String, bool)> {
    (
        prop::sample::select(vec![
            ("true", true),
            ("yes", true),
            ("y", true),
            ("on", true),
            ("false", false),
            ("no", false),
            ("n", false),
            ("off", false),
        ]),
        any::<bool>(),
    )
        .prop_map(|((word, value), upper)| {
            (
                if upper {
                    word.to_uppercase()
                } else {
                    word.to_string()
                },
                value,
            )
        })
}

fn generated_stages() -> impl Strategy<Value = Vec<GeneratedStage>> {
    let task = (
        generated_text(),
        prop::collection::vec(generated_text(), 0..4),
    );
    let job = (generated_name(), prop::collection::vec(task, 1..4));
    let stage = (
        generated_name(),
        boolean_word(),
        any::<bool>(),
        prop::collection::vec(job, 1..3),
    );
    prop::collection::vec(stage, 1..4)
}

fn quoted(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// Block-style YAML for the generated stages of pipeline `p`; names get their index so
/// they are unique ignoring case.
fn render(stages: &[GeneratedStage]) -> String {
    let mut out = String::from("pipelines:\n  p:\n    group: g\n    stages:\n");
    for (i, (stage, (word, _), manual, jobs)) in stages.iter().enumerate() {
        let approval = if *manual { "manual" } else { "success" };
        out.push_str(&format!("      - {stage}-{i}:\n          clean_workspace: {word}\n          approval: {approval}\n          jobs:\n"));
        for (k, (job, tasks)) in jobs.iter().enumerate() {
            out.push_str(&format!("            {job}-{k}:\n              tasks:\n"));
            for (command, arguments) in tasks {
                out.push_str(&format!("                - exec:\n                    command: {}\n                    arguments:\n", quoted(command)));
                for argument in arguments {
                    out.push_str(&format!("                      - {}\n", quoted(argument)));
                }
            }
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn yaml_ish_text_never_panics(pieces in prop::collection::vec(prop::sample::select(PIECES), 0..80)) {
        let text: String = pieces.concat();
        check_issues(&parse_document(&text))?;
    }

    #[test]
    fn structured_yaml_never_panics(value in yaml_value(), version in 0u32..12) {
        let text = format!("format_version: {version}\npipelines: {value}\n");
        let result = parse_document(&text);
        check_issues(&result)?;
        if let Ok(document) = &result {
            prop_assert!((1..=10).contains(&document.format_version));
            let refs = [("one", document)];
            for (source, issue) in check_sources(&refs) {
                prop_assert_eq!(source, 0);
                prop_assert!(!issue.path.is_empty() && !issue.message.is_empty());
            }
        }
    }

    #[test]
    fn generated_pipelines_read_back_as_written(stages in generated_stages()) {
        let text = render(&stages);
        // `#{x}` is an undefined parameter; `##` a literal `#`: both resolved as GoCD does.
        let resolves = |t: &str| substitute(t, &BTreeMap::new());
        let all_texts = stages.iter().flat_map(|(_, _, _, jobs)| jobs).flat_map(|(_, tasks)| tasks)
            .flat_map(|(command, arguments)| std::iter::once(command).chain(arguments));
        let undefined = all_texts.clone().any(|t| resolves(t).is_err());
        let empty_command = stages.iter().flat_map(|(_, _, _, jobs)| jobs).flat_map(|(_, tasks)| tasks).any(|(c, _)| c.trim().is_empty());
        let result = parse_document(&text);
        if undefined || empty_command {
            let issues = result.unwrap_err();
            prop_assert!(issues.iter().all(|i| i.path.starts_with("pipelines.p.stages[")), "{:#?}", issues);
            return Ok(());
        }
        let document = result.map_err(|issues| TestCaseError::fail(format!("{text}\n{issues:#?}")))?;
        let read = &document.pipelines[0].stages;
        prop_assert_eq!(read.len(), stages.len());
        for (i, (stage, (stage_name, (_, clean), manual, jobs))) in read.iter().zip(&stages).enumerate() {
            prop_assert_eq!(&stage.name, &format!("{stage_name}-{i}"));
            prop_assert_eq!(stage.clean_workspace, *clean);
            prop_assert_eq!(stage.approval.manual, *manual);
            prop_assert_eq!(stage.jobs.len(), jobs.len());
            for (k, (job, (job_name, tasks))) in stage.jobs.iter().zip(jobs).enumerate() {
                prop_assert_eq!(&job.name, &format!("{job_name}-{k}"));
                let expected: Vec<TaskConfig> = tasks.iter().map(|(command, arguments)| {
                    let arguments: Vec<String> = arguments.iter().map(|a| resolves(a).unwrap()).collect();
                    let arguments: Vec<&str> = arguments.iter().map(String::as_str).collect();
                    exec(&resolves(command).unwrap(), &arguments)
                }).collect();
                prop_assert_eq!(&job.tasks, &expected);
            }
        }
    }

    #[test]
    fn alias_bombs_of_any_width_are_refused_quickly(width in 2usize..12, depth in 5usize..12) {
        let mut text = String::from("common:\n  a0: &a0 [x]\n");
        for i in 1..depth {
            let p = format!("*a{}", i - 1);
            text.push_str(&format!("  a{i}: &a{i} [{}]\n", vec![p.as_str(); width].join(", ")));
        }
        let started = std::time::Instant::now();
        let result = parse_document(&text);
        prop_assert!(started.elapsed() < std::time::Duration::from_secs(2));
        // The last anchor alone holds width^(depth-1) leaves: past the cap, refused.
        let leaves: f64 = (width as f64).powi(depth as i32 - 1);
        if leaves > 100_000.0 {
            let issues = result.unwrap_err();
            prop_assert!(issues.iter().any(|i| i.message.contains("more than 100000 nodes")));
        } else if 4.0 * leaves + 1_000.0 < 100_000.0 {
            // Well under the cap: read, and `common` ignored.
            prop_assert!(result.is_ok(), "{:?}", result);
        }
    }
}

#[test]
fn a_pipeline_is_in_one_environment_across_sources() {
    let a = ok(
        "environments:\n  e1: {pipelines: [p]}\npipelines:\n  p: {group: g, stages: [{s: {tasks: [script: x]}}]}\n",
    );
    let b = ok("environments:\n  e1: {pipelines: [P]}\n  e2: {pipelines: [p]}\n");
    let issues = check_sources(&[("a", &a), ("b", &b)]);
    assert_eq!(issues.len(), 1, "{issues:#?}");
    assert_sourced(
        &issues,
        1,
        "environments.e2.pipelines",
        "in environments e1 and e2",
    );
}

#[test]
fn parameter_names_are_names() {
    let issues = errors(
        "pipelines:\n  p:\n    group: g\n    parameters: {'a b': 1}\n    stages: [{s: {tasks: [script: x]}}]\n",
    );
    assert_error(
        &issues,
        "pipelines.p.parameters.a b",
        &["`a b`", "letters, digits"],
    );
}

#[test]
fn keys_gocd_removed_are_ignored_with_a_warning_saying_so() {
    let document = ok(
        "pipelines:\n  p:\n    group: g\n    mingle: {base_url: x}\n    stages:\n      - s:\n          jobs:\n            j:\n              properties: {perf: {source: a, xpath: b}}\n              tasks: [script: x]\n",
    );
    assert_warning(&document, "pipelines.p.mingle", &["`mingle` is ignored"]);
    assert_warning(
        &document,
        "pipelines.p.stages[0].s.jobs.j.properties",
        &["removed them in format 7"],
    );
    assert_eq!(document.warnings.len(), 2, "{:#?}", document.warnings);
}

#[test]
fn unknown_task_and_artifact_types_and_malformed_plugin_tasks_are_refused() {
    let issues = errors(&with_job(
        "artifacts:\n  - log: {source: a}\ntasks:\n  - shell: {command: ls}\n  - plugin: {options: {a: b}}\n  - plugin: {configuration: {version: 1}}\n  - script: [not, text]",
    ));
    assert_error(
        &issues,
        &format!("{JOB}.artifacts[0].log"),
        &["unknown artifact type `log`"],
    );
    assert_error(
        &issues,
        &format!("{JOB}.tasks[0].shell"),
        &["unknown task type `shell`", "exec, script"],
    );
    assert_error(
        &issues,
        &format!("{JOB}.tasks[1].plugin.configuration"),
        &["`configuration`", "`id`"],
    );
    assert_error(
        &issues,
        &format!("{JOB}.tasks[2].plugin.configuration.id"),
        &["`id` is required"],
    );
    assert_error(
        &issues,
        &format!("{JOB}.tasks[3].script"),
        &["`script` takes the script's text", "a list"],
    );
    assert_eq!(issues.len(), 5, "{issues:#?}");
}

#[test]
fn a_filter_and_its_old_name_together_are_refused() {
    let issues = errors(
        "pipelines:\n  p:\n    group: g\n    materials:\n      m: {git: u, ignore: [a], blacklist: [b]}\n    stages: [{s: {tasks: [script: x]}}]\n",
    );
    assert_error(
        &issues,
        "pipelines.p.materials.m.blacklist",
        &["`ignore` or its old name `blacklist`, not both"],
    );
    let issues = errors("environments:\n  e: {}\n  E: {}\n");
    assert_error(
        &issues,
        "environments.E",
        &["environment `E` appears twice"],
    );
}

#[test]
fn a_label_names_the_counter_or_a_material_of_its_pipeline() {
    let yaml = |label: &str| {
        format!(
            "format_version: 10\npipelines:\n  app:\n    group: g\n    label_template: \"{label}\"\n    materials:\n      code: {{git: https://example.com/app.git}}\n      up: {{pipeline: base, stage: build}}\n    stages:\n      - build: {{tasks: [{{exec: {{command: make}}}}]}}\n  base:\n    group: g\n    materials:\n      code: {{git: https://example.com/base.git}}\n    stages:\n      - build: {{tasks: [{{exec: {{command: make}}}}]}}\n"
        )
    };
    let document = ok(&yaml("${COUNT}-${up}-${UP[:4]}"));
    assert!(
        document
            .warnings
            .iter()
            .all(|w| !w.path.contains("label_template")),
        "{:?}",
        document.warnings
    );
    let document = ok(&yaml("${code[:8]}.${COUNT}"));
    assert!(
        document
            .warnings
            .iter()
            .all(|w| !w.path.contains("label_template")),
        "a git material's revision: {:?}",
        document.warnings
    );
    let document = ok(&yaml("${env:BUILD}-${COUNT}"));
    assert_warning(
        &document,
        "pipelines.app.label_template",
        &["${env:BUILD}", "not read yet"],
    );
    let issues = errors(&yaml("${COUNT}-${nope}"));
    assert_error(
        &issues,
        "pipelines.app.label_template",
        &["${nope}", "no material named nope", "code, up"],
    );
}

#[test]
fn a_material_filter_that_is_not_a_pattern_is_refused_at_its_key() {
    let yaml = "format_version: 10\npipelines:\n  app:\n    group: g\n    materials:\n      code:\n        git: https://example.com/app.git\n        blacklist: [\"docs/[a\"]\n    stages:\n      - build: {tasks: [{exec: {command: make}}]}\n";
    let issues = errors(yaml);
    assert_error(
        &issues,
        "pipelines.app.materials.code.blacklist",
        &["docs/[a", "not a file pattern"],
    );
}
