//! Running one task: a process in its own process group, its stdout and stderr on ONE pipe
//! (as `2>&1` would give them, so their order is exactly the order the process wrote in),
//! read into the console stream.
//!
//! A task that ends normally but left background processes behind (`server &` for the next
//! task) does not keep the task open: once the task's own process has exited, the agent reads
//! what is already in the pipe and moves on, but keeps the pipe open and drained into the
//! console for the rest of the job (a closed pipe would kill those processes with `SIGPIPE` on
//! their next write); what such a process writes later may reach the console before or after
//! the next task's own lines, as each pipe has its own reader. [`JobProcesses`] records every
//! task's process group: when the job ends, or is cancelled, every group still alive is
//! stopped: `SIGTERM`, then `SIGKILL` after [`GRACE`].
//!
//! Limits: a process that leaves its group (`setsid`, `setpgid`, a shell with job control)
//! escapes; so does one that outlives its group's recording. Making the agent a child
//! subreaper (`PR_SET_CHILD_SUBREAPER`) would catch those, but the agent would then have to
//! reap arbitrary orphans with `waitpid(-1)`, which races tokio's own reaping of the task
//! processes; so it is not done. A group is signalled only while the agent has seen it alive
//! (dead groups are forgotten as tasks start), which keeps the window in which its number
//! could be reused by an unrelated group small.
//!
//! Tasks get the agent's environment without its own `FERROCD_*` variables (the registration
//! key among them), plus the job's variables.

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
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Time a stopped task's processes get between `SIGTERM` and `SIGKILL`.
pub const GRACE: Duration = Duration::from_secs(5);
/// After the task's process exits, how long to wait for the pipe to close.
const LINGER: Duration = Duration::from_millis(200);
/// After that, at most this much more already-buffered output is read at once.
const DRAIN_LIMIT: usize = 64 * 1024 * 1024;
const READ_BUFFER: usize = 64 * 1024;
/// Prefix of the agent's own environment variables, never passed to tasks.
const AGENT_VARIABLES: &str = "FERROCD_";

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

/// The process groups and still-open output pipes of one job's tasks.
#[derive(Default)]
pub struct JobProcesses {
    groups: Vec<i32>,
    /// Readers of pipes some background process still holds: (stop, reader task).
    drains: Vec<(CancellationToken, JoinHandle<Option<pipe::Receiver>>)>,
}

impl JobProcesses {
    pub fn new() -> Self {
        Self::default()
    }

    fn record_group(&mut self, pgid: i32) {
        self.groups.retain(|&group| group_alive(group));
        self.groups.push(pgid);
    }

    /// Ends the job's processes: stops every group still alive (`SIGTERM`, `SIGKILL` after
    /// [`GRACE`]), then reads what their pipes still hold and closes them.
    pub async fn finish(&mut self) {
        let groups = std::mem::take(&mut self.groups);
        stop_groups(&groups).await;
        let deadline = tokio::time::Instant::now() + LINGER;
        for (stop, mut reader) in self.drains.drain(..) {
            if tokio::time::timeout_at(deadline, &mut reader)
                .await
                .is_err()
            {
                // Still held open (by a process that left its group): read what is there.
                stop.cancel();
                let _ = reader.await;
            }
        }
    }
}

impl Drop for JobProcesses {
    fn drop(&mut self) {
        // `finish` was not reached (the job's future was dropped): at least do not leave
        // processes behind.
        for &group in &self.groups {
            if group_alive(group) {
                signal_group(group, libc::SIGKILL);
            }
        }
        for (stop, _) in &self.drains {
            stop.cancel();
        }
    }
}

/// Runs the task to its end, sending its output to `output`; its process group and, if a
/// background process still holds it, its pipe are left in `job`.
pub async fn run_task<T: From<Bytes> + Send + 'static>(
    spec: &TaskSpec<'_>,
    output: mpsc::Sender<T>,
    cancel: &CancellationToken,
    job: &mut JobProcesses,
) -> TaskEnd {
    if cancel.is_cancelled() {
        return TaskEnd::Cancelled;
    }
    let (reader, writer) = match io::pipe() {
        Ok(pair) => pair,
        Err(e) => return TaskEnd::FailedToStart(format!("cannot create a pipe: {e}")),
    };
    let spawned = {
        let stderr = match writer.try_clone() {
            Ok(w) => w,
            Err(e) => return TaskEnd::FailedToStart(format!("cannot create a pipe: {e}")),
        };
        let mut command = tokio::process::Command::new(spec.command);
        for (name, _) in std::env::vars_os() {
            if name
                .as_encoded_bytes()
                .starts_with(AGENT_VARIABLES.as_bytes())
            {
                command.env_remove(name);
            }
        }
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
            return TaskEnd::FailedToStart(format!("could not start '{}': {e}", spec.command));
        }
    };
    let pgid = child.id().map(|id| id as i32);
    if let Some(pgid) = pgid {
        job.record_group(pgid);
    }
    let reader = match pipe::Receiver::from_owned_fd(OwnedFd::from(reader)) {
        Ok(reader) => Some(reader),
        Err(e) => {
            tracing::error!("cannot read the task's output: {e}");
            None
        }
    };
    let stop_reading = CancellationToken::new();
    let mut reading = tokio::spawn(pump(reader, output.clone(), stop_reading.clone()));

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
            stop_groups(&[pgid]).await;
            tokio::time::timeout(GRACE, child.wait())
                .await
                .ok()
                .and_then(Result::ok)
        }
        (None, None) => None,
    };
    let held_open = match tokio::time::timeout(LINGER, &mut reading).await {
        Ok(joined) => joined.unwrap_or(None),
        Err(_) => {
            // Background processes hold the pipe: take what is there now, then keep reading
            // for the rest of the job.
            stop_reading.cancel();
            reading.await.unwrap_or(None)
        }
    };
    if let Some(reader) = held_open {
        let stop = CancellationToken::new();
        let reading = tokio::spawn(pump(Some(reader), output, stop.clone()));
        job.drains.push((stop, reading));
    }
    if cancelled {
        return TaskEnd::Cancelled;
    }
    match status {
        Some(status) => match (status.code(), status.signal()) {
            (Some(code), _) => TaskEnd::Exited(code),
            (None, Some(signal)) => TaskEnd::Signalled(signal),
            (None, None) => TaskEnd::Exited(-1),
        },
        None => TaskEnd::Exited(-1),
    }
}

/// Reads the pipe into `output` until it closes (then None); once `stop` fires, reads only
/// what is already buffered and hands the pipe back.
async fn pump<T: From<Bytes>>(
    reader: Option<pipe::Receiver>,
    output: mpsc::Sender<T>,
    stop: CancellationToken,
) -> Option<pipe::Receiver> {
    let mut reader = reader?;
    let mut buffer = vec![0u8; READ_BUFFER];
    loop {
        let read = tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            read = reader.read(&mut buffer) => read,
        };
        match read {
            Ok(0) | Err(_) => return None,
            Ok(n) => {
                if output
                    .send(Bytes::copy_from_slice(&buffer[..n]).into())
                    .await
                    .is_err()
                {
                    return None;
                }
            }
        }
    }
    let mut drained = 0;
    while drained < DRAIN_LIMIT {
        match reader.try_read(&mut buffer) {
            Ok(0) => return None,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(_) => return None,
            Ok(n) => {
                drained += n;
                if output
                    .send(Bytes::copy_from_slice(&buffer[..n]).into())
                    .await
                    .is_err()
                {
                    return None;
                }
            }
        }
    }
    Some(reader)
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

/// Stops every process of the groups `pgids`: `SIGTERM`, then `SIGKILL` after [`GRACE`].
pub async fn stop_groups(pgids: &[i32]) {
    let alive = |groups: &[i32]| -> Vec<i32> {
        groups
            .iter()
            .copied()
            .filter(|&group| group_alive(group))
            .collect()
    };
    let mut remaining = alive(pgids);
    for &group in &remaining {
        signal_group(group, libc::SIGTERM);
    }
    let deadline = tokio::time::Instant::now() + GRACE;
    while !remaining.is_empty() {
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!(groups = ?remaining, "task processes outlived SIGTERM; sending SIGKILL");
            for &group in &remaining {
                signal_group(group, libc::SIGKILL);
            }
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        remaining = alive(&remaining);
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    while !alive(&remaining).is_empty() && tokio::time::Instant::now() < deadline {
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

    /// Output collected from a channel until every sender is gone.
    fn collector() -> (mpsc::Sender<Bytes>, JoinHandle<Vec<u8>>) {
        let (tx, mut rx) = mpsc::channel::<Bytes>(4);
        let collector = tokio::spawn(async move {
            let mut all = Vec::new();
            while let Some(bytes) = rx.recv().await {
                all.extend_from_slice(&bytes);
            }
            all
        });
        (tx, collector)
    }

    async fn run_in(
        dir: &Path,
        job: &mut JobProcesses,
        output: &mpsc::Sender<Bytes>,
        command: &str,
        args: &[&str],
        env: &[(&str, &str)],
        cancel: &CancellationToken,
    ) -> TaskEnd {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let spec = TaskSpec {
            command,
            args: &args,
            cwd: dir,
            env: &env,
        };
        run_task(&spec, output.clone(), cancel, job).await
    }

    /// Runs one task as a whole job (its processes are stopped at the end).
    async fn run(
        command: &str,
        args: &[&str],
        env: &[(&str, &str)],
        cancel: &CancellationToken,
    ) -> (TaskEnd, Vec<u8>) {
        let dir = tempfile::tempdir().unwrap();
        let (tx, collector) = collector();
        let mut job = JobProcesses::new();
        let end = run_in(dir.path(), &mut job, &tx, command, args, env, cancel).await;
        job.finish().await;
        drop(tx);
        (end, collector.await.unwrap())
    }

    fn alive(pid: i32) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| parse_stat(&s))
            .is_some_and(|(state, _)| state != 'Z' && state != 'X')
    }

    async fn wait_gone(pid: i32) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while alive(pid) {
            assert!(
                std::time::Instant::now() < deadline,
                "process {pid} survived"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn wait_for_file(path: &Path) -> String {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(text) = std::fs::read_to_string(path)
                && text.ends_with('\n')
            {
                return text;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{} never appeared",
                path.display()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn read_pid(text: &str) -> i32 {
        text.trim().parse().unwrap()
    }

    #[tokio::test]
    async fn stdout_and_stderr_merge_in_write_order_bytes_untouched() {
        let script = r#"echo out1; echo err1 >&2; printf '\033[31mred\033[0m\n'; printf '50%%\r100%%\n' >&2; printf '\377\376'; echo out2"#;
        let (end, output) = run("sh", &["-c", script], &[], &CancellationToken::new()).await;
        assert_eq!(end, TaskEnd::Exited(0));
        assert_eq!(
            output,
            b"out1\nerr1\n\x1b[31mred\x1b[0m\n50%\r100%\n\xff\xfeout2\n".to_vec()
        );
    }

    #[tokio::test]
    async fn exit_codes_signals_and_start_failures() {
        let cancel = CancellationToken::new();
        let (end, output) = run("sh", &["-c", "printf x; exit 3"], &[], &cancel).await;
        assert_eq!(end, TaskEnd::Exited(3));
        assert_eq!(output, b"x");
        let (end, _) = run("sh", &["-c", "kill -9 $$"], &[], &cancel).await;
        assert_eq!(end, TaskEnd::Signalled(9));
        let (end, output) = run("/no/such/command", &[], &[], &cancel).await;
        assert!(matches!(end, TaskEnd::FailedToStart(ref m) if m.contains("/no/such/command")));
        assert!(output.is_empty());
    }

    #[tokio::test]
    async fn the_environment_reaches_the_task() {
        let (end, output) = run(
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
        let dir = tempfile::tempdir().unwrap();
        let (tx, collector) = collector();
        let mut job = JobProcesses::new();
        let started = std::time::Instant::now();
        let end = run_in(
            dir.path(),
            &mut job,
            &tx,
            "sh",
            &["-c", "sleep 30 & echo $! > bg.pid; echo done"],
            &[],
            &CancellationToken::new(),
        )
        .await;
        assert_eq!(end, TaskEnd::Exited(0));
        assert!(started.elapsed() < Duration::from_secs(10));
        let background = read_pid(&wait_for_file(&dir.path().join("bg.pid")).await);
        assert!(alive(background), "the background process runs on");
        // The job's end stops it.
        job.finish().await;
        drop(tx);
        assert_eq!(collector.await.unwrap(), b"done\n");
        wait_gone(background).await;
    }

    #[tokio::test]
    async fn background_processes_keep_writing_after_their_task_ended() {
        let dir = tempfile::tempdir().unwrap();
        let (tx, collector) = collector();
        let mut job = JobProcesses::new();
        let cancel = CancellationToken::new();
        // The background process writes only once its task (and the next) have ended: a
        // closed pipe would kill it with SIGPIPE before it records that it wrote.
        let script = "(while [ ! -e gate ]; do sleep 0.02; done; echo late; echo yes > wrote; sleep 600) & echo $! > bg.pid; echo first";
        let end = run_in(
            dir.path(),
            &mut job,
            &tx,
            "sh",
            &["-c", script],
            &[],
            &cancel,
        )
        .await;
        assert_eq!(end, TaskEnd::Exited(0));
        let end = run_in(
            dir.path(),
            &mut job,
            &tx,
            "sh",
            &["-c", "echo second"],
            &[],
            &cancel,
        )
        .await;
        assert_eq!(end, TaskEnd::Exited(0));
        std::fs::write(dir.path().join("gate"), b"").unwrap();
        wait_for_file(&dir.path().join("wrote")).await;
        let background = read_pid(&std::fs::read_to_string(dir.path().join("bg.pid")).unwrap());
        job.finish().await;
        drop(tx);
        assert_eq!(collector.await.unwrap(), b"first\nsecond\nlate\n");
        wait_gone(background).await;
    }

    #[tokio::test]
    async fn finishing_the_job_stops_every_tasks_processes() {
        let dir = tempfile::tempdir().unwrap();
        let (tx, collector) = collector();
        let mut job = JobProcesses::new();
        let cancel = CancellationToken::new();
        for name in ["a", "b"] {
            let script = format!("sleep 600 & echo $! > {name}.pid");
            let end = run_in(
                dir.path(),
                &mut job,
                &tx,
                "sh",
                &["-c", &script],
                &[],
                &cancel,
            )
            .await;
            assert_eq!(end, TaskEnd::Exited(0));
        }
        // The third task is cancelled: the earlier ones' processes go too.
        let trigger = cancel.clone();
        let gate = dir.path().join("c.pid");
        tokio::spawn(async move {
            wait_for_file(&gate).await;
            trigger.cancel();
        });
        let end = run_in(
            dir.path(),
            &mut job,
            &tx,
            "sh",
            &["-c", "sleep 600 & echo $! > c.pid; wait"],
            &[],
            &cancel,
        )
        .await;
        assert_eq!(end, TaskEnd::Cancelled);
        let started = std::time::Instant::now();
        job.finish().await;
        assert!(started.elapsed() < GRACE, "SIGTERM was enough");
        drop(tx);
        collector.await.unwrap();
        for name in ["a", "b", "c"] {
            let pid =
                read_pid(&std::fs::read_to_string(dir.path().join(format!("{name}.pid"))).unwrap());
            wait_gone(pid).await;
        }
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
                let pid = read_pid(&wait_for_file(&pid_file).await);
                cancel.cancel();
                pid
            })
        };
        let started = std::time::Instant::now();
        let (end, output) = run("sh", &["-c", &script], &[], &cancel).await;
        assert_eq!(end, TaskEnd::Cancelled);
        assert_eq!(output, b"started\n");
        assert!(started.elapsed() < GRACE, "SIGTERM was enough");
        wait_gone(canceller.await.unwrap()).await;
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
        let (end, _) = run("sh", &["-c", "trap '' TERM; sleep 600"], &[], &cancel).await;
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
