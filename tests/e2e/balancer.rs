//! The standalone etcd that relays will share as their registry (a load balancer in front of
//! relays comes next).

use anyhow::{Context, Result, ensure};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::{Value, json};

use crate::support::etcd::Etcd;
use crate::support::net::http;

/// A test of the support alone, without the test bed.
pub type Standalone = fn() -> Result<()>;

/// Every test of the support alone, by name.
pub const STANDALONE: &[(&str, Standalone)] = &[(
    "etcd_stops_and_restarts_keeping_its_data",
    etcd_stops_and_restarts_keeping_its_data,
)];

fn etcd_stops_and_restarts_keeping_its_data() -> Result<()> {
    let etcd = Etcd::start()?;
    let port = etcd.client_port();
    ensure!(
        etcd.endpoint() == format!("http://127.0.0.1:{port}"),
        "endpoint {}",
        etcd.endpoint()
    );
    ensure!(etcd.healthy(), "etcd started but does not report itself healthy");
    // etcd's JSON gateway takes keys and values in base64.
    let (key, value) = (BASE64.encode("hawser/e2e"), BASE64.encode("kept across a restart"));
    let (status, body) = http(
        port,
        "POST",
        "/v3/kv/put",
        &json!({"key": key, "value": value}).to_string(),
    )?;
    ensure!(status == 200, "put: {status} {body}");

    etcd.stop();
    ensure!(!etcd.healthy(), "etcd still answers after stop");
    ensure!(
        http(port, "GET", "/health", "").is_err(),
        "something still listens on etcd's port after stop"
    );

    etcd.restart()?;
    ensure!(etcd.healthy(), "etcd restarted but does not report itself healthy");
    let (status, body) = http(port, "POST", "/v3/kv/range", &json!({"key": key}).to_string())?;
    ensure!(status == 200, "range: {status} {body}");
    let found: Value = serde_json::from_str(&body).with_context(|| format!("range answered {body}"))?;
    ensure!(
        found["kvs"][0]["value"] == value.as_str(),
        "the key written before the restart is gone or changed: {found}"
    );
    Ok(())
}
