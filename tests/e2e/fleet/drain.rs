//! A relay's drain and an agent's stop as their operators read them: each logs the signal it got
//! and what it does, and every end of a tunnel session is in the relay's audit trail, once. And a
//! caller connection a relay accepted just before its drain is served its first request.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::support::Testbed;
use crate::support::fleet::Fleet;
use crate::support::process::wait_for;

/// A tunnel event of relay-i's audit trail: event, session, reason.
type Event = (String, u64, String);

/// `agent`'s tunnel events in relay `i`'s audit trail.
fn events(fleet: &Fleet, i: usize, agent: &str) -> Result<Vec<Event>> {
    Ok(fleet
        .audit(i)?
        .into_iter()
        .filter(|l| l["agent"] == agent && l.get("event").is_some())
        .map(|l| {
            let text = |key: &str| l[key].as_str().unwrap_or_default().to_owned();
            (text("event"), l["session"].as_u64().unwrap_or_default(), text("reason"))
        })
        .collect())
}

/// The sessions `events` registered, each with the reasons of its `agent_gone` events.
fn ends(events: &[Event]) -> Vec<(u64, Vec<&str>)> {
    events
        .iter()
        .filter(|(event, ..)| event == "agent_registered")
        .map(|(_, session, _)| {
            let gone = events
                .iter()
                .filter(|(event, s, _)| event == "agent_gone" && s == session)
                .map(|(.., reason)| reason.as_str())
                .collect();
            (*session, gone)
        })
        .collect()
}

/// Two relays behind nginx, one agent with one tunnel (QUIC). SIGTERM to the relay holding it:
/// the relay logs that it drains, naming the signal, `grace_secs` and `timeout_secs`; the agent
/// moves to the other relay and retires its tunnel, whose end is on record once (`agent_gone`,
/// reason `retired`); the other relay, which had forwarded a request over the peer link, logs
/// once that the connection was lost. SIGTERM to the agent: it logs it, and the relay it had
/// moved to records that session's end.
pub fn a_drained_relay_and_a_stopped_agent_say_so_and_their_sessions_end_on_record(tb: &Testbed) -> Result<()> {
    let fleet = Fleet::start(tb, 2, &["d1"])?;
    let balancer = fleet.balancer()?;
    let address = balancer.tcp_addr().to_string();
    fleet.start_agent_at("d1", "agent-d1", &address, "connections = 1")?;
    let registered = |i: usize| -> Result<bool> {
        Ok(events(&fleet, i, "agent-d1")?
            .iter()
            .any(|(event, ..)| event == "agent_registered"))
    };
    let held = wait_for("agent-d1 to register", Duration::from_secs(30), || {
        Ok((0..2).find(|&i| registered(i).unwrap_or(false)))
    })?;
    let other = 1 - held;
    let kubectl = fleet.kubectl(other, "d1")?;
    wait_for(
        &format!("d1 to answer through relay-{other} (a hop)"),
        Duration::from_secs(30),
        || Ok(kubectl.run(&["get", "--raw=/version"])?.status.success().then_some(())),
    )?;

    fleet.terminate_relay(held)?;
    let log = fleet.log(&format!("relay-{held}"))?;
    ensure!(
        log.lines().any(|l| l.contains("draining")
            && l.contains("signal=SIGTERM")
            && l.contains("grace_secs=")
            && l.contains("timeout_secs=")),
        "relay-{held} logs its drain and why:\n{log}"
    );
    let drained = events(&fleet, held, "agent-d1")?;
    let drained_ends = ends(&drained);
    ensure!(
        !drained_ends.is_empty() && drained_ends.iter().all(|(_, gone)| gone.len() == 1),
        "each session on relay-{held} ended once on record: {drained:?}"
    );
    ensure!(
        drained_ends.iter().any(|(_, gone)| gone[0].starts_with("retired")),
        "the tunnel the agent moved away from is recorded as retired: {drained:?}"
    );
    ensure!(registered(other)?, "agent-d1 moved to relay-{other}");
    let lost = |log: &str| {
        log.lines()
            .filter(|l| {
                l.contains("the connection to a peer relay was lost") && l.contains(&format!("peer=relay-{held}"))
            })
            .count()
    };
    let other_log = format!("relay-{other}");
    wait_for(
        &format!("relay-{other} to log the lost peer connection"),
        Duration::from_secs(10),
        || Ok((lost(&fleet.log(&other_log)?) > 0).then_some(())),
    )?;
    let log = fleet.log(&other_log)?;
    ensure!(lost(&log) == 1, "logged once:\n{log}");

    fleet.terminate_agent("agent-d1")?;
    let log = fleet.log("agent-d1")?;
    ensure!(
        log.lines()
            .any(|l| l.contains("agent shutting down") && l.contains("signal=SIGTERM")),
        "the agent logs its stop and why:\n{log}"
    );
    let moved_to = wait_for(
        &format!("relay-{other} to record the agent's session gone"),
        Duration::from_secs(10),
        || {
            let events = events(&fleet, other, "agent-d1")?;
            let done = ends(&events).iter().all(|(_, gone)| !gone.is_empty());
            Ok(done.then_some(events))
        },
    )?;
    ensure!(
        ends(&moved_to)
            .iter()
            .all(|(_, gone)| gone.len() == 1 && gone[0].starts_with("closed by peer")),
        "the agent's close is on record, once: {moved_to:?}"
    );
    Ok(())
}

/// A connection relay-0 accepted just before its drain, whose first request comes late (under load
/// a client took over a second from accept to request, and kubectl saw EOF), is answered: over
/// HTTP/1.1 with `Connection: close`, over HTTP/2 then GOAWAY, and on a connection that had not
/// started its TLS handshake. Then each closes, and the drain ends at once, not at its deadline.
pub fn a_connection_accepted_before_a_drain_gets_its_first_request_answered(tb: &Testbed) -> Result<()> {
    let fleet = Fleet::start(tb, 1, &[])?;
    let (url, ca) = (fleet.url(0), fleet.ca_file());
    let authority = url.strip_prefix("https://").context("relay URL")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let (mut h1, (h2, h2_connection), tcp) = runtime.block_on(async {
        let h1 = tls(&ca, b"http/1.1", TcpStream::connect(authority).await?).await?;
        let h2 = tls(&ca, b"h2", TcpStream::connect(authority).await?).await?;
        ensure!(
            h2.get_ref().1.alpn_protocol() == Some(b"h2"),
            "the relay did not negotiate h2"
        );
        // The client's preface and SETTINGS go at once: the relay knows it for HTTP/2.
        let (h2, connection) = h2::client::handshake(h2).await?;
        let tcp = TcpStream::connect(authority).await?;
        Ok((h1, (h2, tokio::spawn(connection)), tcp))
    })?;
    std::thread::scope(|scope| {
        let stopped = scope.spawn(|| fleet.terminate_relay(0));
        wait_for("relay-0 to drain its callers", Duration::from_secs(10), || {
            Ok(fleet
                .log("relay-0")?
                .contains("relay draining caller connections")
                .then_some(()))
        })?;
        runtime.block_on(async {
            // The former drain closed connections without a request a second after that line.
            let mut byte = [0u8; 1];
            let early = tokio::time::timeout(Duration::from_millis(1500), h1.read(&mut byte)).await;
            ensure!(
                early.is_err(),
                "relay-0 ended a connection it accepted before its drain, before its first request: {early:?}"
            );
            ensure!(
                !h2_connection.is_finished(),
                "relay-0 ended an HTTP/2 connection before its first request"
            );

            let answer = get_healthz(&mut h1, authority).await?;
            ensure!(
                answer.starts_with("HTTP/1.1 200") && answer.ends_with("ok"),
                "HTTP/1.1 answered: {answer:?}"
            );
            ensure!(
                answer.to_ascii_lowercase().contains("\r\nconnection: close\r\n"),
                "the answer says the connection closes: {answer:?}"
            );

            let mut h2 = h2
                .ready()
                .await
                .context("relay-0 took no HTTP/2 request after its drain began")?;
            let (response, _) = h2.send_request(http::Request::get(format!("{url}/healthz")).body(())?, true)?;
            let response = response.await.context("HTTP/2 request")?;
            ensure!(response.status() == 200, "HTTP/2 answered {}", response.status());
            let mut body = response.into_body();
            let mut text = Vec::new();
            while let Some(chunk) = body.data().await {
                text.extend_from_slice(&chunk?);
            }
            ensure!(text == b"ok", "HTTP/2 body: {:?}", String::from_utf8_lossy(&text));
            drop(h2);
            // GOAWAY after the answer, then the relay closes: the client may still be writing (a
            // PING's ACK) as it does, so a broken pipe is an end too, but not another error.
            let ended = tokio::time::timeout(Duration::from_secs(10), h2_connection)
                .await
                .context("relay-0 kept the HTTP/2 connection open after its answer")??;
            if let Err(e) = ended {
                ensure!(
                    e.is_io() || e.reason() == Some(h2::Reason::NO_ERROR),
                    "the HTTP/2 connection ended with an error: {e}"
                );
            }

            let mut late = tls(&ca, b"http/1.1", tcp)
                .await
                .context("TLS handshake on a connection accepted before the drain")?;
            let answer = get_healthz(&mut late, authority).await?;
            ensure!(
                answer.starts_with("HTTP/1.1 200") && answer.ends_with("ok"),
                "HTTP/1.1 after a late TLS handshake answered: {answer:?}"
            );
            Ok(())
        })?;
        // Nothing is left to drain: the relay does not wait for its 30 s deadline.
        wait_for("relay-0 to end its drain", Duration::from_secs(10), || {
            Ok(fleet.log("relay-0")?.contains("relay shutting down").then_some(()))
        })?;
        stopped
            .join()
            .map_err(|_| anyhow::anyhow!("stopping relay-0 panicked"))?
    })
}

/// A TLS connection over `tcp` offering `alpn`, trusting `ca` and verifying `localhost`.
async fn tls(ca: &Path, alpn: &[u8], tcp: TcpStream) -> Result<TlsStream<TcpStream>> {
    let config = hawser::tls::client_config(hawser::tls::root_store(ca)?, &[alpn])?;
    let name = rustls::pki_types::ServerName::try_from("localhost")?.to_owned();
    Ok(TlsConnector::from(Arc::new(config)).connect(name, tcp).await?)
}

/// Sends `GET /healthz` on `tls` and reads until the relay closes the connection.
async fn get_healthz(tls: &mut TlsStream<TcpStream>, authority: &str) -> Result<String> {
    tls.write_all(format!("GET /healthz HTTP/1.1\r\nHost: {authority}\r\n\r\n").as_bytes())
        .await?;
    let mut answer = Vec::new();
    // A close without close_notify still leaves the answer read so far.
    let read = tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut answer))
        .await
        .context("the relay kept the connection open after its answer")?;
    ensure!(
        read.is_ok() || !answer.is_empty(),
        "no answer, the connection ended: {read:?}"
    );
    Ok(String::from_utf8_lossy(&answer).into_owned())
}
