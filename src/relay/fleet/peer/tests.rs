//! The peer link over real QUIC on loopback: mutual TLS from the fleet CA, one hop to a tunnel
//! the answering relay holds, nothing else.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
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
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec![name.to_owned()])
        .unwrap()
        .signed_by(&key, ca)
        .unwrap();
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
    let peers = Arc::new(Peers::bind(config, &TunnelConfig::default()).unwrap());
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
        &TunnelConfig::default(),
    )
    .unwrap();

    let (mut send, mut recv) = a.open(&holder("relay-b", &b.peers), "alpha", WAIT).await.unwrap();
    write_chunk(&mut send, Bytes::from_static(b"head and body"))
        .await
        .unwrap();
    send.end();
    let (mut agent_send, mut agent_recv) = tokio::time::timeout(WAIT, b.agent.accept()).await.unwrap().unwrap();
    // The agent gets what followed the preamble, and its end.
    let mut got = Vec::new();
    while let Some(chunk) = next_chunk(&mut agent_recv).await.unwrap() {
        got.extend_from_slice(&chunk);
    }
    assert_eq!(got, b"head and body");
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
    b.stop.cancel();
}

#[tokio::test]
async fn a_relay_of_another_fleet_or_under_another_name_gets_no_connection() {
    let dir = tempfile::tempdir().unwrap();
    let fleet = ca();
    let mut b = answering(&config(dir.path(), "relay-b", &fleet, &fleet.pem()));

    // Its certificate is from another CA (it trusts ours, so only B's check refuses it).
    let other = ca();
    let rogue = Peers::bind(
        &config(dir.path(), "rogue", &other, &fleet.pem()),
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
