//! A real HTTP CONNECT proxy from Debian (tinyproxy) on a free loopback port, asking for basic
//! authentication, for agents that may reach the relay only through it.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use super::binaries::binaries;
use super::net::free_port;
use super::process::{Supervised, wait_for};

/// The proxy's user and password.
pub const PROXY_USER: &str = "hawser";
const PROXY_PASSWORD: &str = "e2e-proxy-secret";

/// A running tinyproxy; dropping it stops it.
pub struct HttpsProxy {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// A file holding `user:password` for it.
    pub auth_file: PathBuf,
    log: PathBuf,
    _process: Supervised,
}

impl HttpsProxy {
    /// Starts tinyproxy with its config, log and credentials in `dir`.
    pub fn start(dir: &Path) -> Result<Self> {
        let program = Path::new("/usr/bin/tinyproxy");
        if !program.exists() {
            bail!("tinyproxy is missing: apt-get install tinyproxy (.ci/run installs it)");
        }
        let port = free_port()?;
        let log = dir.join("tinyproxy.log");
        let config = dir.join("tinyproxy.conf");
        fs::write(
            &config,
            format!(
                "Port {port}\nListen 127.0.0.1\nTimeout 600\nAllow 127.0.0.1\nMaxClients 200\n\
                 LogLevel Info\nLogFile \"{log}\"\nBasicAuth {PROXY_USER} {PROXY_PASSWORD}\n",
                log = log.display()
            ),
        )?;
        let auth_file = dir.join("proxy-auth");
        fs::write(&auth_file, format!("{PROXY_USER}:{PROXY_PASSWORD}\n"))?;
        let mut process = Supervised::spawn(
            &binaries()?.reaper,
            "tinyproxy",
            program,
            &["-d".into(), "-c".into(), config.display().to_string()],
            &dir.join("tinyproxy.out"),
            false,
        )?;
        wait_for("tinyproxy to listen", Duration::from_secs(20), || {
            process.ensure_running()?;
            Ok(std::net::TcpStream::connect(("127.0.0.1", port)).is_ok().then_some(()))
        })?;
        Ok(Self {
            url: format!("http://127.0.0.1:{port}"),
            auth_file,
            log,
            _process: process,
        })
    }

    /// How many CONNECT tunnels to `port` the proxy opened.
    pub fn tunnels_to(&self, port: u16) -> Result<usize> {
        let log = fs::read_to_string(&self.log).with_context(|| format!("reading {}", self.log.display()))?;
        let target = format!("127.0.0.1:{port}");
        Ok(log
            .lines()
            .filter(|l| l.contains("CONNECT") && l.contains(&target))
            .count())
    }
}
