//! The import graph keeps its shape: domain ← hub ← contexts ← web, and the agent runtime
//! apart. Reads every `src/**/*.rs` and fails on a `crate::…` path a room may not name (in a
//! `use` or inline), so a circle or a shortcut cannot creep back in unnoticed.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// The top-level module a source file belongs to (`src/agents/store.rs` → `agents`,
/// `src/db.rs` → `db`).
fn room(path: &Path, src: &Path) -> String {
    let relative = path.strip_prefix(src).expect("a file under src/");
    let first = relative.components().next().expect("a path");
    first
        .as_os_str()
        .to_string_lossy()
        .trim_end_matches(".rs")
        .to_string()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("a readable source folder") {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Strips `//` comments (doc comments included), so prose may name any module.
fn code_of(text: &str) -> String {
    text.lines()
        .map(|line| match line.find("//") {
            Some(at) => &line[..at],
            None => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The top-level modules a file's code names through `crate::` (grouped `use crate::{a, b}`
/// included).
fn named_rooms(code: &str) -> BTreeSet<String> {
    let mut named = BTreeSet::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for item in group[..end].split(',') {
                let name: String = item
                    .trim()
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() {
                    named.insert(name);
                }
            }
        } else {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                named.insert(name);
            }
        }
    }
    named
}

const CONTEXTS: [&str; 9] = [
    "accounts",
    "artifacts",
    "agents",
    "audit",
    "job_runs",
    "scheduler",
    "config_sources",
    "pipelines",
    "materials",
];

/// What `room` may not name; `None`: no rule.
fn forbidden(room: &str) -> Option<Vec<&'static str>> {
    let everything_but_domain = vec![
        "accounts",
        "artifacts",
        "agents",
        "audit",
        "secrets",
        "job_runs",
        "scheduler",
        "events",
        "db",
        "error",
        "config",
        "config_sources",
        "pipelines",
        "materials",
        "gocd_yaml",
        "web",
        "agent_runtime",
        "AppState",
        "Application",
    ];
    match room {
        "domain" => Some(everything_but_domain),
        // The hub knows the domain at most.
        "events" => Some(everything_but_domain),
        r if CONTEXTS.contains(&r) => Some(vec!["web", "agent_runtime", "AppState", "Application"]),
        "db" => Some(vec![
            "accounts",
            "agents",
            "audit",
            "job_runs",
            "scheduler",
            "web",
            "agent_runtime",
        ]),
        // The agent program talks to the server over HTTP only.
        "agent_runtime" => Some(vec![
            "accounts",
            "artifacts",
            "agents",
            "job_runs",
            "scheduler",
            "config_sources",
            "pipelines",
            "materials",
            "events",
            "db",
            "web",
            "AppState",
            "Application",
        ]),
        _ => None,
    }
}

fn sources() -> Vec<(PathBuf, String, String)> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    files
        .into_iter()
        .map(|path| {
            let text = std::fs::read_to_string(&path).expect("a readable source file");
            let room = room(&path, &src);
            (path, room, code_of(&text))
        })
        .collect()
}

#[test]
fn no_room_names_a_module_its_layer_may_not_reach() {
    let files = sources();
    assert!(files.len() > 20, "the source tree was found");
    let mut violations = Vec::new();
    for (path, room, code) in &files {
        let Some(forbidden) = forbidden(room) else {
            continue;
        };
        for named in named_rooms(code) {
            if forbidden.contains(&named.as_str()) {
                violations.push(format!("{} ({room}) names crate::{named}", path.display()));
            }
        }
    }
    assert!(violations.is_empty(), "{}", violations.join("\n"));
}

#[test]
fn only_the_database_module_and_the_stores_touch_database_connections() {
    let mut violations = Vec::new();
    for (path, _, code) in sources() {
        let store = path
            .file_name()
            .is_some_and(|n| n == "sql.rs" || n == "sqlite.rs" || n == "postgres.rs");
        let database =
            path.ends_with("src/db.rs") || path.parent().is_some_and(|d| d.ends_with("src/db"));
        if !store
            && !database
            && (code.contains("SqliteConnection")
                || code.contains("PgConnection")
                || code.contains("sqlx::query"))
        {
            violations.push(path.display().to_string());
        }
    }
    assert!(
        violations.is_empty(),
        "SQL outside the stores: {violations:?}"
    );
}

#[test]
fn only_the_write_transaction_publishes() {
    // The hub's sending half is built once, in `Application::build`, and handed to the
    // database; `WriteTx::commit` is the only caller of `Publisher::send`.
    let mut violations = Vec::new();
    for (path, room, code) in sources() {
        let allowed = matches!(room.as_str(), "events" | "db")
            || (path.ends_with("src/lib.rs") && !code.contains(".send("));
        let test_only = code.contains("#[cfg(test)]")
            && code[..code.find("#[cfg(test)]").unwrap()]
                .matches("Publisher")
                .count()
                == 0;
        if !allowed && !test_only && code.contains("Publisher") {
            violations.push(path.display().to_string());
        }
    }
    assert!(
        violations.is_empty(),
        "publishing outside the write transaction: {violations:?}"
    );
}

#[test]
fn the_checker_sees_a_forbidden_import() {
    // A check that cannot fail is no check: the parser finds both spellings.
    let named = named_rooms(
        "use crate::web::live;\nuse crate::{db, events::Hub};\nlet x = crate::agents::fetch;",
    );
    let expected: BTreeSet<String> = ["web", "db", "events", "agents"].map(String::from).into();
    assert_eq!(named, expected);
    assert!(named_rooms(&code_of("// see crate::web for more")).is_empty());
}
