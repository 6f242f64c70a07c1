//! Materials as the server polls them (the materials issue): which repository a git material
//! names, so that pipelines sharing one are polled once and a webhook finds them; the
//! modifications a poll finds; and whether a change to some files should trigger, by the
//! material's `ignore` and `includes` patterns (Ant-style, as GoCD's).

use std::collections::BTreeMap;

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// A repository URL as two spellings of the same repository agree on: no scheme, no user
/// info, the host lower-cased, no trailing `.git` or `/`, and `git@host:org/repo` read as
/// `host/org/repo`. `https://User@GitHub.com/org/repo.git/` and `git@github.com:org/repo`
/// are both `github.com/org/repo`; a local path (`/srv/repo`, `file:///srv/repo`) stays a path.
pub fn normalized_url(url: &str) -> String {
    let url = url.trim();
    let (rest, has_scheme) = match url.split_once("://") {
        Some((_, rest)) => (rest, true),
        None => (url, false),
    };
    let (authority, path) = if has_scheme {
        match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        }
    } else if let Some((host, path)) = scp_like(rest) {
        (host, path)
    } else {
        ("", rest)
    };
    let host = authority.rsplit('@').next().unwrap_or_default();
    // A default port says nothing; any other stays.
    let host = host
        .strip_suffix(":22")
        .or_else(|| host.strip_suffix(":443"))
        .or_else(|| host.strip_suffix(":80"))
        .unwrap_or(host)
        .to_ascii_lowercase();
    let mut path = path.trim_end_matches('/');
    path = path.strip_suffix(".git").unwrap_or(path);
    let path = path.trim_end_matches('/');
    if host.is_empty() {
        path.to_string()
    } else if path.starts_with('/') {
        format!("{host}{path}")
    } else {
        format!("{host}/{path}")
    }
}

/// The git configuration that hands a command's credentials to git from its environment
/// (`GIT_USERNAME_ENV`, `GIT_PASSWORD_ENV`), never from argv or the URL, which `ps` shows. The
/// server's polls and the agent's checkouts both run git with these first.
pub const GIT_CREDENTIAL_ARGS: [&str; 6] = [
    "-c",
    "credential.helper=",
    "-c",
    "credential.helper=!f() { test \"$1\" = get && echo \"username=${FERROCD_GIT_USERNAME}\" && echo \"password=${FERROCD_GIT_PASSWORD}\"; }; f",
    "-c",
    "core.askPass=",
];
pub const GIT_USERNAME_ENV: &str = "FERROCD_GIT_USERNAME";
pub const GIT_PASSWORD_ENV: &str = "FERROCD_GIT_PASSWORD";

/// A URL's user info taken out: the URL git is given, and the user and password it held
/// (`https://bob:pw@host/r` → `https://host/r`, `bob`, `pw`). An explicit `username` and
/// `password` win over these.
pub fn split_credentials(url: &str) -> (String, Option<String>, Option<String>) {
    if let Some((scheme, rest)) = url.split_once("://") {
        let authority_end = rest.find('/').unwrap_or(rest.len());
        if let Some(at) = rest[..authority_end].rfind('@') {
            let userinfo = &rest[..at];
            let (user, password) = match userinfo.split_once(':') {
                Some((user, password)) => (user, Some(password.to_string())),
                None => (userinfo, None),
            };
            // ssh's user (`ssh://git@host`) is part of the address, not a secret.
            if scheme.eq_ignore_ascii_case("ssh") && password.is_none() {
                return (url.to_string(), None, None);
            }
            return (
                format!("{scheme}://{}", &rest[at + 1..]),
                Some(user.to_string()).filter(|u| !u.is_empty()),
                password,
            );
        }
    }
    (url.to_string(), None, None)
}

/// `url` as it may be shown: a `scheme://user:password@host/…` URL loses its user info.
pub fn without_credentials(url: &str) -> String {
    if let Some((scheme, rest)) = url.split_once("://") {
        let authority_end = rest.find('/').unwrap_or(rest.len());
        if let Some(at) = rest[..authority_end].rfind('@') {
            return format!("{scheme}://{}", &rest[at + 1..]);
        }
    }
    url.to_string()
}

/// `user@host:path` (scp's form, as git reads it): a colon before any slash.
fn scp_like(text: &str) -> Option<(&str, &str)> {
    let colon = text.find(':')?;
    let slash = text.find('/').unwrap_or(usize::MAX);
    (colon < slash && colon > 0).then(|| (&text[..colon], &text[colon + 1..]))
}

/// What identifies a polled git material: its repository and branch. Pipelines whose
/// materials share one share a poll. Hex SHA-256, as GoCD's fingerprints are.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Fingerprint(String);

impl Fingerprint {
    pub fn of_git(url: &str, branch: &str) -> Fingerprint {
        let mut hash = Sha256::new();
        hash.update(b"git\0");
        hash.update(normalized_url(url).as_bytes());
        hash.update(b"\0");
        hash.update(branch.as_bytes());
        Fingerprint(hex::encode(hash.finalize()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The branch a pushed ref names (`refs/heads/main` → `main`); tags and other refs none.
pub fn branch_of_ref(reference: &str) -> Option<&str> {
    reference.strip_prefix("refs/heads/")
}

/// One commit a poll found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Modification {
    pub revision: String,
    pub author: String,
    /// When it was committed, unix milliseconds.
    pub time: i64,
    pub message: String,
    /// The files it changed, relative to the repository's root.
    pub files: Vec<String>,
}

/// A revision as people read it: its first 8 characters, as GoCD shows a git hash.
pub fn short_revision(revision: &str) -> &str {
    revision
        .char_indices()
        .nth(8)
        .map_or(revision, |(end, _)| &revision[..end])
}

/// What an instance was built from, for one git material: the revision it runs, where the
/// agent checks it out, and what the instance before it ran.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MaterialRevision {
    /// The material's name in the pipeline.
    pub material: String,
    pub fingerprint: Fingerprint,
    /// Credentials removed; the agent gets them from the config when it checks out.
    pub url: String,
    pub branch: String,
    pub destination: Option<String>,
    pub shallow: bool,
    pub revision: String,
    /// The oldest commit new since the previous instance (`revision` when none is known).
    pub from_revision: String,
    /// Whether it differs from the previous instance's (true for the first instance).
    pub changed: bool,
    /// Who committed `revision`, and its message's first line, as the poll read them.
    #[serde(default)]
    pub author: String,
    #[serde(default)]
    pub summary: String,
}

/// What an instance was built from through one dependency material: the upstream instance
/// whose stage passed (GoCD's dependency revision `pipeline/counter/stage/stage_counter`
/// without the stage counter: fetches take the stage's newest run).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpstreamRevision {
    /// The material's name in the pipeline.
    pub material: String,
    pub pipeline: String,
    pub counter: i64,
    pub label: String,
    pub stage: String,
}

/// What an agent checks out before a job's tasks: one git material at the instance's
/// revision, with the credentials of the material as configured now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkout {
    pub material: String,
    /// Credentials removed (they travel in `username` and `password`).
    pub url: String,
    pub branch: String,
    pub revision: String,
    /// Relative to the job's sandbox; `None`: the sandbox itself.
    pub destination: Option<String>,
    pub shallow: bool,
    pub username: Option<String>,
    pub password: Option<String>,
}

/// GoCD's variables for an instance's materials: `GO_REVISION_<NAME>`,
/// `GO_FROM_REVISION_<NAME>`, `GO_TO_REVISION_<NAME>`, `GO_MATERIAL_<NAME>_HAS_CHANGED`, and
/// `GO_REVISION` when there is one material. A name is upper-cased, anything but letters and
/// digits an underscore.
pub fn revision_variables(revisions: &[MaterialRevision]) -> BTreeMap<String, String> {
    let mut variables = BTreeMap::new();
    for r in revisions {
        let name: String = r
            .material
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_uppercase()
                } else {
                    '_'
                }
            })
            .collect();
        variables.insert(format!("GO_REVISION_{name}"), r.revision.clone());
        variables.insert(format!("GO_TO_REVISION_{name}"), r.revision.clone());
        variables.insert(format!("GO_FROM_REVISION_{name}"), r.from_revision.clone());
        variables.insert(
            format!("GO_MATERIAL_{name}_HAS_CHANGED"),
            r.changed.to_string(),
        );
    }
    if let [only] = revisions {
        variables.insert("GO_REVISION".into(), only.revision.clone());
    }
    variables
}

/// A material's `ignore` and `includes` patterns, compiled. Ant-style, as GoCD reads them:
/// `*` and `?` stay within one folder, `**` spans any number, and a pattern ending in `/`
/// means everything under that folder.
#[derive(Debug, Clone)]
pub struct FileFilter {
    ignore: GlobSet,
    includes: Option<GlobSet>,
}

impl FileFilter {
    /// `Err` names the first pattern that is not one.
    pub fn new(ignore: &[String], includes: &[String]) -> Result<FileFilter, String> {
        Ok(FileFilter {
            ignore: glob_set(ignore)?,
            includes: if includes.is_empty() {
                None
            } else {
                Some(glob_set(includes)?)
            },
        })
    }

    /// Whether a change to `files` triggers: with `includes`, when one of them matches; else
    /// unless every one matches `ignore`. A change that names no file (a merge, an empty
    /// commit) triggers, as in GoCD.
    pub fn triggers(&self, files: &[String]) -> bool {
        if files.is_empty() {
            return true;
        }
        match &self.includes {
            Some(includes) => files.iter().any(|f| includes.is_match(f)),
            None => files.iter().any(|f| !self.ignore.is_match(f)),
        }
    }
}

fn glob_set(patterns: &[String]) -> Result<GlobSet, String> {
    let mut set = GlobSetBuilder::new();
    for pattern in patterns {
        let mut ant = pattern.trim().trim_start_matches("./").to_string();
        if ant.ends_with('/') {
            ant.push_str("**");
        }
        let glob = GlobBuilder::new(&ant)
            .literal_separator(true)
            .backslash_escape(false)
            .build()
            .map_err(|e| format!("{pattern:?} is not a file pattern: {e}"))?;
        set.add(glob);
    }
    set.build().map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_revisions_are_eight_characters_or_the_whole() {
        assert_eq!(short_revision("0123456789abcdef"), "01234567");
        assert_eq!(short_revision("abc"), "abc");
    }

    #[test]
    fn spellings_of_one_repository_agree() {
        let github = "github.com/org/repo";
        for url in [
            "https://github.com/org/repo",
            "https://github.com/org/repo.git",
            "https://User:secret@GitHub.com/org/repo.git/",
            "git@github.com:org/repo.git",
            "ssh://git@github.com/org/repo",
            "ssh://git@github.com:22/org/repo.git",
            "http://github.com/org/repo/",
        ] {
            assert_eq!(normalized_url(url), github, "{url}");
        }
        assert_eq!(
            normalized_url("https://git.example.com:8443/r"),
            "git.example.com:8443/r"
        );
        assert_eq!(normalized_url("file:///srv/git/app.git"), "/srv/git/app");
        assert_eq!(normalized_url("/srv/git/app"), "/srv/git/app");
        assert_ne!(
            normalized_url("github.com/org/Repo"),
            github,
            "paths keep their case"
        );
        assert_eq!(
            Fingerprint::of_git("git@github.com:org/repo", "main"),
            Fingerprint::of_git("https://github.com/org/repo.git", "main")
        );
        assert_ne!(
            Fingerprint::of_git("https://github.com/org/repo", "main"),
            Fingerprint::of_git("https://github.com/org/repo", "dev")
        );
        assert_eq!(branch_of_ref("refs/heads/feature/x"), Some("feature/x"));
        assert_eq!(
            without_credentials("https://bob:s3cret@example.com/r.git"),
            "https://example.com/r.git"
        );
        assert_eq!(
            without_credentials("git@github.com:org/r"),
            "git@github.com:org/r"
        );
        assert_eq!(branch_of_ref("refs/tags/v1"), None);
    }

    #[test]
    fn revisions_give_gocds_variables() {
        let revision = |material: &str, changed| MaterialRevision {
            material: material.into(),
            fingerprint: Fingerprint::of_git("/r", "main"),
            url: "/r".into(),
            branch: "main".into(),
            destination: None,
            shallow: false,
            revision: format!("{material}-new"),
            from_revision: format!("{material}-old"),
            changed,
            author: String::new(),
            summary: String::new(),
        };
        let one = revision_variables(&[revision("my-code", true)]);
        assert_eq!(one["GO_REVISION"], "my-code-new");
        assert_eq!(one["GO_REVISION_MY_CODE"], "my-code-new");
        assert_eq!(one["GO_TO_REVISION_MY_CODE"], "my-code-new");
        assert_eq!(one["GO_FROM_REVISION_MY_CODE"], "my-code-old");
        assert_eq!(one["GO_MATERIAL_MY_CODE_HAS_CHANGED"], "true");
        let two = revision_variables(&[revision("a", true), revision("b", false)]);
        assert!(!two.contains_key("GO_REVISION"), "only with one material");
        assert_eq!(two["GO_MATERIAL_B_HAS_CHANGED"], "false");
    }

    fn files(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn ignore_and_includes_read_as_ant_patterns() {
        let docs = FileFilter::new(&files(&["docs/**", "*.md"]), &[]).unwrap();
        assert!(!docs.triggers(&files(&["README.md", "docs/a/b.txt"])));
        assert!(docs.triggers(&files(&["README.md", "src/main.rs"])));
        assert!(
            docs.triggers(&files(&["src/notes.md"])),
            "* stays in one folder"
        );
        assert!(docs.triggers(&[]), "a change naming no file triggers");
        let folder = FileFilter::new(&files(&["vendor/"]), &[]).unwrap();
        assert!(!folder.triggers(&files(&["vendor/a/b.c"])));
        let only = FileFilter::new(&files(&["src/**"]), &files(&["src/**/*.rs"])).unwrap();
        assert!(
            only.triggers(&files(&["src/a/b.rs"])),
            "includes win over ignore"
        );
        assert!(!only.triggers(&files(&["README.md"])));
        assert!(
            FileFilter::new(&files(&["a[b"]), &[])
                .unwrap_err()
                .contains("a[b")
        );
    }
}
