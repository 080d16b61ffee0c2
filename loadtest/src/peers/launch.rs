//! Starting a peer tunnel (server and client processes on 127.0.0.1) in
//! front of the backend, and waiting until HTTPS answers through it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UnixStream};
use tokio::process::{Child, Command};

use super::Peer;
use crate::client::Target;

/// A peer's processes (killed when dropped) and the local port the callers use.
pub struct Running {
    /// Server side ("relay" role).
    pub server: Child,
    /// Client side ("agent" role, next to the backend).
    pub client: Child,
    /// Their process ids: server, client.
    pub pids: (u32, u32),
    /// Where callers connect (the peer's exposed port, or the CONNECT adapter's).
    pub addr: SocketAddr,
    /// The HTTP CONNECT adapter for konnectivity.
    adapter: Option<tokio::task::JoinHandle<()>>,
    /// The peer's log files.
    pub logs: (PathBuf, PathBuf),
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(a) = &self.adapter {
            a.abort();
        }
        // kill_on_drop does the same; this is immediate and explicit.
        let _ = self.server.start_kill();
        let _ = self.client.start_kill();
    }
}

/// A port the kernel had free a moment ago (bound to port 0, then released).
fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn spawn(bin: &Path, args: &[String], log: &Path) -> Result<Child> {
    let out = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let err = out.try_clone()?;
    Command::new(bin)
        .args(args)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))
}

fn s(v: impl ToString) -> String {
    v.to_string()
}

/// Writes the configs and starts `peer`'s server and client, tunnelling to `backend`.
pub async fn start(peer: Peer, bin: &Path, dir: &Path, backend: SocketAddr) -> Result<Running> {
    let dir = dir.join(peer.name());
    std::fs::create_dir_all(&dir)?;
    let logs = (dir.join("server.log"), dir.join("client.log"));
    let (control, exposed) = (free_port()?, free_port()?);
    let local: SocketAddr = ([127, 0, 0, 1], exposed).into();
    let (server, client, addr, adapter) = match peer {
        Peer::Rathole => {
            let (sc, cc) = (dir.join("server.toml"), dir.join("client.toml"));
            std::fs::write(
                &sc,
                format!(
                    "[server]\nbind_addr = \"127.0.0.1:{control}\"\n\n[server.services.backend]\n\
                     token = \"hawser-loadtest\"\nbind_addr = \"127.0.0.1:{exposed}\"\n"
                ),
            )?;
            std::fs::write(
                &cc,
                format!(
                    "[client]\nremote_addr = \"127.0.0.1:{control}\"\n\n[client.services.backend]\n\
                     token = \"hawser-loadtest\"\nlocal_addr = \"{backend}\"\n"
                ),
            )?;
            let exe = bin.join("rathole");
            let server = spawn(&exe, &[s("--server"), s(sc.display())], &logs.0)?;
            let client = spawn(&exe, &[s("--client"), s(cc.display())], &logs.1)?;
            (server, client, local, None)
        }
        Peer::Frp => {
            let (sc, cc) = (dir.join("frps.toml"), dir.join("frpc.toml"));
            // transport.tcpMux = true is frp's default; written out since it is what is compared.
            std::fs::write(
                &sc,
                format!(
                    "bindAddr = \"127.0.0.1\"\nbindPort = {control}\nproxyBindAddr = \"127.0.0.1\"\n\
                     auth.token = \"hawser-loadtest\"\ntransport.tcpMux = true\nlog.level = \"warn\"\n"
                ),
            )?;
            std::fs::write(
                &cc,
                format!(
                    "serverAddr = \"127.0.0.1\"\nserverPort = {control}\nauth.token = \"hawser-loadtest\"\n\
                     transport.tcpMux = true\nloginFailExit = false\nlog.level = \"warn\"\n\n\
                     [[proxies]]\nname = \"backend\"\ntype = \"tcp\"\nlocalIP = \"{}\"\nlocalPort = {}\n\
                     remotePort = {exposed}\n",
                    backend.ip(),
                    backend.port()
                ),
            )?;
            let server = spawn(&bin.join("frps"), &[s("-c"), s(sc.display())], &logs.0)?;
            let client = spawn(&bin.join("frpc"), &[s("-c"), s(cc.display())], &logs.1)?;
            (server, client, local, None)
        }
        Peer::Chisel => {
            // Reverse mode: the client (next to the backend) asks the server to listen.
            let exe = bin.join("chisel");
            let server = spawn(
                &exe,
                &[
                    s("server"),
                    s("--host"),
                    s("127.0.0.1"),
                    s("--port"),
                    s(control),
                    s("--reverse"),
                ],
                &logs.0,
            )?;
            let client = spawn(
                &exe,
                &[
                    s("client"),
                    s(format!("http://127.0.0.1:{control}")),
                    s(format!("R:127.0.0.1:{exposed}:{backend}")),
                ],
                &logs.1,
            )?;
            (server, client, local, None)
        }
        Peer::Konnectivity => {
            // proxy-server in http-connect mode on a Unix socket (as kube-apiserver uses it),
            // agents over gRPC with TLS; the driver's adapter turns each caller connection into
            // an HTTP CONNECT to the backend.
            let pki = crate::backend::generate_pki()?;
            let (ca, cert, key) = (dir.join("ca.crt"), dir.join("cluster.crt"), dir.join("cluster.key"));
            std::fs::write(&ca, &pki.ca_pem)?;
            std::fs::write(&cert, &pki.cert_pem)?;
            std::fs::write(&key, &pki.key_pem)?;
            let uds = dir.join("konnectivity.sock");
            let (admin, health, agent_admin, agent_health) = (free_port()?, free_port()?, free_port()?, free_port()?);
            let server = spawn(
                &bin.join("proxy-server"),
                &[
                    s("--mode=http-connect"),
                    format!("--uds-name={}", uds.display()),
                    s("--server-port=0"),
                    format!("--cluster-cert={}", cert.display()),
                    format!("--cluster-key={}", key.display()),
                    s("--agent-bind-address=127.0.0.1"),
                    format!("--agent-port={control}"),
                    s("--admin-bind-address=127.0.0.1"),
                    format!("--admin-port={admin}"),
                    s("--health-bind-address=127.0.0.1"),
                    format!("--health-port={health}"),
                ],
                &logs.0,
            )?;
            let client = spawn(
                &bin.join("proxy-agent"),
                &[
                    format!("--ca-cert={}", ca.display()),
                    s("--proxy-server-host=127.0.0.1"),
                    format!("--proxy-server-port={control}"),
                    s("--admin-bind-address=127.0.0.1"),
                    format!("--admin-server-port={agent_admin}"),
                    s("--health-server-host=127.0.0.1"),
                    format!("--health-server-port={agent_health}"),
                ],
                &logs.1,
            )?;
            let listener = TcpListener::bind("127.0.0.1:0").await?;
            let addr = listener.local_addr()?;
            let adapter = tokio::spawn(connect_adapter(listener, uds, backend));
            (server, client, addr, Some(adapter))
        }
    };
    let pids = (server.id().unwrap_or(0), client.id().unwrap_or(0));
    Ok(Running {
        server,
        client,
        pids,
        addr,
        adapter,
        logs,
    })
}

/// Accepts caller connections; for each, opens the proxy-server's Unix socket, asks
/// `CONNECT backend` and then copies bytes both ways.
async fn connect_adapter(listener: TcpListener, uds: PathBuf, backend: SocketAddr) {
    while let Ok((mut caller, _)) = listener.accept().await {
        let uds = uds.clone();
        tokio::spawn(async move {
            let _ = caller.set_nodelay(true);
            let Ok(mut proxy) = UnixStream::connect(&uds).await else {
                return;
            };
            let ask = format!("CONNECT {backend} HTTP/1.1\r\nHost: {backend}\r\n\r\n");
            if proxy.write_all(ask.as_bytes()).await.is_err() {
                return;
            }
            // Read the answer's head byte by byte, so nothing of the tunnel is consumed.
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && head.len() < 8192 {
                match proxy.read(&mut byte).await {
                    Ok(1) => head.push(byte[0]),
                    _ => return,
                }
            }
            if !head.starts_with(b"HTTP/1.1 200") && !head.starts_with(b"HTTP/1.0 200") {
                return;
            }
            let _ = tokio::io::copy_bidirectional(&mut caller, &mut proxy).await;
        });
    }
}

/// Polls until GET /small through `running` answers 200 on fresh connections; returns the target.
pub async fn wait_answering(
    peer: Peer,
    running: &mut Running,
    ca: &Path,
    connections: usize,
    timeout: Duration,
) -> Result<Arc<Target>> {
    let within = Duration::from_secs(30);
    let deadline = Instant::now() + within;
    let bases = vec![format!("https://{}", running.addr)];
    loop {
        for (child, log) in [
            (&mut running.server, &running.logs.0),
            (&mut running.client, &running.logs.1),
        ] {
            if let Some(status) = child.try_wait()? {
                bail!("{} exited ({status}); see {}", peer.name(), log.display());
            }
        }
        let attempt = async {
            let target =
                Target::connect(peer.name(), running.addr, ca, connections, bases.clone(), None, timeout).await?;
            target
                .get_expecting(target.uri(0, "/small")?, crate::backend::SMALL_BODY.len() as u64)
                .await?;
            anyhow::Ok(target)
        };
        let last = match tokio::time::timeout(Duration::from_secs(5), attempt).await {
            Ok(Ok(target)) => return Ok(target),
            Ok(Err(e)) => format!("{e:#}"),
            Err(_) => "no answer within 5 s".to_owned(),
        };
        if Instant::now() >= deadline {
            bail!(
                "{} did not answer GET /small within {within:?} (last: {last}); logs: {} {}",
                peer.name(),
                running.logs.0.display(),
                running.logs.1.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
