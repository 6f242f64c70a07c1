//! Running one task: a process in its own process group, its stdout and stderr on ONE pipe
//! (as `2>&1` would give them, so their order is exactly the order the process wrote in),
//! read into the console stream until the process is done.
//!
//! Cancelling stops the whole group: `SIGTERM`, then `SIGKILL` to whatever is still alive
//! after [`GRACE`]. A task that ends normally but left background processes behind does not
//! keep the job open: once the task's own process has exited, the agent reads what is already
//! in the pipe and stops reading (those processes keep running, as they would in a shell).

use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::AsyncReadExt;
use tokio::net::unix::pipe;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Time a cancelled task's processes get between `SIGTERM` and `SIGKILL`.
pub const GRACE: Duration = Duration::from_secs(5);
/// After the task's process exits, how long to wait for the pipe to close.
const LINGER: Duration = Duration::from_millis(200);
/// After that, at most this much more already-buffered output is read.
const DRAIN_LIMIT: usize = 64 * 1024 * 1024;
const READ_BUFFER: usize = 64 * 1024;

/// How a task ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskEnd {
    Exited(i32),
    Signalled(i32),
    FailedToStart(String),
    /// `cancel` fired; the task's process group was stopped.
    Cancelled,
}

/// What to run.
pub struct TaskSpec<'a> {
    pub command: &'a str,
    pub args: &'a [String],
    pub cwd: &'a Path,
    /// Added to (and overriding) the agent's own environment.
    pub env: &'a [(String, String)],
}

/// Runs the task to its end, sending its output to `output`. Returns how it ended and the
/// last output byte sent (to know whether the output ended a line).
pub async fn run_task(
    spec: &TaskSpec<'_>,
    output: mpsc::Sender<Bytes>,
    cancel: &CancellationToken,
) -> (TaskEnd, Option<u8>) {
    if cancel.is_cancelled() {
        return (TaskEnd::Cancelled, None);
    }
    let (reader, writer) = match io::pipe() {
        Ok(pair) => pair,
        Err(e) => {
            return (
                TaskEnd::FailedToStart(format!("cannot create a pipe: {e}")),
                None,
            );
        }
    };
    let spawned = {
        let stderr = match writer.try_clone() {
            Ok(w) => w,
            Err(e) => {
                return (
                    TaskEnd::FailedToStart(format!("cannot create a pipe: {e}")),
                    None,
                );
            }
        };
        let mut command = tokio::process::Command::new(spec.command);
        command
            .args(spec.args)
            .current_dir(spec.cwd)
            .envs(spec.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(writer)
            .stderr(stderr)
            .process_group(0);
        command.spawn()
        // `command` (holding our copies of the pipe's write end) is dropped here, so the
        // pipe closes when the task's processes close it.
    };
    let mut child = match spawned {
        Ok(child) => child,
        Err(e) => {
            return (
                TaskEnd::FailedToStart(format!("could not start '{}': {e}", spec.command)),
                None,
            );
        }
    };
    let pgid = child.id().map(|id| id as i32);
    let reader = match pipe::Receiver::from_owned_fd(OwnedFd::from(reader)) {
        Ok(reader) => Some(reader),
        Err(e) => {
            tracing::error!("cannot read the task's output: {e}");
            None
        }
    };
    let stop_reading = CancellationToken::new();
    let mut pump = tokio::spawn(pump(reader, output, stop_reading.clone()));

    let mut cancelled = false;
    let status = tokio::select! {
        status = child.wait() => status.ok(),
        _ = cancel.cancelled() => {
            cancelled = true;
            None
        }
    };
    let status = match (status, pgid) {
        (Some(status), _) => Some(status),
        (None, Some(pgid)) => {
            stop_group(pgid).await;
            tokio::time::timeout(GRACE, child.wait())
                .await
                .ok()
                .and_then(Result::ok)
        }
        (None, None) => None,
    };
    let last = match tokio::time::timeout(LINGER, &mut pump).await {
        Ok(joined) => joined.unwrap_or(None),
        Err(_) => {
            stop_reading.cancel();
            pump.await.unwrap_or(None)
        }
    };
    let end = if cancelled {
        TaskEnd::Cancelled
    } else {
        match status {
            Some(status) => match (status.code(), status.signal()) {
                (Some(code), _) => TaskEnd::Exited(code),
                (None, Some(signal)) => TaskEnd::Signalled(signal),
                (None, None) => TaskEnd::Exited(-1),
            },
            None => TaskEnd::Exited(-1),
        }
    };
    (end, last)
}

/// Reads the pipe into `output` until it closes; once `stop` fires, reads only what is
/// already buffered. Returns the last byte sent.
async fn pump(
    reader: Option<pipe::Receiver>,
    output: mpsc::Sender<Bytes>,
    stop: CancellationToken,
) -> Option<u8> {
    let mut reader = reader?;
    let mut buffer = vec![0u8; READ_BUFFER];
    let mut last = None;
    loop {
        let read = tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            read = reader.read(&mut buffer) => read,
        };
        match read {
            Ok(0) | Err(_) => return last,
            Ok(n) => {
                last = Some(buffer[n - 1]);
                if output
                    .send(Bytes::copy_from_slice(&buffer[..n]))
                    .await
                    .is_err()
                {
                    return last;
                }
            }
        }
    }
    let mut drained = 0;
    while drained < DRAIN_LIMIT {
        match reader.try_read(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                drained += n;
                last = Some(buffer[n - 1]);
                if output
                    .send(Bytes::copy_from_slice(&buffer[..n]))
                    .await
                    .is_err()
                {
                    break;
                }
            }
        }
    }
    last
}

/// Sends `signal` to every process of group `pgid`.
fn signal_group(pgid: i32, signal: i32) {
    if pgid > 1 {
        // SAFETY: kill(2) with a negative pid signals a process group; no memory involved.
        unsafe {
            libc::kill(-pgid, signal);
        }
    }
}

/// Stops every process of group `pgid`: `SIGTERM`, then `SIGKILL` after [`GRACE`].
pub async fn stop_group(pgid: i32) {
    signal_group(pgid, libc::SIGTERM);
    let deadline = tokio::time::Instant::now() + GRACE;
    while group_alive(pgid) {
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!(pgid, "task processes outlived SIGTERM; sending SIGKILL");
            signal_group(pgid, libc::SIGKILL);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    while group_alive(pgid) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Whether any process of group `pgid` is still running (zombies, dead but not yet reaped
/// by their parent, do not count).
pub fn group_alive(pgid: i32) -> bool {
    // SAFETY: signal 0 only checks for existence and permission.
    let exists = unsafe { libc::kill(-pgid, 0) } == 0
        || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
    if !exists {
        return false;
    }
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return true;
    };
    let mut readable = false;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if !name.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        readable = true;
        if let Some((state, group)) = parse_stat(&stat)
            && group == pgid
            && state != 'Z'
            && state != 'X'
        {
            return true;
        }
    }
    // Without a readable /proc, trust kill(2).
    !readable
}

/// The state letter and process group of a `/proc/PID/stat` line (the command name, in
/// parentheses, may itself hold spaces and parentheses).
pub fn parse_stat(stat: &str) -> Option<(char, i32)> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_name.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let _ppid = fields.next()?;
    let pgrp = fields.next()?.parse().ok()?;
    Some((state, pgrp))
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn run(
        command: &str,
        args: &[&str],
        env: &[(&str, &str)],
        cancel: &CancellationToken,
    ) -> (TaskEnd, Vec<u8>, Option<u8>) {
        let dir = tempfile::tempdir().unwrap();
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let (tx, mut rx) = mpsc::channel::<Bytes>(4);
        let collector = tokio::spawn(async move {
            let mut all = Vec::new();
            while let Some(bytes) = rx.recv().await {
                all.extend_from_slice(&bytes);
            }
            all
        });
        let spec = TaskSpec {
            command,
            args: &args,
            cwd: dir.path(),
            env: &env,
        };
        let (end, last) = run_task(&spec, tx, cancel).await;
        (end, collector.await.unwrap(), last)
    }

    #[tokio::test]
    async fn stdout_and_stderr_merge_in_write_order_bytes_untouched() {
        let script = r#"echo out1; echo err1 >&2; printf '\033[31mred\033[0m\n'; printf '50%%\r100%%\n' >&2; printf '\377\376'; echo out2"#;
        let (end, output, last) = run("sh", &["-c", script], &[], &CancellationToken::new()).await;
        assert_eq!(end, TaskEnd::Exited(0));
        assert_eq!(
            output,
            b"out1\nerr1\n\x1b[31mred\x1b[0m\n50%\r100%\n\xff\xfeout2\n".to_vec()
        );
        assert_eq!(last, Some(b'\n'));
    }

    #[tokio::test]
    async fn exit_codes_signals_and_start_failures() {
        let cancel = CancellationToken::new();
        let (end, _, last) = run("sh", &["-c", "printf x; exit 3"], &[], &cancel).await;
        assert_eq!(end, TaskEnd::Exited(3));
        assert_eq!(last, Some(b'x'));
        let (end, _, _) = run("sh", &["-c", "kill -9 $$"], &[], &cancel).await;
        assert_eq!(end, TaskEnd::Signalled(9));
        let (end, output, _) = run("/no/such/command", &[], &[], &cancel).await;
        assert!(matches!(end, TaskEnd::FailedToStart(ref m) if m.contains("/no/such/command")));
        assert!(output.is_empty());
    }

    #[tokio::test]
    async fn the_environment_reaches_the_task() {
        let (end, output, _) = run(
            "sh",
            &["-c", r#"printf '%s|%s' "$GREETING" "${HOME:+home}""#],
            &[("GREETING", "hi there")],
            &CancellationToken::new(),
        )
        .await;
        assert_eq!(end, TaskEnd::Exited(0));
        assert_eq!(output, b"hi there|home");
    }

    #[tokio::test]
    async fn background_processes_do_not_hold_the_task_open() {
        let started = std::time::Instant::now();
        let (end, output, _) = run(
            "sh",
            &["-c", "sleep 30 & echo $! > bg.pid; echo done"],
            &[],
            &CancellationToken::new(),
        )
        .await;
        assert_eq!(end, TaskEnd::Exited(0));
        assert_eq!(output, b"done\n");
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[tokio::test]
    async fn cancelling_stops_the_whole_process_group() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("child.pid");
        let script = format!(
            "sleep 600 & echo $! > {}; echo started; wait",
            pid_file.display()
        );
        let cancel = CancellationToken::new();
        let canceller = {
            let cancel = cancel.clone();
            let pid_file = pid_file.clone();
            tokio::spawn(async move {
                loop {
                    if let Ok(text) = std::fs::read_to_string(&pid_file)
                        && let Ok(pid) = text.trim().parse::<i32>()
                    {
                        cancel.cancel();
                        return pid;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
        };
        let started = std::time::Instant::now();
        let (end, output, _) = run("sh", &["-c", &script], &[], &cancel).await;
        assert_eq!(end, TaskEnd::Cancelled);
        assert_eq!(output, b"started\n");
        assert!(started.elapsed() < GRACE, "SIGTERM was enough");
        let child = canceller.await.unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let alive = std::fs::read_to_string(format!("/proc/{child}/stat"))
                .ok()
                .and_then(|s| parse_stat(&s))
                .is_some_and(|(state, _)| state != 'Z' && state != 'X');
            if !alive {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "sleep {child} survived"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn processes_ignoring_sigterm_get_sigkill() {
        let cancel = CancellationToken::new();
        let trigger = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            trigger.cancel();
        });
        let started = std::time::Instant::now();
        let (end, _, _) = run("sh", &["-c", "trap '' TERM; sleep 600"], &[], &cancel).await;
        assert_eq!(end, TaskEnd::Cancelled);
        assert!(started.elapsed() < GRACE + Duration::from_secs(5));
    }

    #[test]
    fn stat_lines_parse_even_with_odd_command_names() {
        let line = "1234 (we (ird) name) S 1 1230 1230 0 -1 4194560 ...";
        assert_eq!(parse_stat(line), Some(('S', 1230)));
        assert_eq!(parse_stat("1 (init) Z 0 1 1"), Some(('Z', 1)));
        assert_eq!(parse_stat("garbage"), None);
    }
}
