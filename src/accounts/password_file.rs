//! The password file: htpasswd lines `user:$2y$…` with bcrypt hashes, as GoCD's password-file
//! plugin reads them and `htpasswd -B` writes them.
//!
//! It is re-read when it changes (looked at no more than once a second), so adding a user or
//! changing a password needs no restart; a file that becomes unreadable keeps the last good
//! users. bcrypt is slow on purpose, so it runs on the blocking pool, one check at a time (a
//! burst of logins cannot take every core), and a verified credential is remembered for a few
//! minutes, keyed by a hash of it: a build monitor sending HTTP Basic every few seconds costs
//! one bcrypt, not one per request. The memory is dropped whenever the file changes.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;

/// How long a verified credential is believed without another bcrypt.
const REMEMBER_FOR: Duration = Duration::from_secs(300);
/// At most this many remembered credentials (then the memory starts afresh).
const REMEMBER_AT_MOST: usize = 10_000;
/// How often the file's metadata is looked at.
const LOOK_EVERY: Duration = Duration::from_secs(1);

pub struct PasswordFile {
    path: PathBuf,
    loaded: Mutex<Loaded>,
    /// One bcrypt at a time.
    bcrypt_turn: Semaphore,
    /// Hash of (user, password, stored hash) → when it was verified.
    verified: Mutex<HashMap<[u8; 32], Instant>>,
}

struct Loaded {
    users: HashMap<String, String>,
    stamp: Option<Stamp>,
    looked_at: Instant,
}

/// What tells us the file changed.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

fn stamp(path: &Path) -> Option<Stamp> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).ok()?;
    Some(Stamp {
        modified: meta.modified().ok(),
        len: meta.len(),
        inode: meta.ino(),
    })
}

/// The users of an htpasswd text; lines it cannot use are named, by number, in the warnings.
pub fn parse(text: &str) -> (HashMap<String, String>, Vec<String>) {
    let mut users = HashMap::new();
    let mut warnings = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let number = index + 1;
        let Some((name, hash)) = line.split_once(':') else {
            warnings.push(format!("line {number}: expected user:hash"));
            continue;
        };
        if name.is_empty() {
            warnings.push(format!("line {number}: the user name is empty"));
            continue;
        }
        if !["$2y$", "$2b$", "$2a$", "$2x$"]
            .iter()
            .any(|prefix| hash.starts_with(prefix))
        {
            warnings.push(format!(
                "line {number}: user {name:?} has no bcrypt hash (write the file with `htpasswd -B`)"
            ));
            continue;
        }
        users.insert(name.to_string(), hash.to_string());
    }
    (users, warnings)
}

fn read(path: &Path) -> Result<HashMap<String, String>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the password file {}: {e}", path.display()))?;
    let (users, warnings) = parse(&text);
    for warning in warnings {
        tracing::warn!(file = %path.display(), "password file {warning}");
    }
    Ok(users)
}

impl PasswordFile {
    /// Reads the file; one that cannot be read is an error at start.
    pub fn open(path: &Path) -> Result<PasswordFile, String> {
        let users = read(path)?;
        if users.is_empty() {
            tracing::warn!(file = %path.display(), "the password file names no user: nobody can log in");
        }
        Ok(PasswordFile {
            path: path.to_path_buf(),
            loaded: Mutex::new(Loaded {
                users,
                stamp: stamp(path),
                looked_at: Instant::now(),
            }),
            bcrypt_turn: Semaphore::new(1),
            verified: Mutex::new(HashMap::new()),
        })
    }

    /// The stored hash of `name`, after re-reading the file if it changed.
    fn hash_of(&self, name: &str) -> Option<String> {
        let mut loaded = self.loaded.lock().expect("password file lock");
        if loaded.looked_at.elapsed() >= LOOK_EVERY {
            loaded.looked_at = Instant::now();
            let now = stamp(&self.path);
            if now != loaded.stamp {
                match read(&self.path) {
                    Ok(users) => {
                        tracing::info!(file = %self.path.display(), users = users.len(), "password file re-read");
                        loaded.users = users;
                        loaded.stamp = now;
                        self.verified.lock().expect("verified lock").clear();
                    }
                    Err(error) => tracing::warn!(%error, "keeping the users read before"),
                }
            }
        }
        loaded.users.get(name).cloned()
    }

    pub fn has_user(&self, name: &str) -> bool {
        self.hash_of(name).is_some()
    }

    /// Whether `password` is `name`'s.
    pub async fn verify(&self, name: &str, password: &str) -> bool {
        let Some(hash) = self.hash_of(name) else {
            return false;
        };
        let key: [u8; 32] = Sha256::new()
            .chain_update(name.as_bytes())
            .chain_update([0])
            .chain_update(password.as_bytes())
            .chain_update([0])
            .chain_update(hash.as_bytes())
            .finalize()
            .into();
        if let Some(at) = self.verified.lock().expect("verified lock").get(&key)
            && at.elapsed() < REMEMBER_FOR
        {
            return true;
        }
        let Ok(_turn) = self.bcrypt_turn.acquire().await else {
            return false;
        };
        let password = password.to_string();
        let good =
            tokio::task::spawn_blocking(move || bcrypt::verify(password, &hash).unwrap_or(false))
                .await
                .unwrap_or(false);
        if good {
            let mut verified = self.verified.lock().expect("verified lock");
            if verified.len() >= REMEMBER_AT_MOST {
                verified.clear();
            }
            verified.insert(key, Instant::now());
        }
        good
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bcrypt_lines_are_users_and_the_rest_is_named() {
        let text = "# team\nalice:$2y$05$abcdefghijklmnopqrstuu5Vg7GdF3Hcb1r3u0b5Kx6G0iUQ3Dk1e\n\n\
                    bob:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=\nnocolon\n:$2y$05$x\n";
        let (users, warnings) = parse(text);
        assert_eq!(users.len(), 1);
        assert!(users["alice"].starts_with("$2y$05$"));
        assert_eq!(warnings.len(), 3, "{warnings:?}");
        assert!(
            warnings[0].starts_with("line 4: user \"bob\""),
            "{warnings:?}"
        );
        assert!(warnings[1].starts_with("line 5"), "{warnings:?}");
        assert!(warnings[2].starts_with("line 6"), "{warnings:?}");
    }

    #[tokio::test]
    async fn a_password_is_checked_against_its_hash_and_changes_are_seen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("passwords");
        let hash = bcrypt::hash("secret", 4).unwrap();
        std::fs::write(&path, format!("alice:{hash}\n")).unwrap();
        let file = PasswordFile::open(&path).unwrap();
        assert!(file.verify("alice", "secret").await);
        assert!(file.verify("alice", "secret").await, "remembered");
        assert!(!file.verify("alice", "wrong").await);
        assert!(!file.verify("bob", "secret").await);

        let other = bcrypt::hash("new", 4).unwrap();
        std::fs::write(&path, format!("alice:{other}\nbob:{hash}\n")).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !file.has_user("bob") {
            assert!(
                Instant::now() < deadline,
                "the changed file was never re-read"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(
            !file.verify("alice", "secret").await,
            "the old password is gone"
        );
        assert!(file.verify("alice", "new").await);
        assert!(file.verify("bob", "secret").await);
    }
}
