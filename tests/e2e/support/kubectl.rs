//! Running the test bed's kubectl with a given kubeconfig.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use anyhow::{Result, bail};

use super::process::{Background, run_with_deadline};

/// How long one ordinary kubectl command may take.
pub const COMMAND_DEADLINE: Duration = Duration::from_secs(60);

/// kubectl bound to one kubeconfig (and so one route and one identity).
#[derive(Debug, Clone)]
pub struct Kubectl {
    bin: PathBuf,
    kubeconfig: PathBuf,
    env: Vec<(String, String)>,
}

impl Kubectl {
    /// kubectl `bin` using `kubeconfig`.
    pub fn new(bin: &Path, kubeconfig: &Path) -> Self {
        Self {
            bin: bin.to_owned(),
            kubeconfig: kubeconfig.to_owned(),
            env: Vec::new(),
        }
    }

    /// The same kubectl with an extra environment variable.
    pub fn with_env(&self, key: &str, value: &str) -> Self {
        let mut next = self.clone();
        next.env.push((key.to_owned(), value.to_owned()));
        next
    }

    /// A `Command` for kubectl with these arguments, not yet started.
    pub fn command<I, S>(&self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        let mut cmd = Command::new(&self.bin);
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", std::env::var_os("HOME").unwrap_or_else(|| "/".into()))
            .env("KUBECONFIG", &self.kubeconfig)
            .args(args.into_iter().map(Into::into));
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd
    }

    /// Runs kubectl to completion; any exit status is returned, not judged.
    pub fn run(&self, args: &[&str]) -> Result<Output> {
        run_with_deadline(self.command(args), None, COMMAND_DEADLINE)
    }

    /// Runs kubectl with `stdin` to completion.
    pub fn run_with_stdin(&self, args: &[&str], stdin: &[u8]) -> Result<Output> {
        run_with_deadline(self.command(args), Some(stdin.to_vec()), COMMAND_DEADLINE)
    }

    /// Runs kubectl and requires success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> Result<String> {
        check(args, self.run(args)?)
    }

    /// Runs kubectl with `stdin` and requires success; returns stdout.
    pub fn ok_with_stdin(&self, args: &[&str], stdin: &[u8]) -> Result<String> {
        check(args, self.run_with_stdin(args, stdin)?)
    }

    /// Starts a long-running kubectl (watch, logs -f, port-forward).
    pub fn spawn(&self, args: &[&str]) -> Result<Background> {
        Background::spawn(self.command(args))
    }
}

fn check(args: &[&str], out: Output) -> Result<String> {
    if !out.status.success() {
        bail!(
            "kubectl {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
