//! Starting, watching and stopping the control-plane processes of a test cluster.
//!
//! Every process runs in a process group of its own, so that a Ctrl-C in the terminal that
//! started a cluster does not take it down half-way, and is recorded in the cluster's state file
//! by pid and start time, so that a later run can find it again (and never kill an unrelated
//! process that happens to reuse the pid).

use std::fs::File;
use std::io::{Read as _, Seek as _, SeekFrom};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

/// A process as recorded in a cluster's state file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ProcessRecord {
    /// Component name, e.g. `kube-apiserver`.
    pub component: String,
    /// Operating-system process id.
    pub pid: u32,
    /// Start time in clock ticks since boot (`/proc/PID/stat` field 22), to tell pid reuse apart.
    pub start_ticks: u64,
    /// Where its stdout and stderr go.
    pub log: PathBuf,
}

impl ProcessRecord {
    /// Describes the calling process, to record as the owner of a test cluster.
    pub fn current() -> Result<Self> {
        let pid = std::process::id();
        Ok(Self {
            component: "owner".into(),
            pid,
            start_ticks: start_ticks(pid).context("reading this process's start time")?,
            log: PathBuf::new(),
        })
    }

    /// True while the recorded process (not another that reused its pid) is running.
    pub fn is_alive(&self) -> bool {
        start_ticks(self.pid) == Some(self.start_ticks)
    }

    /// Resident memory in KiB, if the process is alive.
    pub fn rss_kib(&self) -> Option<u64> {
        if !self.is_alive() {
            return None;
        }
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid)).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    }

    /// Sends SIGTERM, waits up to `grace`, then SIGKILL. Returns once the process is gone.
    pub fn stop(&self, grace: Duration) {
        if !self.is_alive() {
            return;
        }
        let pid = Pid::from_raw(self.pid as i32);
        let _ = kill(pid, Signal::SIGTERM);
        let deadline = Instant::now() + grace;
        while self.is_alive() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        if self.is_alive() {
            let _ = kill(pid, Signal::SIGKILL);
            let deadline = Instant::now() + Duration::from_secs(5);
            while self.is_alive() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        // An exited process whose parent is gone lingers as a zombie until init reaps it; wait
        // briefly so that `down` leaves no trace in the process table either.
        let deadline = Instant::now() + Duration::from_secs(2);
        while std::path::Path::new(&format!("/proc/{}", self.pid)).exists()
            && start_ticks_any_state(self.pid) == Some(self.start_ticks)
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Start time of `pid` in clock ticks since boot; `None` if there is no such process or it has
/// exited (a zombie counts as exited).
pub fn start_ticks(pid: u32) -> Option<u64> {
    let (state, ticks) = stat(pid)?;
    (state != "Z" && state != "X").then_some(ticks)
}

/// Like [`start_ticks`], but also for a zombie.
fn start_ticks_any_state(pid: u32) -> Option<u64> {
    stat(pid).map(|(_, ticks)| ticks)
}

/// State letter and start time from `/proc/PID/stat`.
fn stat(pid: u32) -> Option<(String, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may contain spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // fields[0] is field 3 (state); field 22 (starttime) is fields[19].
    Some((fields.first()?.to_string(), fields.get(19)?.parse().ok()?))
}

/// A control-plane process this run started.
#[derive(Debug)]
pub struct Spawned {
    /// What was recorded about it.
    pub record: ProcessRecord,
    child: Child,
}

impl Spawned {
    /// Starts `bin` with `args`, stdout and stderr appended to `log`, in its own process group.
    pub fn start(component: &str, bin: &Path, args: &[String], log: &Path) -> Result<Self> {
        if !bin.is_file() {
            bail!(
                "{component}: binary {} is missing (run e2e/build-tools.sh)",
                bin.display()
            );
        }
        let out = File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone()?;
        let child = Command::new(bin)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {component} ({})", bin.display()))?;
        let pid = child.id();
        // The child is not reaped until we wait for it, so even one that exited at once still
        // has its /proc entry (as a zombie); `check_running` reports its exit.
        let start_ticks = start_ticks_any_state(pid)
            .with_context(|| format!("reading the start time of {component} (pid {pid})"))?;
        Ok(Self {
            record: ProcessRecord {
                component: component.into(),
                pid,
                start_ticks,
                log: log.into(),
            },
            child,
        })
    }

    /// Fails with the exit status and the end of the log if the process has exited.
    pub fn check_running(&mut self, cluster: &str) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "{} of cluster {cluster} exited during start-up ({status}); its log is {}:\n{}",
                self.record.component,
                self.record.log.display(),
                log_tail(&self.record.log, 15)
            );
        }
        Ok(())
    }

    /// Stops the process (SIGTERM, then SIGKILL after `grace`) and reaps it.
    pub fn stop(&mut self, grace: Duration) {
        self.record.stop(grace);
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The last `lines` lines of a log file, for error messages.
pub fn log_tail(path: &Path, lines: usize) -> String {
    let mut text = String::new();
    if let Ok(mut f) = File::open(path) {
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        let _ = f.seek(SeekFrom::Start(len.saturating_sub(16 * 1024)));
        let _ = f.read_to_string(&mut text);
    }
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Picks `n` distinct free TCP ports on 127.0.0.1.
///
/// The ports are released before the caller binds them, so another process may take one in
/// between; the harness retries start-up with fresh ports when a component reports
/// "address already in use".
pub fn free_ports(n: usize) -> Result<Vec<u16>> {
    let listeners = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<Vec<_>>>()
        .context("finding free ports on 127.0.0.1")?;
    listeners
        .iter()
        .map(|l| Ok(l.local_addr()?.port()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_start_time_and_tells_dead_pids() {
        let me = ProcessRecord::current().unwrap();
        assert!(me.is_alive());
        assert!(me.rss_kib().unwrap() > 0);
        let reused = ProcessRecord {
            start_ticks: me.start_ticks + 1,
            ..me.clone()
        };
        assert!(
            !reused.is_alive(),
            "a different start time means another process"
        );
    }

    #[test]
    fn a_process_that_exits_early_is_reported_with_its_log() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("sh.log");
        let args = vec![
            "-c".to_string(),
            "echo boom: port in use >&2; exit 3".to_string(),
        ];
        let mut p = Spawned::start("fake-component", Path::new("/bin/sh"), &args, &log).unwrap();
        std::thread::sleep(Duration::from_millis(300));
        let err = p.check_running("demo").unwrap_err().to_string();
        assert!(
            err.contains("fake-component of cluster demo exited"),
            "{err}"
        );
        assert!(err.contains("boom: port in use"), "{err}");
        assert!(err.contains(&log.display().to_string()), "{err}");
    }

    #[test]
    fn stop_ends_a_running_process() {
        let dir = tempfile::tempdir().unwrap();
        let args = vec!["-c".to_string(), "sleep 30".to_string()];
        let mut p = Spawned::start(
            "sleeper",
            Path::new("/bin/sh"),
            &args,
            &dir.path().join("l"),
        )
        .unwrap();
        p.check_running("demo").unwrap();
        let record = p.record.clone();
        p.stop(Duration::from_secs(2));
        assert!(!record.is_alive());
    }

    #[test]
    fn a_missing_binary_is_named() {
        let err = Spawned::start(
            "etcd",
            Path::new("/nonexistent/etcd"),
            &[],
            Path::new("/tmp/x"),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("/nonexistent/etcd is missing"), "{err}");
    }

    #[test]
    fn free_ports_are_distinct() {
        let p = free_ports(4).unwrap();
        let mut q = p.clone();
        q.sort();
        q.dedup();
        assert_eq!(q.len(), 4);
    }
}
