//! The server's side of a git material, through the `git` program (as GoCD: it honours the
//! user's SSH keys, credential helpers and proxies). Each polled repository and branch has a
//! bare mirror under the data dir; a poll fetches the branch into it and reads the commits
//! since the last revision it knew. Credentials reach git through a credential helper that
//! reads them from the child's environment, never from argv or the URL (either would show in
//! `ps`), and git's error text is scrubbed of them.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::process::Command;

use crate::domain::material::{
    GIT_CREDENTIAL_ARGS, GIT_PASSWORD_ENV, GIT_USERNAME_ENV, Modification, split_credentials,
};

/// At most this many commits are read per poll (a first poll reads only the newest).
pub const MAX_MODIFICATIONS: usize = 100;

/// A repository and branch to poll, with what git needs to reach it.
#[derive(Debug, Clone)]
pub struct Remote {
    // `url` holds no credentials: `Remote::new` takes them out into the fields below.
    pub url: String,
    pub branch: String,
    pub username: Option<String>,
    pub password: Option<String>,
}

impl Remote {
    /// Credentials in the URL's user info move to `username`/`password` (explicit ones win),
    /// so they reach git through its environment only.
    pub fn new(
        url: &str,
        branch: &str,
        username: Option<String>,
        password: Option<String>,
    ) -> Remote {
        let (url, url_user, url_password) = split_credentials(url);
        Remote {
            url,
            branch: branch.to_string(),
            username: username.or(url_user),
            password: password.or(url_password),
        }
    }
}

/// What a poll found: the branch's head and the commits since `known` (oldest first).
#[derive(Debug, Clone, PartialEq)]
pub struct Polled {
    pub revision: String,
    pub modifications: Vec<Modification>,
}

/// Field and record separators in `git log` output: no commit message holds them.
const FIELD: char = '\u{1f}';
const RECORD: char = '\u{1e}';

/// Fetches `remote`'s branch into the mirror at `mirror` (made if missing) and reads what is
/// new since `known` (`None`: a first poll, which reads the head commit only). The whole poll
/// is bounded by `timeout`; a git that hangs is killed.
pub async fn poll(
    remote: &Remote,
    mirror: &Path,
    known: Option<&str>,
    timeout: Duration,
) -> Result<Polled, String> {
    match tokio::time::timeout(timeout, poll_unbounded(remote, mirror, known)).await {
        Ok(polled) => polled,
        Err(_) => Err(format!("git did not answer within {} s", timeout.as_secs())),
    }
}

async fn poll_unbounded(
    remote: &Remote,
    mirror: &Path,
    known: Option<&str>,
) -> Result<Polled, String> {
    if !mirror.join("HEAD").exists() {
        tokio::fs::create_dir_all(mirror)
            .await
            .map_err(|e| format!("cannot make {}: {e}", mirror.display()))?;
        run(remote, Some(mirror), &["init", "--bare", "--quiet"]).await?;
    }
    let refspec = format!("+refs/heads/{0}:refs/heads/{0}", remote.branch);
    run(
        remote,
        Some(mirror),
        &[
            "fetch",
            "--quiet",
            "--prune",
            "--no-tags",
            &remote.url,
            &refspec,
        ],
    )
    .await?;
    let head = format!("refs/heads/{}", remote.branch);
    let revision = run(remote, Some(mirror), &["rev-parse", "--verify", &head])
        .await?
        .trim()
        .to_string();
    if known == Some(revision.as_str()) {
        return Ok(Polled {
            revision,
            modifications: Vec::new(),
        });
    }
    // Since the known revision, if the mirror still has it as an ancestor (a force push may
    // have dropped it); else the head alone.
    let range = match known {
        Some(known)
            if run(
                remote,
                Some(mirror),
                &["merge-base", "--is-ancestor", known, &revision],
            )
            .await
            .is_ok() =>
        {
            format!("{known}..{revision}")
        }
        _ => format!("{revision}^!"),
    };
    let format = format!("--format={RECORD}%H{FIELD}%an <%ae>{FIELD}%ct{FIELD}%B{FIELD}");
    let limit = format!("--max-count={MAX_MODIFICATIONS}");
    let log = run(
        remote,
        Some(mirror),
        &[
            "log",
            &format,
            "--name-only",
            "--no-renames",
            &limit,
            &range,
            "--",
        ],
    )
    .await?;
    let mut modifications = parse_log(&log);
    modifications.reverse(); // git lists newest first
    Ok(Polled {
        revision,
        modifications,
    })
}

/// `git log` records as written by `poll`: hash, author, commit time, message, then the files.
fn parse_log(log: &str) -> Vec<Modification> {
    log.split(RECORD)
        .filter(|record| !record.trim().is_empty())
        .filter_map(|record| {
            let mut fields = record.splitn(5, FIELD);
            let revision = fields.next()?.trim().to_string();
            let author = fields.next()?.to_string();
            let time = fields.next()?.trim().parse::<i64>().ok()? * 1000;
            let message = fields.next()?.trim_end().to_string();
            let files = fields
                .next()
                .unwrap_or_default()
                .lines()
                .map(str::trim)
                .filter(|f| !f.is_empty())
                .map(str::to_string)
                .collect();
            Some(Modification {
                revision,
                author,
                time,
                message,
                files,
            })
        })
        .collect()
}

/// Runs `git args` (in `dir`) and answers its standard output, or its error text with the
/// credentials scrubbed out.
async fn run(remote: &Remote, dir: Option<&Path>, args: &[&str]) -> Result<String, String> {
    let mut command = Command::new("git");
    command.args(GIT_CREDENTIAL_ARGS);
    command.args(args);
    if let Some(dir) = dir {
        command.current_dir(dir);
    }
    command
        .env("GIT_TERMINAL_PROMPT", "0")
        .env(GIT_USERNAME_ENV, remote.username.as_deref().unwrap_or(""))
        .env(GIT_PASSWORD_ENV, remote.password.as_deref().unwrap_or(""))
        .env_remove("GIT_DIR")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let output = command
        .output()
        .await
        .map_err(|e| format!("cannot run git: {e} (is git installed?)"))?;
    if output.status.success() {
        return Ok(String::from_utf8_lossy(&output.stdout).into_owned());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    Err(scrub(remote, stderr.trim()))
}

/// `text` without the remote's password (and the URL's user info, if any).
pub fn scrub(remote: &Remote, text: &str) -> String {
    let mut text = text.to_string();
    if let Some(password) = remote.password.as_deref().filter(|p| !p.is_empty()) {
        text = text.replace(password, "****");
    }
    if let Some((_, rest)) = remote.url.split_once("://")
        && let Some((userinfo, _)) = rest.split_once('@')
        && !userinfo.contains('/')
    {
        text = text.replace(userinfo, "****");
    }
    text
}

/// The `*.gocd.yaml` and `*.gocd.yml` files of `revision` in `mirror`, by path (a config
/// repository's), each as text.
pub async fn config_files(
    remote: &Remote,
    mirror: &Path,
    revision: &str,
) -> Result<Vec<(String, String)>, String> {
    let listing = run(
        remote,
        Some(mirror),
        &["ls-tree", "-r", "-z", "--name-only", revision],
    )
    .await?;
    let mut paths: Vec<&str> = listing
        .split('\0')
        .filter(|p| p.ends_with(".gocd.yaml") || p.ends_with(".gocd.yml"))
        .collect();
    paths.sort_unstable();
    let mut files = Vec::with_capacity(paths.len());
    for path in paths {
        let object = format!("{revision}:{path}");
        let text = run(remote, Some(mirror), &["cat-file", "blob", &object]).await?;
        files.push((path.to_string(), text));
    }
    Ok(files)
}

/// Where the mirror of a fingerprint lives.
pub fn mirror_dir(materials_dir: &Path, fingerprint: &str) -> PathBuf {
    materials_dir.join(format!("{fingerprint}.git"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_records_read_back_with_their_files() {
        let log = format!(
            "{RECORD}abc{FIELD}Ann <ann@x>{FIELD}1700000000{FIELD}Fix it\n\nbody{FIELD}\n\nsrc/a.rs\ndocs/b.md\n{RECORD}def{FIELD}Bo <bo@x>{FIELD}1700000001{FIELD}Merge{FIELD}\n"
        );
        let parsed = parse_log(&log);
        assert_eq!(parsed.len(), 2);
        assert_eq!(parsed[0].revision, "abc");
        assert_eq!(parsed[0].message, "Fix it\n\nbody");
        assert_eq!(parsed[0].time, 1_700_000_000_000);
        assert_eq!(parsed[0].files, ["src/a.rs", "docs/b.md"]);
        assert!(parsed[1].files.is_empty());
    }

    #[test]
    fn errors_lose_the_credentials() {
        let remote = Remote {
            url: "https://bob:hunter2@example.com/r.git".into(),
            branch: "main".into(),
            username: Some("bob".into()),
            password: Some("s3cret".into()),
        };
        let text = scrub(
            &remote,
            "fatal: could not read from https://bob:hunter2@example.com/r.git with s3cret",
        );
        assert!(
            !text.contains("hunter2") && !text.contains("s3cret"),
            "{text}"
        );
    }

    /// A real repository in a temp dir: `git` run there with a fixed identity.
    fn git(dir: &Path, args: &[&str]) -> String {
        let output = std::process::Command::new("git")
            .args(["-c", "user.name=Ann", "-c", "user.email=ann@example.com"])
            .args(args)
            .current_dir(dir)
            .output()
            .expect("git runs");
        assert!(
            output.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).trim().to_string()
    }

    fn commit(dir: &Path, file: &str, message: &str) -> String {
        std::fs::create_dir_all(dir.join(file).parent().unwrap()).unwrap();
        std::fs::write(dir.join(file), message).unwrap();
        git(dir, &["add", "-A"]);
        git(dir, &["commit", "--quiet", "-m", message]);
        git(dir, &["rev-parse", "HEAD"])
    }

    #[tokio::test]
    async fn a_poll_reads_the_head_first_then_every_commit_since() {
        let work = tempfile::tempdir().unwrap();
        let repo = work.path().join("repo");
        std::fs::create_dir(&repo).unwrap();
        git(&repo, &["init", "--quiet", "--initial-branch=main"]);
        commit(&repo, "a.txt", "first");
        let second = commit(&repo, "src/b.rs", "second");
        let remote = Remote {
            url: format!("file://{}", repo.display()),
            branch: "main".into(),
            username: None,
            password: None,
        };
        let mirror = work.path().join("mirror.git");
        let timeout = Duration::from_secs(60);
        let first_poll = poll(&remote, &mirror, None, timeout).await.unwrap();
        assert_eq!(first_poll.revision, second);
        let heads: Vec<_> = first_poll
            .modifications
            .iter()
            .map(|m| m.message.as_str())
            .collect();
        assert_eq!(heads, ["second"], "a first poll reads the head only");
        assert_eq!(first_poll.modifications[0].files, ["src/b.rs"]);
        assert_eq!(first_poll.modifications[0].author, "Ann <ann@example.com>");

        let same = poll(&remote, &mirror, Some(&second), timeout)
            .await
            .unwrap();
        assert!(same.modifications.is_empty());
        let third = commit(&repo, "docs/c.md", "third");
        let fourth = commit(&repo, "d.txt", "fourth");
        let next = poll(&remote, &mirror, Some(&second), timeout)
            .await
            .unwrap();
        assert_eq!(next.revision, fourth);
        let revisions: Vec<_> = next
            .modifications
            .iter()
            .map(|m| m.revision.clone())
            .collect();
        assert_eq!(revisions, [third, fourth], "oldest first");

        let missing = Remote {
            branch: "nope".into(),
            ..remote.clone()
        };
        let error = poll(&missing, &work.path().join("other.git"), None, timeout)
            .await
            .unwrap_err();
        assert!(error.contains("nope"), "{error}");
    }
}
