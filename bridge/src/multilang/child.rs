//! One child process of the user's command: the I/O shell around the protocol. It writes a
//! message on the child's stdin, answers its `checkpoint` requests, and returns when the
//! child's `status` names the action; its stderr goes to the log line by line.

use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{ChildStdin, ChildStdout, Command};

use super::message::{self, Action, FromChild, Line};

/// Why a call to a child failed. The child is not usable afterwards.
#[derive(Debug, thiserror::Error)]
pub enum ChildError {
    /// The command could not be started.
    #[error("cannot start `{command}`: {source}")]
    Spawn {
        /// The command line.
        command: String,
        /// Why.
        source: std::io::Error,
    },
    /// The child closed its stdout or stdin: it exited, or crashed.
    #[error("the child process exited ({status}) during {action}")]
    Exited {
        /// The action it was given.
        action: &'static str,
        /// How it ended, as far as known.
        status: String,
    },
    /// The child did not answer within the timeout.
    #[error("the child process did not finish {action} within {timeout:?} (--timeout-seconds)")]
    Hung {
        /// The action it was given.
        action: &'static str,
        /// The timeout.
        timeout: Duration,
    },
    /// The child's `status` named another action than the one it was given.
    #[error("the child answered {action} with a status for {response_for:?}")]
    Protocol {
        /// The action it was given.
        action: &'static str,
        /// What its status named.
        response_for: String,
    },
}

/// A running child.
pub struct Child {
    process: tokio::process::Child,
    stdin: ChildStdin,
    stdout: Lines<BufReader<ChildStdout>>,
    pid: Option<u32>,
    /// The child's process group: whatever it started (a shell's command, a worker pool) is
    /// killed with it.
    _group: Group,
}

/// A process group, killed (SIGKILL) when dropped: after the child exited or was killed,
/// nothing it started outlives it. (The group's id is not reused while any member lives.)
struct Group(Option<nix::unistd::Pid>);

impl Group {
    fn kill(&self) {
        if let Some(pgid) = self.0 {
            // ESRCH (the group is empty) is the usual case after a clean exit.
            let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
        }
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        self.kill();
    }
}

impl Child {
    /// Starts `command` in a process group of its own with piped stdin/stdout/stderr, its
    /// stderr logged under `shard_id`. The process and its group are killed when the `Child`
    /// is dropped or killed, and what is left of the group once it finished.
    ///
    /// # Errors
    /// [`ChildError::Spawn`].
    pub fn spawn(command: &[String], shard_id: &str) -> Result<Self, ChildError> {
        let spawn_error = |source| ChildError::Spawn {
            command: command.join(" "),
            source,
        };
        let (program, args) = command
            .split_first()
            .ok_or_else(|| spawn_error(std::io::Error::other("the command is empty")))?;
        let mut process = Command::new(program)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            // Its own process group, so that killing it kills what it started too.
            .process_group(0)
            .spawn()
            .map_err(spawn_error)?;
        let missing = || spawn_error(std::io::Error::other("no pipe to the child"));
        let stdin = process.stdin.take().ok_or_else(missing)?;
        let stdout = process.stdout.take().ok_or_else(missing)?;
        let stderr = process.stderr.take().ok_or_else(missing)?;
        let pid = process.id();
        tokio::spawn(forward_stderr(stderr, shard_id.to_string(), pid));
        tracing::info!(shard = %shard_id, pid, "started the app's process");
        Ok(Self {
            process,
            stdin,
            stdout: BufReader::new(stdout).lines(),
            pid,
            _group: Group(
                pid.and_then(|p| i32::try_from(p).ok())
                    .map(nix::unistd::Pid::from_raw),
            ),
        })
    }

    /// The child's process id.
    pub fn pid(&self) -> Option<u32> {
        self.pid
    }

    /// Sends `line` (a message for `action`) and reads the child's answers until its
    /// `status` for `action`; each `checkpoint` request is answered with what `on_checkpoint`
    /// returns (the reply line), non-protocol output is logged and skipped.
    ///
    /// # Errors
    /// [`ChildError::Exited`], [`ChildError::Hung`] after `timeout`, [`ChildError::Protocol`].
    pub async fn call(
        &mut self,
        action: Action,
        line: &[u8],
        timeout: Duration,
        mut on_checkpoint: impl FnMut(Option<&str>, Option<u64>) -> Vec<u8>,
    ) -> Result<(), ChildError> {
        let name = action.name();
        let exchange = async {
            self.write(name, line).await?;
            loop {
                let text = match self.stdout.next_line().await {
                    Ok(Some(text)) => text,
                    Ok(None) | Err(_) => return Err(self.exited(name).await),
                };
                match message::parse(&text) {
                    Line::Blank => {}
                    Line::NotProtocol(text) => {
                        tracing::info!(pid = self.pid, stdout = %text, "app (not a protocol message, skipped)");
                    }
                    Line::Message(FromChild::Status { response_for }) if response_for == name => {
                        return Ok(());
                    }
                    Line::Message(FromChild::Status { response_for }) => {
                        return Err(ChildError::Protocol {
                            action: name,
                            response_for,
                        });
                    }
                    Line::Message(FromChild::Checkpoint {
                        sequence_number,
                        sub_sequence_number,
                    }) => {
                        let reply = on_checkpoint(sequence_number.as_deref(), sub_sequence_number);
                        self.write(name, &reply).await?;
                    }
                    Line::Message(FromChild::Other { action }) => {
                        tracing::warn!(pid = self.pid, %action, "the app sent an action the MultiLang protocol does not have: skipped");
                    }
                }
            }
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .unwrap_or(Err(ChildError::Hung {
                action: name,
                timeout,
            }))
    }

    async fn write(&mut self, action: &'static str, line: &[u8]) -> Result<(), ChildError> {
        let written = async {
            self.stdin.write_all(line).await?;
            self.stdin.flush().await
        };
        match written.await {
            Ok(()) => Ok(()),
            Err(_) => Err(self.exited(action).await),
        }
    }

    async fn exited(&mut self, action: &'static str) -> ChildError {
        // The pipe closed: give the process a moment to be reaped so its status is known.
        let status = tokio::time::timeout(Duration::from_secs(2), self.process.wait())
            .await
            .ok()
            .and_then(Result::ok);
        ChildError::Exited {
            action,
            status: describe(status),
        }
    }

    /// Ends the child: closes its stdin (kclpy's loop ends at end of input) and waits up to
    /// `grace` for it to exit, then kills it.
    pub async fn finish(mut self, grace: Duration) {
        drop(self.stdin);
        match tokio::time::timeout(grace, self.process.wait()).await {
            Ok(Ok(status)) => {
                tracing::debug!(pid = self.pid, %status, "the app's process exited");
            }
            _ => {
                tracing::warn!(
                    pid = self.pid,
                    "the app's process did not exit within {grace:?} of its stdin closing: killed"
                );
                let _ = self.process.kill().await;
            }
        }
    }

    /// Kills the child and its process group at once (it hung, crashed or broke the
    /// protocol).
    pub async fn kill(mut self) {
        self._group.kill();
        let _ = self.process.kill().await;
    }
}

/// Logs a child's stderr line by line. A line still unterminated after a quiet
/// [`STDERR_QUIET`] (a library that writes without a newline, like kclpy's sample) or longer
/// than [`STDERR_MAX_LINE`] is logged as it stands.
async fn forward_stderr(mut stderr: tokio::process::ChildStderr, shard: String, pid: Option<u32>) {
    use tokio::io::AsyncReadExt;
    let mut pending: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 8192];
    let log = |bytes: &[u8]| {
        let text = String::from_utf8_lossy(bytes);
        let text = text.trim_end();
        if !text.is_empty() {
            tracing::info!(shard = %shard, pid, stderr = %text, "app");
        }
    };
    loop {
        match tokio::time::timeout(STDERR_QUIET, stderr.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => {
                pending.extend_from_slice(&chunk[..n]);
                while let Some(at) = pending.iter().position(|b| *b == b'\n') {
                    log(&pending[..at]);
                    pending.drain(..=at);
                }
                if pending.len() > STDERR_MAX_LINE {
                    log(&pending);
                    pending.clear();
                }
            }
            Err(_) => {
                if !pending.is_empty() {
                    log(&pending);
                    pending.clear();
                }
            }
        }
    }
    log(&pending);
}

/// How long a child's unterminated stderr line waits for its newline before it is logged.
const STDERR_QUIET: Duration = Duration::from_millis(100);
/// The longest stderr line logged in one piece (bytes).
const STDERR_MAX_LINE: usize = 64 * 1024;

fn describe(status: Option<ExitStatus>) -> String {
    match status {
        Some(s) => s.to_string(),
        None => "still running with its pipes closed".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Is `pid` alive (not gone, not a zombie)?
    fn alive(pid: i32) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| s.rsplit_once(") ").map(|(_, r)| !r.starts_with('Z')))
            .unwrap_or(false)
    }

    async fn until(what: &str, mut f: impl FnMut() -> bool) {
        for _ in 0..500 {
            if f() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("{what}: not within 5 s");
    }

    #[tokio::test]
    async fn what_a_killed_child_started_dies_with_it() -> Result<(), Box<dyn std::error::Error>> {
        let dir = std::env::temp_dir().join(format!("bridge-group-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let pid_file = dir.join("grandchild");
        // A shell that starts a long sleep in the background (as a wrapper script would start
        // the app), writes its pid, and waits for input.
        let script = format!("sleep 300 & echo $! > {}; cat", pid_file.display());
        for end in ["kill", "drop"] {
            let _ = std::fs::remove_file(&pid_file);
            let child = Child::spawn(&["sh".into(), "-c".into(), script.clone()], "shard-1")?;
            until("the grandchild's pid", || pid_file.exists()).await;
            until("the pid written", || {
                std::fs::read_to_string(&pid_file).is_ok_and(|s| s.trim().parse::<i32>().is_ok())
            })
            .await;
            let grandchild: i32 = std::fs::read_to_string(&pid_file)?.trim().parse()?;
            assert!(alive(grandchild), "{end}: the grandchild runs");
            match end {
                "kill" => child.kill().await,
                _ => drop(child),
            }
            until(&format!("{end}: the grandchild gone"), || {
                !alive(grandchild)
            })
            .await;
        }
        std::fs::remove_dir_all(&dir)?;
        Ok(())
    }
}
