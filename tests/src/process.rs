//! Running project binaries as separate processes (as they run in pods), with their stdout
//! collected line by line and their stderr kept in a log file.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};

fn workspace_root() -> PathBuf {
    let tests = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    tests.parent().map(Path::to_path_buf).unwrap_or(tests)
}

/// Is this process a release build (a benchmark run with `--release`)? Then the binaries it
/// starts are release builds too.
fn release() -> bool {
    std::env::current_exe()
        .ok()
        .is_some_and(|p| p.components().any(|c| c.as_os_str() == "release"))
}

/// The path of a workspace binary, built (once per test process) with the same cargo that
/// runs the tests, so a test never runs a stale binary. It builds every binary of the
/// workspace: building one package alone resolves features differently and would rebuild
/// shared dependencies twice. A release-built caller gets release binaries.
///
/// # Errors
/// The build failed.
pub fn binary(bin: &str) -> Result<PathBuf, String> {
    if let Some(dir) = PRIVATE.get() {
        return Ok(dir.join(bin));
    }
    static BUILT: OnceLock<Result<(), String>> = OnceLock::new();
    let root = workspace_root();
    BUILT
        .get_or_init(|| {
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let mut cmd = Command::new(cargo);
            // The variables cargo sets for a running test (CARGO_PKG_*, CARGO_MANIFEST_DIR,
            // …) would leak into the build scripts of this build and make cargo rebuild the
            // workspace: the build gets the environment cargo itself was started with.
            for (k, _) in std::env::vars_os() {
                let k = k.to_string_lossy();
                if k.starts_with("CARGO_") && k != "CARGO_HOME" && k != "CARGO_TARGET_DIR" {
                    cmd.env_remove(&*k);
                }
            }
            cmd.current_dir(&root)
                .args(["build", "--quiet", "--workspace", "--bins"]);
            if release() {
                cmd.arg("--release");
            }
            let status = cmd.status().map_err(|e| format!("cargo build: {e}"))?;
            if status.success() {
                Ok(())
            } else {
                Err("cargo build --workspace --bins failed".to_string())
            }
        })
        .clone()?;
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let profile = if release() { "release" } else { "debug" };
    Ok(target.join(profile).join(bin))
}

/// Where [`binary`] finds the binaries once [`use_private_copies`] made them.
static PRIVATE: OnceLock<PathBuf> = OnceLock::new();

/// For a long run (the soak): builds the workspace's binaries as [`binary`] does, copies
/// `bins` into `dir`, and makes [`binary`] return those copies from now on, so a build during
/// the run never changes what it restarts. Returns `dir`.
///
/// # Errors
/// The build or a copy failed, or copies were made already.
pub fn use_private_copies(bins: &[&str], dir: &Path) -> Result<PathBuf, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    for bin in bins {
        let from = binary(bin)?;
        std::fs::copy(&from, dir.join(bin)).map_err(|e| format!("copying {bin}: {e}"))?;
    }
    PRIVATE
        .set(dir.to_path_buf())
        .map_err(|_| "private copies were made already".to_string())?;
    Ok(dir.to_path_buf())
}

/// A running child process; killed (SIGKILL) when dropped, so no test leaves one behind.
pub struct Proc {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    /// Where its stderr goes.
    pub log: PathBuf,
}

impl Proc {
    /// Starts `cmd` with stdout collected and stderr appended to `log`.
    ///
    /// # Errors
    /// It could not be started.
    pub fn spawn(mut cmd: Command, log: PathBuf) -> std::io::Result<Self> {
        let err = std::fs::File::create(&log)?;
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(err)
            .spawn()?;
        let lines = Arc::new(Mutex::new(Vec::new()));
        if let Some(out) = child.stdout.take() {
            let sink = lines.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    if let Ok(mut l) = sink.lock() {
                        l.push(line);
                    }
                }
            });
        }
        Ok(Self { child, lines, log })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its peak resident memory so far (`VmHWM`), in MiB.
    ///
    /// # Errors
    /// `/proc/PID/status` cannot be read (the process is gone) or has no `VmHWM`.
    pub fn peak_rss_mib(&self) -> Result<f64, String> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .map_err(|e| format!("/proc/{}/status: {e}", self.pid()))?;
        let kb: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .ok_or("no VmHWM")?;
        Ok(kb / 1024.0)
    }

    /// Every stdout line so far.
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// Sends a signal (`KILL`, `TERM`, `STOP`, `CONT`).
    pub fn signal(&self, signal: &str) {
        let _ = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status();
    }

    /// Has it exited? With its exit code.
    pub fn exited(&mut self) -> Option<Option<i32>> {
        self.child.try_wait().ok().flatten().map(|s| s.code())
    }

    /// Its whole stderr log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last lines of its stderr log, for failure messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
