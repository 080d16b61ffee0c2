//! Running one of the test bed's kubectl binaries with a given kubeconfig.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use anyhow::{Context, Result, bail};

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

    /// The same kubeconfig (and environment) with another kubectl binary.
    pub fn with_bin(&self, bin: &Path) -> Self {
        Self {
            bin: bin.to_owned(),
            ..self.clone()
        }
    }

    /// The same kubectl with an extra environment variable.
    pub fn with_env(&self, key: &str, value: &str) -> Self {
        let mut next = self.clone();
        next.env.push((key.to_owned(), value.to_owned()));
        next
    }

    /// The kubeconfig this kubectl uses.
    #[allow(dead_code)] // used by the demo target
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
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

    /// Runs kubectl and requires success; returns stdout and stderr (its log, with `-v=N`).
    pub fn ok_with_log(&self, args: &[&str]) -> Result<(String, String)> {
        let out = self.run(args)?;
        let log = String::from_utf8_lossy(&out.stderr).into_owned();
        Ok((check(args, out)?, log))
    }

    /// Runs kubectl with `stdin` and requires success; returns stdout.
    pub fn ok_with_stdin(&self, args: &[&str], stdin: &[u8]) -> Result<String> {
        check(args, self.run_with_stdin(args, stdin)?)
    }

    /// Runs a `create` and accepts that the object exists already.
    pub fn create_or_exists(&self, args: &[&str]) -> Result<()> {
        let out = self.run(args)?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        if out.status.success() || stderr.contains("AlreadyExists") || stderr.contains("already exists") {
            return Ok(());
        }
        check(args, out).map(drop)
    }

    /// Starts `kubectl port-forward` from a free local port to `target`'s
    /// `port` and returns it with the local port, once kubectl listens.
    pub fn port_forward(&self, namespace: &str, target: &str, port: u16, extra: &[&str]) -> Result<(Background, u16)> {
        let remote = format!(":{port}");
        let mut args = vec!["port-forward", "-n", namespace, target, &remote];
        args.extend_from_slice(extra);
        let mut forward = self.spawn(&args)?;
        const PREFIX: &str = "Forwarding from 127.0.0.1:";
        let line = forward.wait_for_line("the local port", COMMAND_DEADLINE, |l| l.starts_with(PREFIX))?;
        let local = line[PREFIX.len()..]
            .split_whitespace()
            .next()
            .and_then(|p| p.parse().ok())
            .with_context(|| format!("no port in {line:?}"))?;
        Ok((forward, local))
    }

    /// Watches ConfigMap `name`, printing its `data.v` once, then on every change.
    ///
    /// A list watch with a field selector, not `get NAME -w`: for a named
    /// object kubectl watches from resourceVersion 0 and drops the first event
    /// as already printed, so a change made before its watch is established is
    /// lost. A list watch continues from the list's resourceVersion.
    pub fn watch_values(&self, namespace: &str, name: &str) -> Result<Background> {
        let selector = format!("--field-selector=metadata.name={name}");
        self.spawn(&[
            "get",
            "configmaps",
            "-n",
            namespace,
            &selector,
            "--watch",
            "--no-headers",
            "-o",
            "custom-columns=V:.data.v",
        ])
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
