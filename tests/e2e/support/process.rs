//! Child processes with deadlines, and long-running ones supervised by `reaper`.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// How often a deadline wait looks at its condition again.
pub const POLL: Duration = Duration::from_millis(20);

/// Polls `check` until it yields a value or the deadline passes.
pub fn wait_for<T>(what: &str, within: Duration, mut check: impl FnMut() -> Result<Option<T>>) -> Result<T> {
    let deadline = Instant::now() + within;
    let mut last_error = None;
    loop {
        match check() {
            Ok(Some(value)) => return Ok(value),
            Ok(None) => {}
            Err(e) => last_error = Some(e),
        }
        if Instant::now() >= deadline {
            match last_error {
                Some(e) => bail!("timed out after {within:?} waiting for {what}; last error: {e:#}"),
                None => bail!("timed out after {within:?} waiting for {what}"),
            }
        }
        thread::sleep(POLL);
    }
}

/// Runs a command to completion, feeding it `stdin`, killing it at the deadline.
pub fn run_with_deadline(mut cmd: Command, stdin: Option<Vec<u8>>, within: Duration) -> Result<Output> {
    let description = format!("{cmd:?}");
    cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().with_context(|| format!("starting {description}"))?;
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("stdin is piped");
        thread::spawn(move || {
            let _ = pipe.write_all(&input);
        });
    }
    let stdout = collect(child.stdout.take().expect("stdout is piped"));
    let stderr = collect(child.stderr.take().expect("stderr is piped"));
    let deadline = Instant::now() + within;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            let err = String::from_utf8_lossy(&stderr.join().unwrap_or_default()).into_owned();
            bail!("{description} did not finish within {within:?}; stderr: {err}");
        }
        thread::sleep(Duration::from_millis(5));
    };
    Ok(Output {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    })
}

fn collect(mut pipe: impl Read + Send + 'static) -> thread::JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = pipe.read_to_end(&mut buf);
        buf
    })
}

/// A long-running process started through `reaper`: when this value is
/// dropped — or this test process dies in any way — its lifeline pipe closes
/// and reaper ends the process group.
pub struct Supervised {
    name: String,
    child: Child,
    lifeline: Option<ChildStdin>,
    log: PathBuf,
}

impl Supervised {
    /// Starts `program args` under `reaper`, its stderr (and stdout unless
    /// `pipe_stdout`) appended to `log`.
    pub fn spawn(
        reaper: &Path,
        name: &str,
        program: &Path,
        args: &[String],
        log: &Path,
        pipe_stdout: bool,
    ) -> Result<Self> {
        Self::spawn_full(reaper, name, program, args, log, pipe_stdout, &[])
    }

    /// Like [`Supervised::spawn`] (output to the log), with extra environment variables.
    pub fn spawn_with_env(
        reaper: &Path,
        name: &str,
        program: &Path,
        args: &[String],
        log: &Path,
        env: &[(String, String)],
    ) -> Result<Self> {
        Self::spawn_full(reaper, name, program, args, log, false, env)
    }

    fn spawn_full(
        reaper: &Path,
        name: &str,
        program: &Path,
        args: &[String],
        log: &Path,
        pipe_stdout: bool,
        env: &[(String, String)],
    ) -> Result<Self> {
        let log_file = File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let mut cmd = Command::new(reaper);
        cmd.envs(env.iter().map(|(k, v)| (k, v)));
        cmd.arg("--")
            .arg(program)
            .args(args)
            .stdin(Stdio::piped())
            .stderr(log_file.try_clone()?);
        if pipe_stdout {
            cmd.stdout(Stdio::piped());
        } else {
            cmd.stdout(log_file);
        }
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {name} ({})", program.display()))?;
        let lifeline = child.stdin.take();
        Ok(Self {
            name: name.to_owned(),
            child,
            lifeline,
            log: log.to_owned(),
        })
    }

    /// The process's stdout, if it was piped and not taken yet.
    pub fn take_stdout(&mut self) -> Option<std::process::ChildStdout> {
        self.child.stdout.take()
    }

    /// The exit status if the process has ended.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Fails with the log's tail if the process has ended.
    pub fn ensure_running(&mut self) -> Result<()> {
        match self.exited() {
            None => Ok(()),
            Some(status) => bail!("{} exited ({status}); its log ends:\n{}", self.name, self.log_tail(40)),
        }
    }

    /// The pid of the supervised program itself (reaper's child), once it runs.
    pub fn program_pid(&self) -> Result<u32> {
        let reaper = self.child.id();
        wait_for(
            &format!("{} to start under reaper", self.name),
            Duration::from_secs(10),
            || {
                for entry in std::fs::read_dir("/proc")?.flatten() {
                    let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                        continue;
                    };
                    let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
                    // Fields after the parenthesised command: state, then the parent's pid.
                    let parent = stat
                        .rsplit_once(')')
                        .and_then(|(_, rest)| rest.split_whitespace().nth(1));
                    if parent == Some(reaper.to_string().as_str()) {
                        return Ok(Some(pid));
                    }
                }
                Ok(None)
            },
        )
    }

    /// The last `lines` lines of the process's log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for Supervised {
    fn drop(&mut self) {
        // Closing the lifeline asks reaper to stop the group (SIGTERM, then SIGKILL).
        drop(self.lifeline.take());
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            thread::sleep(POLL);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A process run for the length of a test (kubectl watch, logs -f,
/// port-forward) whose stdout is read line by line. Killed on drop.
pub struct Background {
    description: String,
    child: Child,
    lines: Receiver<String>,
    stderr: Arc<Mutex<String>>,
}

impl Background {
    /// Starts the command with stdout read line by line and stderr kept.
    pub fn spawn(mut cmd: Command) -> Result<Self> {
        let description = format!("{cmd:?}");
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().with_context(|| format!("starting {description}"))?;
        let (tx, lines) = sync_channel(4096);
        forward_lines(child.stdout.take().expect("stdout is piped"), tx);
        let stderr = Arc::new(Mutex::new(String::new()));
        let sink = stderr.clone();
        let mut err_pipe = child.stderr.take().expect("stderr is piped");
        thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = err_pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Ok(Self {
            description,
            child,
            lines,
            stderr,
        })
    }

    /// Waits for a stdout line that satisfies `matches`, skipping others.
    pub fn wait_for_line(&mut self, what: &str, within: Duration, matches: impl Fn(&str) -> bool) -> Result<String> {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if matches(&line) => return Ok(line),
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) => {
                    bail!(
                        "no line with {what} from {} within {within:?}; stderr: {}",
                        self.description,
                        self.stderr()
                    )
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let status = self.child.wait()?;
                    bail!(
                        "{} ended ({status}) before printing {what}; stderr: {}",
                        self.description,
                        self.stderr()
                    )
                }
            }
        }
    }

    /// Sends SIGINT, as Ctrl-C would, and waits for the process to exit.
    pub fn interrupt(&mut self) -> Result<ExitStatus> {
        let status = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status()?;
        anyhow::ensure!(status.success(), "kill -INT failed");
        self.wait_exit(Duration::from_secs(10))
    }

    /// Waits for the process to exit by itself.
    pub fn wait_exit(&mut self, within: Duration) -> Result<ExitStatus> {
        wait_for(&format!("{} to exit", self.description), within, || {
            Ok(self.child.try_wait()?)
        })
    }

    /// What the process wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn forward_lines(pipe: impl Read + Send + 'static, tx: SyncSender<String>) {
    thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
}
