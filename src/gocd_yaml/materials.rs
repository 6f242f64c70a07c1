//! `materials:` → [`Material`]s: git, dependencies, svn/hg/p4/tfs and the config repo's own;
//! pluggable and package materials are refused naming what they need from a GoCD server.
//! Unknown keys here are errors: a lost key changes what is checked out.

use std::collections::BTreeMap;

use crate::domain::material::FileFilter;
use crate::domain::pipeline_config::{GitMaterial, Material, MaterialSource, ScmKind};

use super::fields::{Fields, Leftovers, Names, Reader, shape};
use super::loader::{Node, Value, key_path};

pub fn read_materials(reader: &mut Reader, node: &Node, path: &str) -> Vec<Material> {
    if let Value::List(_) = node.value {
        reader.error(path, node.line, "`materials` must be a map of material name → material, not a list (drop the `-` before each name)");
        return Vec::new();
    }
    let Some(map) = reader.map(node, path, "materials by name") else {
        return Vec::new();
    };
    let mut materials: Vec<Material> = Vec::new();
    let mut lines: Vec<u32> = Vec::new();
    let mut names = Names::default();
    for entry in map.entries() {
        let material_path = key_path(path, &entry.key);
        if !reader.unique_name(
            &mut names,
            &entry.key,
            &material_path,
            entry.key_line,
            "material",
            "the pipeline",
        ) {
            continue;
        }
        let Some(mut fields) = reader.map(&entry.value, &material_path, "a material") else {
            continue;
        };
        if let Some(source) = read_source(reader, &entry.key, &mut fields) {
            materials.push(Material {
                name: entry.key.clone(),
                source,
            });
            lines.push(entry.key_line);
        }
    }
    check_destinations(reader, &materials, &lines, path);
    materials
}

/// GoCD: when a pipeline has several SCM materials, each needs its own `destination`.
fn check_destinations(reader: &mut Reader, materials: &[Material], lines: &[u32], path: &str) {
    let scm: Vec<(&Material, u32, Option<&str>)> = materials
        .iter()
        .zip(lines)
        .filter_map(|(m, line)| match &m.source {
            MaterialSource::Git(git) => Some((m, *line, git.destination.as_deref())),
            MaterialSource::Scm { destination, .. }
            | MaterialSource::ConfigRepo { destination, .. } => {
                Some((m, *line, destination.as_deref()))
            }
            MaterialSource::Dependency { .. } => None,
        })
        .collect();
    if scm.len() < 2 {
        return;
    }
    let mut seen: Vec<&str> = Vec::new();
    for (material, line, destination) in scm {
        let material_path = key_path(path, &material.name);
        match destination {
            None => reader.error(
                &key_path(&material_path, "destination"),
                line,
                format!("material {} needs a `destination`: the pipeline has several SCM materials, each checked out into its own folder", material.name),
            ),
            Some(dest) if seen.iter().any(|s| s.trim_end_matches('/') == dest.trim_end_matches('/')) => reader.error(
                &key_path(&material_path, "destination"),
                line,
                format!("destination `{dest}` of material {} is also another material's", material.name),
            ),
            Some(dest) => seen.push(dest),
        }
    }
}

const SCM_SHORTHANDS: &[(&str, ScmKind)] = &[
    ("svn", ScmKind::Svn),
    ("hg", ScmKind::Hg),
    ("p4", ScmKind::P4),
    ("tfs", ScmKind::Tfs),
];

fn read_source(reader: &mut Reader, name: &str, fields: &mut Fields) -> Option<MaterialSource> {
    let explicit = reader.opt_text(fields, "type");
    let kind = match explicit.as_deref() {
        Some(kind) => kind.to_string(),
        None if fields.has("git") => "git".to_string(),
        None if fields.has("pipeline") => "dependency".to_string(),
        None if fields.has("scm") => "scm".to_string(),
        None if fields.has("plugin_configuration") => "plugin".to_string(),
        None if fields.has("package") => "package".to_string(),
        None => match SCM_SHORTHANDS.iter().find(|(key, _)| fields.has(key)) {
            Some((key, _)) => key.to_string(),
            None => {
                reader.error(
                    &fields.path,
                    fields.line,
                    format!("material {name} has no type: give `git:`, `pipeline:` + `stage:`, `svn:`, `hg:`, `p4:`, or `type:`"),
                );
                return None;
            }
        },
    };
    let source = match kind.as_str() {
        "git" => read_git(reader, fields).map(MaterialSource::Git),
        "dependency" => read_dependency(reader, fields),
        "configrepo" => {
            let destination = reader.opt_text(fields, "destination");
            let (ignore, includes) = read_filters(reader, fields);
            Some(MaterialSource::ConfigRepo {
                destination,
                ignore,
                includes,
            })
        }
        "scm" | "pluggable" => {
            let id = reader.opt_text(fields, "scm").unwrap_or_default();
            take_all(fields);
            reader.error(
                &fields.path,
                fields.line,
                format!("material {name} is a pluggable SCM `{id}`: it needs that SCM id defined on a GoCD server and its SCM plugin; ferrocd has neither"),
            );
            None
        }
        "plugin" => {
            let id = fields
                .get("plugin_configuration")
                .and_then(|node| match &node.value {
                    Value::Map(entries) => entries
                        .iter()
                        .find(|e| e.key == "id")
                        .map(|e| e.value.clone()),
                    _ => None,
                })
                .and_then(|node| reader.raw_text(&node, &fields.path_of("plugin_configuration")))
                .unwrap_or_default();
            take_all(fields);
            reader.error(
                &fields.path,
                fields.line,
                format!("material {name} needs the SCM plugin `{id}` (plugin_configuration); ferrocd runs no material plugins"),
            );
            None
        }
        "package" => {
            let id = reader.opt_text(fields, "package").unwrap_or_default();
            take_all(fields);
            reader.error(
                &fields.path,
                fields.line,
                format!("material {name} is package `{id}`: it needs that package defined in a GoCD server's package repository; ferrocd has none"),
            );
            None
        }
        other => match SCM_SHORTHANDS.iter().find(|(key, _)| *key == other) {
            Some((key, scm)) => read_scm(reader, fields, key, *scm),
            None => {
                reader.error(
                    &fields.path_of("type"),
                    fields.line_of("type"),
                    format!("material type `{other}` is not one of git, dependency, svn, hg, p4, tfs, configrepo, plugin, package"),
                );
                take_all(fields);
                return None;
            }
        },
    };
    let known: &[&str] = match kind.as_str() {
        "git" => GIT_KEYS,
        "dependency" => &["type", "pipeline", "stage", "ignore_for_scheduling", "name"],
        _ => &[
            "type",
            "destination",
            "ignore",
            "includes",
            "blacklist",
            "whitelist",
        ],
    };
    fields.finish(reader, Leftovers::Refused, known);
    source
}

/// Marks every key read: a refused material's keys are not reported once more as unknown.
fn take_all(fields: &mut Fields) {
    let keys: Vec<String> = fields.entries().iter().map(|e| e.key.clone()).collect();
    for key in keys {
        fields.get_entry(&key);
    }
}

const GIT_KEYS: &[&str] = &[
    "type",
    "git",
    "url",
    "branch",
    "shallow_clone",
    "auto_update",
    "destination",
    "ignore",
    "includes",
    "blacklist",
    "whitelist",
    "username",
    "password",
    "encrypted_password",
];

fn read_git(reader: &mut Reader, fields: &mut Fields) -> Option<GitMaterial> {
    let url = if fields.has("git") {
        reader.required_text(fields, "git", "the repository URL")
    } else {
        reader.required_text(fields, "url", "the repository URL")
    };
    let branch = reader
        .opt_text(fields, "branch")
        .unwrap_or_else(|| "master".to_string());
    let shallow_clone = reader.boolean(fields, "shallow_clone", false);
    let auto_update = reader.boolean(fields, "auto_update", true);
    let destination = reader.opt_text(fields, "destination");
    let (ignore, includes) = read_filters(reader, fields);
    let username = reader.opt_text(fields, "username");
    let password = reader.opt_text(fields, "password");
    reader.refuse_ciphertext(fields, "encrypted_password");
    Some(GitMaterial {
        url: url?,
        branch,
        shallow_clone,
        auto_update,
        destination,
        ignore,
        includes,
        username,
        password,
    })
}

/// `ignore` (old name `blacklist`) and `includes` (old name `whitelist`); not both kinds.
fn read_filters(reader: &mut Reader, fields: &mut Fields) -> (Vec<String>, Vec<String>) {
    let one = |reader: &mut Reader, fields: &mut Fields, new: &str, old: &str| {
        if fields.has(new) && fields.has(old) {
            reader.error(
                &fields.path_of(old),
                fields.line_of(old),
                format!("give `{new}` or its old name `{old}`, not both"),
            );
        }
        let mut list = reader.text_list(fields, new);
        list.extend(reader.text_list(fields, old));
        // A pattern that does not compile would filter nothing when a poll needs it.
        if let Err(why) = FileFilter::new(&list, &[]) {
            let key = if fields.has(new) { new } else { old };
            reader.error(&fields.path_of(key), fields.line_of(key), why);
        }
        list
    };
    let ignore = one(reader, fields, "ignore", "blacklist");
    let includes = one(reader, fields, "includes", "whitelist");
    if !ignore.is_empty() && !includes.is_empty() {
        reader.error(
            &fields.path,
            fields.line,
            "a material filters with `ignore` or with `includes`, not both",
        );
    }
    (ignore, includes)
}

fn read_dependency(reader: &mut Reader, fields: &mut Fields) -> Option<MaterialSource> {
    let pipeline = reader.required_text(fields, "pipeline", "the upstream pipeline");
    let stage = reader.required_text(
        fields,
        "stage",
        "the upstream stage whose success triggers this pipeline",
    );
    let ignore_for_scheduling = reader.boolean(fields, "ignore_for_scheduling", false);
    // The plugin's README shows `name:` on a dependency; it repeats the key.
    if let Some(node) = fields.get("name") {
        reader.warn(
            &fields.path_of("name"),
            node.line,
            "`name` is ignored: a material's name is its key",
        );
    }
    Some(MaterialSource::Dependency {
        pipeline: pipeline?,
        stage: stage?,
        ignore_for_scheduling,
    })
}

fn read_scm(
    reader: &mut Reader,
    fields: &mut Fields,
    key: &str,
    scm: ScmKind,
) -> Option<MaterialSource> {
    let url_key = if fields.has(key) {
        key
    } else if scm == ScmKind::P4 && fields.has("port") {
        "port"
    } else {
        "url"
    };
    let url = reader.required_text(fields, url_key, "where the repository is");
    let destination = reader.opt_text(fields, "destination");
    reader.refuse_ciphertext(fields, "encrypted_password");
    let mut attributes = BTreeMap::new();
    let (ignore, includes) = read_filters(reader, fields);
    if !ignore.is_empty() {
        attributes.insert("ignore".to_string(), ignore.join("\n"));
    }
    if !includes.is_empty() {
        attributes.insert("includes".to_string(), includes.join("\n"));
    }
    let known: &[&str] = match scm {
        ScmKind::Svn => &["username", "password", "check_externals", "auto_update"],
        ScmKind::Hg => &["username", "password", "branch", "auto_update"],
        ScmKind::P4 => &["username", "password", "use_tickets", "view", "auto_update"],
        ScmKind::Tfs => &["username", "password", "domain", "project", "auto_update"],
    };
    for attribute in known {
        if let Some(node) = fields.get(attribute) {
            let path = fields.path_of(attribute);
            match &node.value {
                Value::Scalar { .. } => {
                    if let Some(text) = reader.text(node, &path) {
                        attributes.insert(attribute.to_string(), text);
                    }
                }
                _ => reader.error(
                    &path,
                    node.line,
                    format!("expected text, found {}", shape(node)),
                ),
            }
        }
    }
    Some(MaterialSource::Scm {
        scm,
        url: url?,
        destination,
        attributes,
    })
}
