//! etcd on loopback ports: the one under the test bed's kube-apiserver.

use std::path::Path;

use anyhow::Result;

use super::binaries::binaries;
use super::process::Supervised;

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
