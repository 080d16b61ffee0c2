//! A real load balancer in front of relays: Debian's nginx with its stream module, listening on
//! one free loopback port for TCP (callers, TCP agents) and UDP (QUIC agents), as a cloud
//! balancer offers one address for both. Runs under reaper, unprivileged, everything it writes
//! in a temp dir of its own (kept with `HAWSER_E2E_KEEP=1`).

use std::fmt::Write as _;
use std::fs;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use tempfile::TempDir;

use super::binaries::binaries;
use super::net::{free_tcp_and_udp_port, retry_if_port_taken};
use super::process::{Supervised, wait_for};

const NGINX: &str = "/usr/sbin/nginx";
const STREAM_MODULE: &str = "/usr/lib/nginx/modules/ngx_stream_module.so";
/// On Debian 12 the `nginx` package holds the binary (`nginx-light` and the other flavours only
/// add modules to it) and the stream module is a package of its own.
const INSTALL: &str = "install with `apt-get install nginx libnginx-mod-stream` (.ci/run installs them)";

/// Which of the balancer's listeners a flow came through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// The TCP listener: callers and TCP agents.
    Tcp,
    /// The UDP listener: QUIC agents.
    Udp,
}

/// A running nginx balancing TCP and UDP over its backends; dropping it stops it.
pub struct Balancer {
    process: Option<Supervised>,
    dir: TempDir,
    port: u16,
}

impl Balancer {
    /// Starts nginx on a free loopback port with a TCP listener for `backends_tcp` and a UDP
    /// listener for `backends_udp` (a listener whose list is empty is left out), and waits until
    /// it listens.
    pub fn start(backends_tcp: &[SocketAddr], backends_udp: &[SocketAddr]) -> Result<Self> {
        for path in [NGINX, STREAM_MODULE] {
            ensure!(Path::new(path).exists(), "{path} is missing: {INSTALL}");
        }
        ensure!(
            !backends_tcp.is_empty() || !backends_udp.is_empty(),
            "a balancer needs a backend"
        );
        retry_if_port_taken("nginx", || Self::start_once(backends_tcp, backends_udp))
    }

    fn start_once(backends_tcp: &[SocketAddr], backends_udp: &[SocketAddr]) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("hawser-nginx-")
            .disable_cleanup(std::env::var_os("HAWSER_E2E_KEEP").is_some())
            .tempdir()?;
        let port = free_tcp_and_udp_port()?;
        let config = dir.path().join("nginx.conf");
        fs::write(&config, config_text(dir.path(), port, backends_tcp, backends_udp))?;
        let error_log = dir.path().join("error.log");
        let args = [
            "-p".to_owned(),
            dir.path().display().to_string(),
            "-c".to_owned(),
            config.display().to_string(),
            // Before it reads its config nginx logs to its built-in path, which needs root.
            "-e".to_owned(),
            error_log.display().to_string(),
        ];
        let bins = binaries()?;
        let mut process = Supervised::spawn(
            &bins.reaper,
            "nginx",
            Path::new(NGINX),
            &args,
            &dir.path().join("nginx.out"),
            false,
        )?;
        // nginx writes its pid file only once every listener is bound. No probe connection: it
        // would reach a backend and count in the backends' logs.
        let pid_file = dir.path().join("nginx.pid");
        let started = wait_for("nginx to listen", Duration::from_secs(20), || {
            process.ensure_running()?;
            Ok(pid_file.exists().then_some(()))
        });
        if let Err(e) = started {
            let log = fs::read_to_string(&error_log).unwrap_or_default();
            bail!("{e:#}\nnginx's error log ({}):\n{log}", error_log.display());
        }
        Ok(Self {
            process: Some(process),
            dir,
            port,
        })
    }

    /// Where TCP clients connect: callers, and agents on the TCP transport.
    pub fn tcp_addr(&self) -> SocketAddr {
        ([127, 0, 0, 1], self.port).into()
    }

    /// Where QUIC agents send: the same port, over UDP.
    pub fn udp_addr(&self) -> SocketAddr {
        ([127, 0, 0, 1], self.port).into()
    }

    /// How many flows nginx has opened to `backend` through its `protocol` listener (from its
    /// log: it logs each when it connects upstream).
    pub fn flows_to(&self, backend: SocketAddr, protocol: Protocol) -> Result<usize> {
        let path = self.dir.path().join("error.log");
        let log = fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        let end = format!(" connected to {backend}");
        Ok(log
            .lines()
            .filter(|l| l.ends_with(&end))
            .filter(|l| match protocol {
                Protocol::Udp => l.contains(" udp proxy "),
                Protocol::Tcp => l.contains(" proxy ") && !l.contains(" udp proxy "),
            })
            .count())
    }

    /// The directory holding nginx's config and logs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Stops nginx (its reaper ends it).
    pub fn stop(&mut self) {
        drop(self.process.take());
    }
}

/// The whole nginx.conf: the stream module only, no `http` block.
fn config_text(dir: &Path, port: u16, backends_tcp: &[SocketAddr], backends_udp: &[SocketAddr]) -> String {
    let servers = |backends: &[SocketAddr]| {
        backends.iter().fold(String::new(), |mut text, b| {
            // max_fails=0: a relay that refuses a connection (it is restarting) is skipped for
            // that connection alone, not shut out for fail_timeout after it is back.
            let _ = write!(text, "\n        server {b} max_fails=0;");
            text
        })
    };
    let mut stream = String::new();
    if !backends_tcp.is_empty() {
        // Round robin: each new connection goes to the next relay. proxy_timeout is an idle cut
        // on TCP, so a quiet watch or exec would die at it: an hour.
        let _ = write!(
            stream,
            "
    upstream relays_tcp {{{servers}
    }}
    server {{
        listen 127.0.0.1:{port};
        proxy_pass relays_tcp;
        proxy_connect_timeout 2s;
        proxy_timeout 1h;
    }}",
            servers = servers(backends_tcp)
        );
    }
    if !backends_udp.is_empty() {
        // proxy_responses stays unset: any number of datagrams each way (0 or 1 makes every
        // datagram a one-shot flow and QUIC handshakes never complete). A flow outlives the
        // tunnel's idle timeout, or requests after a quiet gap would wait for a keep-alive.
        // Hashing the client's address and port sends a new source port (a new agent) to any
        // relay and keeps a flow on its relay across a reload, which round robin does not;
        // reuseport keeps all of one client's datagrams in one worker, so one relay-facing flow.
        let _ = write!(
            stream,
            "
    upstream relays_udp {{
        hash $remote_addr$remote_port consistent;{servers}
    }}
    server {{
        listen 127.0.0.1:{port} udp reuseport;
        proxy_pass relays_udp;
        proxy_timeout 10m;
    }}",
            servers = servers(backends_udp)
        );
    }
    format!(
        "load_module {STREAM_MODULE};
daemon off;
master_process on;
worker_processes 2;
pid {dir}/nginx.pid;
# info: nginx logs each flow it opens, on the client's side and on the backend's.
error_log {dir}/error.log info;
events {{
    worker_connections 1024;
}}
stream {{{stream}
}}
",
        dir = dir.display()
    )
}
