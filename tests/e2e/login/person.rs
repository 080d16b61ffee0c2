//! A person at their machine for the login tests: a config directory of their own, and the
//! `hawser` commands they run with it (login, token, kubeconfig, proxy).

use std::fs;
use std::path::PathBuf;
use std::process::{Command, Output};

use anyhow::{Context, Result, ensure};

use super::{BROWSER_PROMPT, DEVICE_PROMPT, WITHIN, path_str};
use crate::support::hawser::{CLUSTER, Hawser, hawser_bin};
use crate::support::idp::{CLIENT_ID, Idp};
use crate::support::process::{Background, run_with_deadline, wait_for};
use crate::support::{Kubectl, binaries::binaries};

/// A person's machine: the directory `hawser login` keeps its tokens in.
pub(super) struct Person {
    pub(super) config_dir: tempfile::TempDir,
}

impl Person {
    pub(super) fn new() -> Result<Self> {
        Ok(Self {
            config_dir: tempfile::Builder::new().prefix("hawser-person-").tempdir()?,
        })
    }

    pub(super) fn hawser(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(hawser_bin());
        cmd.env("HAWSER_CONFIG_DIR", self.config_dir.path()).args(args);
        cmd
    }

    pub(super) fn login_args(idp: &Idp) -> Vec<&str> {
        vec![
            "--issuer",
            &idp.issuer,
            "--client-id",
            CLIENT_ID,
            "--ca-file",
            path_str(&idp.ca),
        ]
    }

    /// `hawser login` as `user`, in the browser or with a device code; its stderr.
    pub(super) fn login(&self, idp: &Idp, device: bool, user: &str, password: &str) -> Result<String> {
        self.login_at(idp, None, device, user, password)
    }

    /// `hawser login`, told the provider by its issuer, or by `relay` (`--relay`: the relay's
    /// `[login]`).
    pub(super) fn login_at(
        &self,
        idp: &Idp,
        relay: Option<&Hawser>,
        device: bool,
        user: &str,
        password: &str,
    ) -> Result<String> {
        let mut args = vec!["login"];
        match relay {
            None => args.extend(Self::login_args(idp)),
            Some(relay) => args.extend([
                "--relay",
                &relay.relay_url,
                "--relay-ca-file",
                path_str(&relay.relay_ca),
                "--ca-file",
                path_str(&idp.ca),
            ]),
        }
        args.push("--no-browser");
        if device {
            args.push("--device");
        }
        let mut login = Background::spawn(self.hawser(&args))?;
        let prompt = if device { DEVICE_PROMPT } else { BROWSER_PROMPT };
        let line = wait_for("hawser login's prompt", WITHIN, || {
            Ok(login
                .stderr()
                .lines()
                .find(|l| l.starts_with(prompt))
                .map(str::to_owned))
        })?;
        let rest = &line[prompt.len()..];
        if device {
            let (uri, code) = rest
                .split_once(" and enter the code ")
                .with_context(|| format!("the device prompt: {line}"))?;
            ensure!(
                uri.starts_with(&idp.issuer),
                "the verification URI is the provider's: {uri}"
            );
            idp.approve_device(code.trim(), user, password)?;
        } else {
            let (status, page) = idp.log_in_browser(rest.trim(), user, password)?;
            ensure!(status == 200, "the loopback callback answered {status}: {page}");
        }
        let status = login.wait_exit(WITHIN)?;
        let stderr = login.stderr();
        ensure!(status.success(), "hawser login failed ({status}): {stderr}");
        ensure!(
            stderr.contains(&format!("Logged in to {} as {user} until ", idp.issuer)),
            "hawser login did not say who: {stderr}"
        );
        Ok(stderr)
    }

    /// `hawser token` in login mode, as kubectl runs it.
    pub(super) fn token(&self, idp: &Idp) -> Result<Output> {
        let mut args = vec!["token"];
        args.extend(Self::login_args(idp));
        run_with_deadline(self.hawser(&args), None, WITHIN)
    }

    /// kubectl with a `hawser kubeconfig` whose exec plugin uses the login.
    pub(super) fn kubectl(&self, hawser: &Hawser, idp: &Idp) -> Result<Kubectl> {
        self.kubectl_at(hawser, idp, false)
    }

    /// Like [`Person::kubectl`]; with `discover`, the kubeconfig takes the provider from the
    /// relay's `[login]` (`--login`) instead of `--issuer` and `--client-id`.
    pub(super) fn kubectl_at(&self, hawser: &Hawser, idp: &Idp, discover: bool) -> Result<Kubectl> {
        let mut args = vec!["kubeconfig", "--relay", &hawser.relay_url, "--cluster", CLUSTER];
        args.extend(["--ca-file", path_str(&hawser.relay_ca)]);
        if discover {
            args.push("--login");
        } else {
            args.extend(["--issuer", &idp.issuer, "--client-id", CLIENT_ID]);
        }
        args.extend(["--oidc-ca-file", path_str(&idp.ca)]);
        let out = run_with_deadline(self.hawser(&args), None, WITHIN)?;
        ensure!(
            out.status.success(),
            "hawser kubeconfig: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let path = self.config_dir.path().join("kubeconfig");
        fs::write(&path, &out.stdout)?;
        Ok(Kubectl::new(&binaries()?.kubectl, &path).with_env("HAWSER_CONFIG_DIR", path_str(self.config_dir.path())))
    }

    /// `hawser proxy --issuer` with the login, on a kubeconfig of its own; runs until dropped.
    pub(super) fn proxy(&self, hawser: &Hawser, idp: &Idp) -> Result<(Background, Kubectl)> {
        let kubeconfig = self.config_dir.path().join("proxy.kubeconfig");
        let mut args = vec!["proxy", "--relay", &hawser.relay_url, "--cluster", CLUSTER];
        args.extend(["--ca-file", path_str(&hawser.relay_ca)]);
        args.extend(["--kubeconfig", path_str(&kubeconfig)]);
        args.extend(["--issuer", &idp.issuer, "--client-id", CLIENT_ID]);
        args.extend(["--oidc-ca-file", path_str(&idp.ca)]);
        let mut proxy = Background::spawn(self.hawser(&args))?;
        proxy.wait_for_line("the proxy's listening line", WITHIN, |l| {
            l.starts_with("hawser proxy listening on 127.0.0.1:")
        })?;
        Ok((proxy, Kubectl::new(&binaries()?.kubectl, &kubeconfig)))
    }

    pub(super) fn login_files(&self) -> Result<Vec<PathBuf>> {
        let dir = self.config_dir.path().join("logins");
        let mut files = Vec::new();
        if dir.exists() {
            for entry in fs::read_dir(&dir)? {
                let path = entry?.path();
                if path.extension().is_some_and(|e| e == "json") {
                    files.push(path);
                }
            }
        }
        Ok(files)
    }
}
