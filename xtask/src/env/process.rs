//! The environment's daemons: started in their own process group with output to a log file,
//! remembered by pid (and program, against pid reuse), stopped by that pid only.

use std::fs::OpenOptions;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::sh::succeeds;

/// A long-running program of the environment.
pub struct Daemon {
    /// Short name: the pid file and log file are named after it.
    pub name: &'static str,
    pub program: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub cwd: Option<PathBuf>,
}

impl Daemon {
    pub fn new(name: &'static str, program: impl Into<PathBuf>) -> Self {
        Self {
            name,
            program: program.into(),
            args: Vec::new(),
            env: Vec::new(),
            cwd: None,
        }
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    pub fn env(mut self, k: &str, v: impl Into<String>) -> Self {
        self.env.push((k.to_string(), v.into()));
        self
    }

    pub fn cwd(mut self, dir: impl Into<PathBuf>) -> Self {
        self.cwd = Some(dir.into());
        self
    }

    /// Starts the daemon unless the pid file names a live process of the same program.
    /// Returns `true` when it started it now.
    pub fn start(&self, env_dir: &Path) -> Result<bool> {
        if let Some(pid) = running(env_dir, self.name) {
            eprintln!("    {} already running (pid {pid})", self.name);
            return Ok(false);
        }
        let log_path = env_dir.join("logs").join(format!("{}.log", self.name));
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("opening {}", log_path.display()))?;
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            // Its own process group: the daemon outlives `cargo xtask` and a Ctrl-C in the
            // terminal that ran it.
            .process_group(0);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        if let Some(dir) = &self.cwd {
            cmd.current_dir(dir);
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {} ({})", self.name, self.program.display()))?;
        let pid = child.id();
        let exe =
            std::fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_else(|_| self.program.clone());
        std::fs::write(
            pid_file(env_dir, self.name),
            format!("{pid}\n{}\n", exe.display()),
        )?;
        eprintln!(
            "    started {} (pid {pid}, log {})",
            self.name,
            log_path.display()
        );
        Ok(true)
    }
}

fn pid_file(env_dir: &Path, name: &str) -> PathBuf {
    env_dir.join("pids").join(format!("{name}.pid"))
}

/// Is `pid` a live (not zombie) process?
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state is the first field after the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// The pid of daemon `name` if the pid file names a live process running the same program.
pub fn running(env_dir: &Path, name: &str) -> Option<u32> {
    let text = std::fs::read_to_string(pid_file(env_dir, name)).ok()?;
    let mut lines = text.lines();
    let pid: u32 = lines.next()?.trim().parse().ok()?;
    let exe = lines.next()?.trim();
    if !alive(pid) {
        return None;
    }
    // Against pid reuse: the process must still be the program we started. A binary that
    // was replaced on disk shows as "… (deleted)", which still counts as ours.
    let now = std::fs::read_link(format!("/proc/{pid}/exe")).ok()?;
    let now = now.to_string_lossy();
    (now.trim_end_matches(" (deleted)") == exe).then_some(pid)
}

/// Sends `signal` to `pid`.
pub fn signal(pid: u32, signal: &str) {
    let _ = succeeds(
        Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string()),
    );
}

/// Waits until `pid` is gone, sending SIGKILL after `grace`.
pub fn wait_gone(pid: u32, grace: Duration) {
    let start = Instant::now();
    while alive(pid) {
        if start.elapsed() > grace {
            signal(pid, "KILL");
            let hard = Instant::now();
            while alive(pid) && hard.elapsed() < Duration::from_secs(5) {
                std::thread::sleep(Duration::from_millis(50));
            }
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Stops daemon `name` (SIGTERM, then SIGKILL after `grace`) and removes its pid file.
pub fn stop(env_dir: &Path, name: &str, grace: Duration) {
    if let Some(pid) = running(env_dir, name) {
        let start = Instant::now();
        signal(pid, "TERM");
        wait_gone(pid, grace);
        eprintln!(
            "    stopped {name} (pid {pid}) in {:.1} s",
            start.elapsed().as_secs_f64()
        );
    }
    let _ = std::fs::remove_file(pid_file(env_dir, name));
}

/// Polls `check` every 200 ms until it returns `true`, failing after `timeout` with a
/// message that names what was awaited and where to look.
pub fn wait_until(
    what: &str,
    timeout: Duration,
    hint: &str,
    mut check: impl FnMut() -> bool,
) -> Result<()> {
    let start = Instant::now();
    loop {
        if check() {
            eprintln!(
                "    {what}: ready after {:.1} s",
                start.elapsed().as_secs_f64()
            );
            return Ok(());
        }
        if start.elapsed() > timeout {
            bail!("{what} not ready after {} s: see {hint}", timeout.as_secs());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Pids of live processes whose command line contains `needle` (used to find the container
/// shims that our containerd started, which outlive it by design).
pub fn pids_with_cmdline(needle: &str) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_string_lossy().parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| {
                    String::from_utf8_lossy(&c)
                        .replace('\0', " ")
                        .contains(needle)
                })
                .unwrap_or(false)
        })
        .filter(|pid| alive(*pid))
        .collect()
}
