//! Who this agent is: the uuid and token kept in the work dir across restarts, and the facts
//! it registers with (hostname, address, OS, sandbox, free space).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// The file in the work dir holding the identity.
pub const IDENTITY_FILE: &str = "agent.json";
const LOCK_FILE: &str = "agent.lock";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub uuid: String,
    pub token: String,
}

/// The identity file, and an exclusive lock on the work dir held while the agent runs (two
/// agents sharing one identity would keep invalidating each other's token).
pub struct IdentityStore {
    path: PathBuf,
    _lock: File,
}

impl IdentityStore {
    pub fn open(
        work_dir: &Path,
    ) -> Result<IdentityStore, Box<dyn std::error::Error + Send + Sync>> {
        fs::create_dir_all(work_dir)
            .map_err(|e| format!("cannot create work dir {}: {e}", work_dir.display()))?;
        let lock_path = work_dir.join(LOCK_FILE);
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&lock_path)
            .map_err(|e| format!("cannot open {}: {e}", lock_path.display()))?;
        // SAFETY: flock on a descriptor we own; no memory is involved.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            return Err(format!(
                "another agent is already running with work dir {} ({})",
                work_dir.display(),
                io::Error::last_os_error()
            )
            .into());
        }
        Ok(IdentityStore {
            path: work_dir.join(IDENTITY_FILE),
            _lock: lock,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The saved identity; none if the file does not exist. A file that exists but cannot be
    /// read is an error: silently registering a new identity would orphan the old one.
    pub fn load(&self) -> Result<Option<Identity>, Box<dyn std::error::Error + Send + Sync>> {
        match fs::read(&self.path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
                format!(
                    "the agent identity file {} is unreadable ({e}); fix or remove it",
                    self.path.display()
                )
                .into()
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!("cannot read {}: {e}", self.path.display()).into()),
        }
    }

    /// Writes the identity atomically (temp file, fsync, rename, fsync of the directory), readable
    /// by the owner only: the token is a secret.
    pub fn save(&self, identity: &Identity) -> io::Result<()> {
        let temp = self.path.with_extension("json.tmp");
        {
            let mut file = OpenOptions::new()
                .create(true)
                .truncate(true)
                .write(true)
                .mode(0o600)
                .open(&temp)?;
            file.write_all(&serde_json::to_vec_pretty(identity).map_err(io::Error::other)?)?;
            file.write_all(b"\n")?;
            file.sync_all()?;
        }
        fs::rename(&temp, &self.path)?;
        if let Some(dir) = self.path.parent()
            && let Ok(dir) = File::open(dir)
        {
            let _ = dir.sync_all();
        }
        Ok(())
    }
}

/// What the agent tells the server about itself when registering.
#[derive(Debug, Clone)]
pub struct MachineFacts {
    pub hostname: String,
    pub ip_address: String,
    pub operating_system: String,
    /// The work dir, absolute.
    pub sandbox: String,
    pub sandbox_path: PathBuf,
    pub free_space: Option<u64>,
    pub resources: Vec<String>,
    pub environments: Vec<String>,
    pub agent_version: String,
}

impl MachineFacts {
    pub async fn gather(
        server: &str,
        work_dir: &Path,
        hostname: Option<String>,
        resources: &[String],
        environments: &[String],
    ) -> MachineFacts {
        let sandbox_path = fs::canonicalize(work_dir).unwrap_or_else(|_| work_dir.to_path_buf());
        MachineFacts {
            hostname: hostname
                .filter(|h| !h.trim().is_empty())
                .unwrap_or_else(system_hostname),
            ip_address: outbound_ip(server).await,
            operating_system: operating_system(),
            sandbox: sandbox_path.display().to_string(),
            free_space: free_space(&sandbox_path),
            resources: clean_names(resources),
            environments: clean_names(environments),
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
            sandbox_path,
        }
    }

    pub fn free_space_json(&self) -> Value {
        match self.free_space {
            Some(bytes) => json!(bytes),
            None => json!("unknown"),
        }
    }
}

/// `--resources a,,b ` → `["a", "b"]`.
fn clean_names(names: &[String]) -> Vec<String> {
    names
        .iter()
        .map(|n| n.trim())
        .filter(|n| !n.is_empty())
        .map(str::to_string)
        .collect()
}

fn system_hostname() -> String {
    let mut buffer = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname writes at most that many bytes.
    let rc = unsafe { libc::gethostname(buffer.as_mut_ptr().cast(), buffer.len()) };
    if rc == 0 {
        let end = buffer.iter().position(|b| *b == 0).unwrap_or(buffer.len());
        let name = String::from_utf8_lossy(&buffer[..end]).trim().to_string();
        if !name.is_empty() {
            return name;
        }
    }
    "localhost".to_string()
}

/// The local address this machine uses to reach the server (a connected UDP socket sends
/// nothing; it only picks the route).
async fn outbound_ip(server: &str) -> String {
    let fallback = "127.0.0.1".to_string();
    let Ok(url) = reqwest::Url::parse(server) else {
        return fallback;
    };
    let (Some(host), Some(port)) = (url.host_str(), url.port_or_known_default()) else {
        return fallback;
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let Ok(mut addresses) = tokio::net::lookup_host((host, port)).await else {
        return fallback;
    };
    let Some(target) = addresses.next() else {
        return fallback;
    };
    let bind = if target.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    };
    match tokio::net::UdpSocket::bind(bind).await {
        Ok(socket) if socket.connect(target).await.is_ok() => socket
            .local_addr()
            .map(|a| a.ip().to_string())
            .unwrap_or(fallback),
        _ => fallback,
    }
}

fn operating_system() -> String {
    match std::env::consts::OS {
        "linux" => "Linux".to_string(),
        "macos" => "Mac OS X".to_string(),
        "freebsd" => "FreeBSD".to_string(),
        other => other.to_string(),
    }
}

/// Bytes available to this user on the file system holding `path`.
pub fn free_space(path: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs fills the zeroed struct; the path is a valid NUL-terminated string.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statvfs(c_path.as_ptr(), &mut stat) };
    if rc != 0 {
        return None;
    }
    #[allow(clippy::unnecessary_cast)]
    Some((stat.f_bavail as u64).saturating_mul(stat.f_frsize as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_identity_survives_a_reopen_and_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let identity = Identity {
            uuid: "u-1".into(),
            token: "secret".into(),
        };
        {
            let store = IdentityStore::open(dir.path()).unwrap();
            assert_eq!(store.load().unwrap(), None);
            store.save(&identity).unwrap();
            let newer = Identity {
                token: "newer".into(),
                ..identity.clone()
            };
            store.save(&newer).unwrap();
            assert_eq!(store.load().unwrap(), Some(newer));
        }
        let store = IdentityStore::open(dir.path()).unwrap();
        assert_eq!(store.load().unwrap().unwrap().token, "newer");
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(store.path()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(!dir.path().join("agent.json.tmp").exists());
    }

    #[test]
    fn a_second_agent_cannot_share_the_work_dir() {
        let dir = tempfile::tempdir().unwrap();
        let _first = IdentityStore::open(dir.path()).unwrap();
        let second = IdentityStore::open(dir.path());
        assert!(second.is_err());
    }

    #[test]
    fn a_corrupt_identity_file_is_an_error_not_a_new_identity() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(IDENTITY_FILE), b"{not json").unwrap();
        let store = IdentityStore::open(dir.path()).unwrap();
        assert!(store.load().is_err());
    }

    #[test]
    fn names_are_trimmed_and_empty_ones_dropped() {
        let names = vec![" linux".to_string(), String::new(), "docker ".to_string()];
        assert_eq!(clean_names(&names), vec!["linux", "docker"]);
    }

    #[test]
    fn free_space_is_known_for_an_existing_dir() {
        assert!(free_space(Path::new("/")).is_some());
        assert!(free_space(Path::new("/no/such/dir/here")).is_none());
    }
}
