//! etcd on free loopback ports: the one under the test bed's kube-apiserver, and standalone ones
//! (a registry for relays) that tests stop and restart on the same ports and data.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use tempfile::TempDir;

use super::binaries::binaries;
use super::net::{free_port, http, retry_if_port_taken};
use super::process::{Supervised, wait_for};

/// How long etcd may take to answer healthy.
const START_DEADLINE: Duration = Duration::from_secs(60);

/// Starts etcd member `name` under reaper, serving clients on `client_port` and its peer on
/// `peer_port`, its data in `data_dir`, its output in `log`. It does not wait for it.
pub fn spawn(name: &str, data_dir: &Path, client_port: u16, peer_port: u16, log: &Path) -> Result<Supervised> {
    let bins = binaries()?;
    let client_url = format!("http://127.0.0.1:{client_port}");
    let peer_url = format!("http://127.0.0.1:{peer_port}");
    let args = [
        format!("--name={name}"),
        format!("--data-dir={}", data_dir.display()),
        format!("--listen-client-urls={client_url}"),
        format!("--advertise-client-urls={client_url}"),
        format!("--listen-peer-urls={peer_url}"),
        format!("--initial-advertise-peer-urls={peer_url}"),
        format!("--initial-cluster={name}={peer_url}"),
        // Tests never survive a power cut; fsync would only slow them.
        "--unsafe-no-fsync".to_owned(),
        "--log-level=warn".to_owned(),
    ];
    Supervised::spawn(&bins.reaper, "etcd", &bins.etcd, &args, log, false)
}

/// A standalone single-member etcd in a temp dir of its own. Dropping it stops it and removes
/// its data (kept with `HAWSER_E2E_KEEP=1`).
pub struct Etcd {
    process: Mutex<Option<Supervised>>,
    dir: TempDir,
    client_port: u16,
    peer_port: u16,
    /// Numbers the logs of successive starts, so a restart keeps the earlier log.
    starts: AtomicU32,
}

impl Etcd {
    /// Starts etcd on free loopback ports and waits until it reports itself healthy.
    pub fn start() -> Result<Self> {
        retry_if_port_taken("etcd", || {
            let etcd = Self {
                process: Mutex::new(None),
                dir: tempfile::Builder::new()
                    .prefix("hawser-etcd-")
                    .disable_cleanup(std::env::var_os("HAWSER_E2E_KEEP").is_some())
                    .tempdir()?,
                client_port: free_port()?,
                peer_port: free_port()?,
                starts: AtomicU32::new(0),
            };
            etcd.restart()?;
            Ok(etcd)
        })
    }

    /// The client URL, `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    /// The client port.
    pub fn client_port(&self) -> u16 {
        self.client_port
    }

    /// Stops etcd (its reaper ends it); the data dir stays for [`Etcd::restart`].
    pub fn stop(&self) {
        drop(self.process.lock().unwrap().take());
    }

    /// Starts etcd again (stopping it first if it runs) on the same ports and data dir, and waits
    /// until it reports itself healthy.
    pub fn restart(&self) -> Result<()> {
        self.stop();
        let n = self.starts.fetch_add(1, Ordering::Relaxed);
        let log = self.log(n);
        let mut process = spawn(
            "registry",
            &self.dir.path().join("data"),
            self.client_port,
            self.peer_port,
            &log,
        )?;
        let healthy = wait_for("etcd to report itself healthy", START_DEADLINE, || {
            process.ensure_running()?;
            Ok(self.healthy().then_some(()))
        });
        healthy.with_context(|| format!("etcd did not start; its log is {}", log.display()))?;
        *self.process.lock().unwrap() = Some(process);
        Ok(())
    }

    /// Whether `GET /health` answers `"health":"true"` now.
    pub fn healthy(&self) -> bool {
        matches!(http(self.client_port, "GET", "/health", ""), Ok((200, body)) if body.contains(r#""health":"true""#))
    }

    /// The keys under `prefix`, sorted, from etcd's JSON gateway (`POST /v3/kv/range`).
    pub fn keys(&self, prefix: &str) -> Result<Vec<String>> {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD;
        let mut end = prefix.as_bytes().to_vec();
        *end.last_mut().context("empty prefix")? += 1;
        let body = serde_json::json!({"key": b64.encode(prefix), "range_end": b64.encode(&end), "keys_only": true});
        let (status, answer) = http(self.client_port, "POST", "/v3/kv/range", &body.to_string())?;
        anyhow::ensure!(status == 200, "etcd answered {status}: {answer}");
        let value: serde_json::Value = serde_json::from_str(&answer).with_context(|| format!("etcd said {answer}"))?;
        let mut keys = Vec::new();
        for kv in value["kvs"].as_array().into_iter().flatten() {
            let key = b64.decode(kv["key"].as_str().unwrap_or_default())?;
            keys.push(String::from_utf8(key)?);
        }
        keys.sort();
        Ok(keys)
    }

    fn log(&self, start: u32) -> PathBuf {
        match start {
            0 => self.dir.path().join("etcd.log"),
            n => self.dir.path().join(format!("etcd.{}.log", n + 1)),
        }
    }
}
