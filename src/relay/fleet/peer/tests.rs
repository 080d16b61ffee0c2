//! The peer link over real QUIC on loopback: mutual TLS from the fleet CA, one hop to a tunnel
//! the answering relay holds, nothing else.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, ExtendedKeyUsagePurpose, IsCa, KeyPair};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::*;
use crate::relay::registry::Admission;
use crate::transport::{Tunnel, memory};

fn ca() -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
}

/// A peers config for relay `name` in `dir`, its certificate signed by `ca` (whose PEM is the
/// trusted CA file: `trusted`).
fn config(dir: &Path, name: &str, ca: &CertifiedIssuer<'static, KeyPair>, trusted: &str) -> PeersConfig {
    config_with(dir, name, &[], ca, trusted)
}

/// [`config`] with a certificate that carries the extended key usages `usages` (none: no such
/// extension, which TLS takes for any usage).
fn config_with(
    dir: &Path,
    name: &str,
    usages: &[ExtendedKeyUsagePurpose],
    ca: &CertifiedIssuer<'static, KeyPair>,
    trusted: &str,
) -> PeersConfig {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec![name.to_owned()]).unwrap();
    params.extended_key_usages = usages.to_vec();
    let cert = params.signed_by(&key, ca).unwrap();
    let (cert_file, key_file, ca_file) = (
        dir.join(format!("{name}.crt")),
        dir.join(format!("{name}.key")),
        dir.join(format!("{name}-ca.crt")),
    );
    std::fs::write(&cert_file, cert.pem()).unwrap();
    std::fs::write(&key_file, key.serialize_pem()).unwrap();
    std::fs::write(&ca_file, trusted).unwrap();
    PeersConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        advertise: None,
        ca_file,
        cert_file,
        key_file,
        keep_alive_secs: 1,
        idle_timeout_secs: 4,
    }
}

/// Relay `b` serving the peer port with one memory tunnel of cluster `alpha` registered.
struct Answering {
    peers: Arc<Peers>,
    agent: memory::Acceptor,
    stop: CancellationToken,
    _session: crate::relay::registry::SessionGuard,
}

fn answering(config: &PeersConfig) -> Answering {
    let peers = Arc::new(Peers::bind(config, "relay-b", &TunnelConfig::default()).unwrap());
    let registry = Registry::new();
    let (tunnel, agent) = memory::tunnel("127.0.0.1:1".parse().unwrap());
    let admitted = Admission {
        token_digest: [0; 32],
        caller_audience: None,
    };
    let (session, _) = registry.register(
        registry.new_id(),
        "alpha",
        ("agent-a", 0),
        Tunnel::Memory(tunnel),
        admitted,
    );
    let stop = CancellationToken::new();
    let serving = Arc::new(Serving {
        registry,
        open_stream_timeout: Duration::from_secs(2),
        tasks: TaskTracker::new(),
        streams: TaskTracker::new(),
    });
    tokio::spawn(serve(peers.clone(), serving, stop.clone()));
    Answering {
        peers,
        agent,
        stop,
        _session: session,
    }
}

fn holder(name: &str, peers: &Peers) -> Holder {
    Holder {
        relay: name.to_owned(),
        peer: peers.local_addr().unwrap().to_string(),
    }
}

const WAIT: Duration = Duration::from_secs(5);

#[tokio::test]
async fn a_fleet_peer_reaches_a_held_tunnel_and_a_cluster_held_elsewhere_is_refused_not_forwarded() {
    let dir = tempfile::tempdir().unwrap();
    let fleet = ca();
    let mut b = answering(&config(dir.path(), "relay-b", &fleet, &fleet.pem()));
    let a = Peers::bind(
        &config(dir.path(), "relay-a", &fleet, &fleet.pem()),
        "relay-a",
        &TunnelConfig::default(),
    )
    .unwrap();

    let (mut send, mut recv) = a.open(&holder("relay-b", &b.peers), "alpha", WAIT).await.unwrap();
    assert_eq!(a.links(), vec![("relay-b".to_owned(), true)], "the link's health");
    let mut sent = request_head().to_vec();
    sent.extend_from_slice(b"and body");
    write_chunk(&mut send, Bytes::from(sent.clone())).await.unwrap();
    send.end();
    let (mut agent_send, mut agent_recv) = tokio::time::timeout(WAIT, b.agent.accept()).await.unwrap().unwrap();
    // The agent gets what followed the preamble, the head as it came (no trace exporter here),
    // and its end.
    let mut got = Vec::new();
    while let Some(chunk) = next_chunk(&mut agent_recv).await.unwrap() {
        got.extend_from_slice(&chunk);
    }
    assert_eq!(got, sent);
    write_chunk(&mut agent_send, Bytes::from_static(b"answer"))
        .await
        .unwrap();
    agent_send.end();
    assert_eq!(next_chunk(&mut recv).await.unwrap().unwrap(), "answer");
    assert_eq!(next_chunk(&mut recv).await.unwrap(), None);

    // B holds no tunnel of beta: refused with NO_ROUTE before anything is sent, never passed on.
    let refused = a.open(&holder("relay-b", &b.peers), "beta", WAIT).await;
    assert!(
        matches!(refused, Err(PeerError::NoRoute(ref r)) if r == "relay-b"),
        "{:?}",
        refused.err()
    );

    // A head B cannot decode: cut both ways as the agent would cut it, the agent's stream too.
    let (mut send, mut recv) = a.open(&holder("relay-b", &b.peers), "alpha", WAIT).await.unwrap();
    write_chunk(&mut send, Bytes::from_static(&[0, 0, 0, 2, 2, 0]))
        .await
        .unwrap();
    let (_agent_send, mut agent_recv) = tokio::time::timeout(WAIT, b.agent.accept()).await.unwrap().unwrap();
    let answer = tokio::time::timeout(WAIT, next_chunk(&mut recv)).await.unwrap();
    assert_eq!(answer, Err(StreamError::Reset(u64::from(reset::BAD_HEAD))));
    let agent_got = tokio::time::timeout(WAIT, next_chunk(&mut agent_recv)).await.unwrap();
    assert!(agent_got.is_err(), "the agent's stream is cut: {agent_got:?}");
    b.stop.cancel();
}

/// An encoded request head, as a forwarding relay sends it.
fn request_head() -> Bytes {
    crate::wire::RequestHead {
        request_id: "relay-a-x-1".into(),
        credential: crate::proto::Credential::Assertion("a.b.c".into()),
        method: http::Method::POST,
        target: "/api/v1/namespaces".parse().unwrap(),
        traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
        headers: http::HeaderMap::new(),
        body: true,
    }
    .encode(crate::wire::MAX_HEAD)
    .unwrap()
}

#[tokio::test]
async fn a_relay_of_another_fleet_or_under_another_name_gets_no_connection() {
    let dir = tempfile::tempdir().unwrap();
    let fleet = ca();
    let mut b = answering(&config(dir.path(), "relay-b", &fleet, &fleet.pem()));

    // Its certificate is from another CA (it trusts ours too, so only B's check refuses it).
    let other = ca();
    let rogue = Peers::bind(
        &config(dir.path(), "rogue", &other, &format!("{}{}", other.pem(), fleet.pem())),
        "rogue",
        &TunnelConfig::default(),
    )
    .unwrap();
    // TLS 1.3: the client finishes its handshake before the server has judged its certificate,
    // so the refusal may arrive as the connection's close, on the first read.
    match rogue.open(&holder("relay-b", &b.peers), "alpha", WAIT).await {
        Err(e) => assert!(matches!(e, PeerError::Dial { .. } | PeerError::Stream { .. }), "{e}"),
        Ok((_send, mut recv)) => {
            let read = tokio::time::timeout(WAIT, next_chunk(&mut recv)).await.unwrap();
            assert!(matches!(read, Err(StreamError::Closed(_))), "{read:?}");
        }
    }
    assert!(
        tokio::time::timeout(Duration::from_millis(300), b.agent.accept())
            .await
            .is_err(),
        "nothing reached the agent"
    );

    // A fleet member dialling B's address for a relay of another name: B's certificate does not
    // name it, so the registry cannot send it elsewhere than it says.
    let a = Peers::bind(
        &config(dir.path(), "relay-a", &fleet, &fleet.pem()),
        "relay-a",
        &TunnelConfig::default(),
    )
    .unwrap();
    let misnamed = a.open(&holder("relay-c", &b.peers), "alpha", WAIT).await;
    assert!(matches!(misnamed, Err(PeerError::Dial { .. })), "{:?}", misnamed.err());
    b.stop.cancel();
}

#[tokio::test]
async fn the_preamble_is_read_across_chunks_and_checked() {
    let (tunnel, mut acceptor) = memory::tunnel("127.0.0.1:1".parse().unwrap());
    let (mut send, _recv) = tunnel.open().await.unwrap();
    let (_s, mut recv) = acceptor.accept().await.unwrap();
    let whole = preamble("alpha");
    write_chunk(&mut send, whole.slice(..3)).await.unwrap();
    let mut rest = bytes::BytesMut::from(&whole[3..]);
    rest.extend_from_slice(b"HEAD");
    write_chunk(&mut send, rest.freeze()).await.unwrap();
    let (cluster, after) = read_preamble(&mut recv).await.unwrap();
    assert_eq!((cluster.as_str(), &after[..]), ("alpha", &b"HEAD"[..]));

    for (bytes, expect) in [
        (&b"\x02\x05alpha"[..], "version"),
        (&b"\x01\x05Al/ha"[..], "not a plain name"),
        (&b"\x01\x05al"[..], "ended"),
    ] {
        let (mut send, _recv) = tunnel.open().await.unwrap();
        let (_s, mut recv) = acceptor.accept().await.unwrap();
        write_chunk(&mut send, Bytes::copy_from_slice(bytes)).await.unwrap();
        send.end();
        let err = read_preamble(&mut recv).await.unwrap_err().to_string();
        assert!(err.contains(expect), "{bytes:?}: {err}");
    }
}

#[tokio::test]
async fn a_certificate_peers_would_refuse_stops_the_relay_at_start_naming_the_file_and_instance() {
    let dir = tempfile::tempdir().unwrap();
    let fleet = ca();
    let both = [ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    let refused = |config: &PeersConfig, instance: &str| {
        let Err(e) = Peers::bind(config, instance, &TunnelConfig::default()) else {
            panic!("{instance} started with {}", config.cert_file.display());
        };
        // As the binary prints it: one line, the cause once.
        let line = format!("{:#}", anyhow::Error::from(e));
        let prefix = format!("peers.cert_file {}: ", config.cert_file.display());
        assert!(line.starts_with(&prefix) && !line.contains('\n'), "{line}");
        assert!(line.contains(&format!("{instance:?}")), "names the instance: {line}");
        line
    };

    // relay-2's certificate in relay-3's configuration: peers dial relay-3 under its name.
    let relay_2 = config_with(dir.path(), "relay-2", &both, &fleet, &fleet.pem());
    let line = refused(&relay_2, "relay-3");
    assert!(
        line.contains("not valid for instance") && line.contains("relay-2"),
        "{line}"
    );
    Peers::bind(&relay_2, "relay-2", &TunnelConfig::default()).expect("relay-2 may use it");

    // A usage for one end only: the link uses the certificate at both.
    for (instance, only, missing) in [
        ("relay-4", ExtendedKeyUsagePurpose::ServerAuth, "clientAuth"),
        ("relay-5", ExtendedKeyUsagePurpose::ClientAuth, "serverAuth"),
    ] {
        let one_usage = config_with(dir.path(), instance, &[only], &fleet, &fleet.pem());
        let line = refused(&one_usage, instance);
        assert!(line.contains(missing), "{line}");
    }

    let other = ca();
    let foreign = config(dir.path(), "relay-6", &other, &fleet.pem());
    let line = refused(&foreign, "relay-6");
    assert!(line.contains("not signed by peers.ca_file"), "{line}");
}

#[test]
fn a_taken_peer_port_is_one_cause_naming_the_key_and_address() {
    let dir = tempfile::tempdir().unwrap();
    let fleet = ca();
    let taken = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut config = config(dir.path(), "relay-a", &fleet, &fleet.pem());
    config.listen = taken.local_addr().unwrap();
    let Err(e) = Peers::bind(&config, "relay-a", &TunnelConfig::default()) else {
        panic!("bound a taken port");
    };
    let line = format!("{:#}", anyhow::Error::from(e));
    assert!(line.starts_with(&format!("peers.listen {}: ", config.listen)), "{line}");
    assert_eq!(line.matches("in use").count(), 1, "the cause once: {line}");
}

/// Counts the lines of `logs` at `level` that hold `text`.
fn lines_at(logs: &str, level: &str, text: &str) -> usize {
    logs.lines()
        .filter(|l| l.contains(&format!(" {level} ")) && l.contains(text))
        .count()
}

/// The text log of `run`, on a runtime of its own (so that every task it spawns logs there).
fn logs_of(run: impl std::future::Future<Output = ()>) -> String {
    crate::telemetry::tests::capture(crate::cli::LogFormat::Text, || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(run);
    })
}

#[test]
fn failed_peer_handshakes_are_warned_at_both_ends_within_a_budget() {
    const ATTEMPTS: usize = 25;
    let logs = crate::telemetry::tests::capture_watched(crate::cli::LogFormat::Text, |out| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(failed_handshakes(ATTEMPTS, out));
    });
    let dialling = lines_at(&logs, "WARN", "TLS handshake with a peer relay failed");

    assert!(
        (1..=HANDSHAKE_FAILURES_LOGGED_PER_MINUTE as usize).contains(&dialling),
        "the dialling relay warns, within its budget: {dialling}\n{logs}"
    );
    assert!(logs.contains("peer=relay-c"), "{logs}");
    let dialled = lines_at(&logs, "WARN", "peer handshake failed");
    assert!(
        (1..=HANDSHAKE_FAILURES_LOGGED_PER_MINUTE as usize).contains(&dialled),
        "the dialled relay warns within its budget, not once per attempt: {dialled}\n{logs}"
    );
}

/// Dials relay-b `attempts` times as relay-c, a name B's certificate does not have, and waits
/// (10 s at most) until B has logged a failed handshake: it judges each as it arrives.
async fn failed_handshakes(attempts: usize, out: &crate::telemetry::tests::Captured) {
    let dir = tempfile::tempdir().unwrap();
    let fleet = ca();
    let b = answering(&config(dir.path(), "relay-b", &fleet, &fleet.pem()));
    let a = Peers::bind(
        &config(dir.path(), "relay-a", &fleet, &fleet.pem()),
        "relay-a",
        &TunnelConfig::default(),
    )
    .unwrap();
    for _ in 0..attempts {
        let misnamed = a.open(&holder("relay-c", &b.peers), "alpha", WAIT).await;
        assert!(matches!(misnamed, Err(PeerError::Dial { .. })), "{:?}", misnamed.err());
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while lines_at(&out.text(), "WARN", "peer handshake failed") == 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    b.stop.cancel();
}

#[test]
fn a_peer_connection_lost_to_its_idle_timeout_is_logged_once_at_the_forwarding_relay() {
    let dir = tempfile::tempdir().unwrap();
    let fleet = ca();
    // B on a runtime of its own, so that it can vanish without a word (a relay that died).
    let b_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let b_config = config(dir.path(), "relay-b", &fleet, &fleet.pem());
    let b = b_runtime.block_on(async { answering(&b_config) });
    let a_config = config(dir.path(), "relay-a", &fleet, &fleet.pem());
    let logs = logs_of(async {
        let a = Peers::bind(&a_config, "relay-a", &TunnelConfig::default()).unwrap();
        let (mut send, _recv) = a.open(&holder("relay-b", &b.peers), "alpha", WAIT).await.unwrap();
        send.end();
        b_runtime.shutdown_background();
        let pooled = a.pool.get("relay-b").unwrap().clone();
        let connection = pooled.lock().await.clone().unwrap();
        // keep_alive_secs 1, idle_timeout_secs 4: the loss shows within 4 s.
        let reason = tokio::time::timeout(Duration::from_secs(10), connection.closed())
            .await
            .expect("the connection ends at its idle timeout");
        assert!(matches!(reason, quinn::ConnectionError::TimedOut), "{reason}");
        assert_eq!(a.links(), vec![("relay-b".to_owned(), false)], "a lost link is down");
        a.watchers.close();
        a.watchers.wait().await;
    });
    let lost = lines_at(&logs, "INFO", "the connection to a peer relay was lost");
    assert_eq!(lost, 1, "{logs}");
    assert!(
        logs.contains("peer=relay-b") && logs.contains("reason=\"timed out\""),
        "{logs}"
    );
}
