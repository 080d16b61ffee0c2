//! The agent's QUIC client against a relay endpoint on 127.0.0.1: it
//! accepts a relay only as its CA and pins say (real rustls, real quinn).

use std::collections::HashSet;

use rustls::RootCertStore;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use super::*;
use crate::tls::{Pin, RelayTrust};

/// The server id the test relays' connection IDs carry.
const SERVER_ID: cid::ServerId = cid::ServerId::new(*b"relay-id");

/// A self-signed relay certificate and its key.
struct Identity {
    cert: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
}

impl Identity {
    fn new(names: &[&str]) -> Self {
        Self::with(names, |_| {})
    }

    fn with(names: &[&str], edit: impl FnOnce(&mut rcgen::CertificateParams)) -> Self {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
        edit(&mut params);
        let cert = params.self_signed(&key).unwrap();
        Self {
            cert: cert.der().clone(),
            key: PrivatePkcs8KeyDer::from(key.serialize_der()).into(),
        }
    }

    fn pin(&self) -> Pin {
        Pin::of_certificate(&self.cert).unwrap()
    }

    fn roots(&self) -> RootCertStore {
        crate::tls::roots_of(vec![self.cert.clone()]).unwrap()
    }
}

/// A relay endpoint that presents `cert` and signs with `key` (which need
/// not belong to it), accepting every handshake.
fn relay(cert: &CertificateDer<'static>, key: &PrivateKeyDer<'static>) -> (Endpoint, SocketAddr) {
    relay_on(
        ([127, 0, 0, 1], 0).into(),
        cert,
        key,
        super::reset::reset_key(key, SERVER_ID, "relay"),
    )
}

/// [`relay`] on `addr`, resetting with `reset_key`.
fn relay_on(
    addr: SocketAddr,
    cert: &CertificateDer<'static>,
    key: &PrivateKeyDer<'static>,
    reset_key: Arc<dyn quinn::crypto::HmacKey>,
) -> (Endpoint, SocketAddr) {
    let provider = crate::tls::provider();
    let signing = provider.key_provider.load_private_key(key.clone_key()).unwrap();
    let certified = rustls::sign::CertifiedKey::new(vec![cert.clone()], signing);
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(rustls::sign::SingleCertAndKey::from(certified)));
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let endpoint = relay_endpoint(addr, tls, &TunnelConfig::default(), SERVER_ID, reset_key).unwrap();
    let addr = endpoint.local_addr().unwrap();
    let accepting = endpoint.clone();
    tokio::spawn(async move {
        while let Some(incoming) = accepting.accept().await {
            tokio::spawn(async move {
                if let Ok(connection) = incoming.await {
                    connection.closed().await;
                }
            });
        }
    });
    (endpoint, addr)
}

/// A relay with this identity's own certificate and key.
fn honest_relay(identity: &Identity) -> (Endpoint, SocketAddr) {
    relay(&identity.cert, &identity.key)
}

/// Dials `addr` as the agent does, naming `server_name`; the error as the agent would log it.
async fn dial(trust: &RelayTrust, addr: SocketAddr, server_name: &str) -> Result<(), String> {
    let agent = agent_endpoint(trust, &TunnelConfig::default(), addr).map_err(|e| e.to_string())?;
    let connection = super::dial(&agent, addr, server_name, HANDSHAKE_TIMEOUT)
        .await
        .map_err(|e| e.to_string())?;
    connection.close(0u32.into(), b"done");
    Ok(())
}

fn pinned(pins: &[Pin]) -> RelayTrust {
    RelayTrust::new(None, pins.to_vec()).unwrap()
}

#[tokio::test]
async fn the_pinned_key_is_accepted_whatever_the_name() {
    let real = Identity::new(&["localhost", "127.0.0.1"]);
    let (_relay, addr) = honest_relay(&real);
    let trust = pinned(&[real.pin()]);
    dial(&trust, addr, "localhost").await.unwrap();
    // The pin is the trust anchor: nothing vouches for names, so none is checked.
    dial(&trust, addr, "not-in-the-certificate.example").await.unwrap();
}

#[tokio::test]
async fn the_pinned_key_is_accepted_past_its_certificate_dates() {
    let expired = Identity::with(&["localhost"], |p| {
        p.not_before = rcgen::date_time_ymd(1999, 1, 1);
        p.not_after = rcgen::date_time_ymd(2000, 1, 1);
    });
    let (_relay, addr) = honest_relay(&expired);
    dial(&pinned(&[expired.pin()]), addr, "localhost").await.unwrap();
    // The CA check, which does vouch for dates, refuses the same certificate.
    let err = dial(
        &RelayTrust::new(Some(expired.roots()), vec![]).unwrap(),
        addr,
        "localhost",
    )
    .await
    .unwrap_err();
    assert!(err.contains("expired"), "{err}");
}

#[tokio::test]
async fn another_key_with_the_same_names_is_refused() {
    let real = Identity::new(&["localhost"]);
    let impostor = Identity::new(&["localhost"]);
    let (_relay, addr) = honest_relay(&impostor);
    let err = dial(&pinned(&[real.pin()]), addr, "localhost").await.unwrap_err();
    assert!(
        err.contains("invalid peer certificate")
            && err.contains("is not in relay.pinned_key_sha256")
            && err.contains(&impostor.pin().to_string()),
        "the error names the cause and the key presented: {err}"
    );
}

#[tokio::test]
async fn the_pinned_certificate_without_its_key_is_refused() {
    // The relay's certificate is public; presenting it proves nothing
    // unless the handshake is signed with its key.
    let real = Identity::new(&["localhost"]);
    let impostor = Identity::new(&["localhost"]);
    let (_relay, addr) = relay(&real.cert, &impostor.key);
    let err = dial(&pinned(&[real.pin()]), addr, "localhost").await.unwrap_err();
    assert!(err.contains("BadSignature"), "{err}");
}

#[tokio::test]
async fn a_second_pin_stages_a_key_rotation() {
    let old = Identity::new(&["localhost"]);
    let new = Identity::new(&["localhost"]);
    let trust = pinned(&[old.pin(), new.pin()]);
    for identity in [&old, &new] {
        let (_relay, addr) = honest_relay(identity);
        dial(&trust, addr, "localhost").await.unwrap();
    }
}

#[tokio::test]
async fn a_ca_alone_still_works() {
    let real = Identity::new(&["localhost"]);
    let (_relay, addr) = honest_relay(&real);
    let trust = RelayTrust::new(Some(real.roots()), vec![]).unwrap();
    dial(&trust, addr, "localhost").await.unwrap();
    let err = dial(&trust, addr, "elsewhere.example").await.unwrap_err();
    assert!(
        err.contains("not valid for name"),
        "the CA check verifies the name: {err}"
    );
    let stranger = Identity::new(&["localhost"]);
    let (_other, other_addr) = honest_relay(&stranger);
    let err = dial(&trust, other_addr, "localhost").await.unwrap_err();
    assert!(
        err.contains("invalid peer certificate"),
        "a certificate the CA did not sign: {err}"
    );
}

#[tokio::test]
async fn with_ca_and_pin_both_must_hold() {
    let real = Identity::new(&["localhost"]);
    let other = Identity::new(&["localhost"]);
    let (_relay, addr) = honest_relay(&real);
    let both = |roots: &Identity, pin: &Identity| RelayTrust::new(Some(roots.roots()), vec![pin.pin()]).unwrap();

    dial(&both(&real, &real), addr, "localhost").await.unwrap();
    let err = dial(&both(&real, &other), addr, "localhost").await.unwrap_err();
    assert!(
        err.contains("is not in relay.pinned_key_sha256"),
        "CA valid, key not pinned: {err}"
    );
    let err = dial(&both(&other, &real), addr, "localhost").await.unwrap_err();
    assert!(
        err.contains("invalid peer certificate") && !err.contains("pinned_key_sha256"),
        "key pinned, CA not valid: {err}"
    );
    let err = dial(&both(&real, &real), addr, "elsewhere.example").await.unwrap_err();
    assert!(
        err.contains("not valid for name"),
        "with a CA the name is checked: {err}"
    );
}

#[tokio::test]
async fn a_dial_nobody_answers_gives_up_at_its_deadline() {
    // A bound UDP socket that never answers: the handshake's packets are lost.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap();
    let real = Identity::new(&["localhost"]);
    let agent = agent_endpoint(&pinned(&[real.pin()]), &TunnelConfig::default(), addr).unwrap();
    let started = std::time::Instant::now();
    let deadline = Duration::from_millis(300);
    let outcome = super::dial(&agent, addr, "localhost", deadline).await;
    assert!(
        matches!(outcome, Err(DialError::Timeout(d)) if d == deadline),
        "expected a timeout: {outcome:?}"
    );
    // Well before quinn's own idle timeout would have ended it.
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
}

/// A UDP hop between one agent and a relay, as a balancer sits: it sends the relay's answers to
/// wherever the agent last sent from, and records the destination connection ID of each datagram
/// the agent sends (its first packet's, as the long or short header gives it).
async fn tap(relay: SocketAddr) -> (SocketAddr, Arc<std::sync::Mutex<Vec<Vec<u8>>>>) {
    let (addr, seen, _) = tap_to(relay).await;
    (addr, seen)
}

/// [`tap`], and where it sends the agent's datagrams, which can be changed: the agent's packets
/// then reach another relay on the same address, as far as the agent can tell.
async fn tap_to(
    relay: SocketAddr,
) -> (
    SocketAddr,
    Arc<std::sync::Mutex<Vec<Vec<u8>>>>,
    Arc<std::sync::Mutex<SocketAddr>>,
) {
    let front = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let back = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = front.local_addr().unwrap();
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let target = Arc::new(std::sync::Mutex::new(relay));
    let (record, to_relay) = (seen.clone(), target.clone());
    tokio::spawn(async move {
        let (mut up, mut down) = (vec![0; 65_536], vec![0; 65_536]);
        let mut agent = None;
        loop {
            tokio::select! {
                Ok((n, from)) = front.recv_from(&mut up) => {
                    agent = Some(from);
                    if let Some(cid) = destination_cid(&up[..n]) {
                        record.lock().unwrap().push(cid);
                    }
                    let relay = *to_relay.lock().unwrap();
                    let _ = back.send_to(&up[..n], relay).await;
                }
                Ok((n, from)) = back.recv_from(&mut down) => {
                    // Only the current relay's: a relay the agent can no longer reach is silent.
                    if let Some(to) = agent.filter(|_| from == *to_relay.lock().unwrap()) {
                        let _ = front.send_to(&down[..n], to).await;
                    }
                }
            }
        }
    });
    (addr, seen, target)
}

/// The destination connection ID of a datagram's first QUIC packet.
fn destination_cid(datagram: &[u8]) -> Option<Vec<u8>> {
    if datagram.first()? & 0x80 != 0 {
        // Long header: first octet, version (4 octets), the ID's length, the ID.
        let len = usize::from(*datagram.get(5)?);
        datagram.get(6..6 + len).map(<[u8]>::to_vec)
    } else {
        // Short header: first octet, then the ID, whose length only its issuer knows (the relay's).
        datagram.get(1..1 + cid::CID_LEN).map(<[u8]>::to_vec)
    }
}

/// Polls `done` every 10 ms for up to 5 s.
async fn eventually(mut done: impl FnMut() -> bool) -> bool {
    for _ in 0..500 {
        if done() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

#[tokio::test]
async fn the_agent_addresses_the_relay_by_its_server_id_also_after_it_moves() {
    let identity = Identity::new(&["localhost"]);
    let (_relay, relay_addr) = honest_relay(&identity);
    let (addr, seen) = tap(relay_addr).await;
    let agent = agent_endpoint(&pinned(&[identity.pin()]), &TunnelConfig::default(), addr).unwrap();
    let connection = super::dial(&agent, addr, "localhost", HANDSHAKE_TIMEOUT).await.unwrap();
    // The relay's spare connection IDs (NEW_CONNECTION_ID) must have arrived for the agent to move.
    assert!(eventually(|| connection.stats().frame_rx.new_connection_id > 0).await);

    // The agent's NAT rebinds: a new source port, and the agent takes a connection ID it has not
    // used on the old one (RFC 9000, 9.5), as a migrating agent does.
    let first_ids = seen.lock().unwrap().iter().collect::<HashSet<_>>().len();
    agent.rebind(std::net::UdpSocket::bind("127.0.0.1:0").unwrap()).unwrap();
    assert!(
        eventually(|| seen.lock().unwrap().iter().collect::<HashSet<_>>().len() > first_ids).await,
        "the agent never used another connection ID"
    );
    let (mut send, _recv) = connection.open_bi().await.unwrap();
    send.write_all(b"still here").await.unwrap();
    assert!(connection.close_reason().is_none(), "the tunnel survived the move");

    let seen = seen.lock().unwrap().clone();
    // Only the agent's first Initial packets name an ID the agent chose (RFC 9000, 7.2); a
    // balancer routes those by its fallback.
    let chosen_by_agent = &seen[0];
    let relays: HashSet<_> = seen.iter().filter(|id| *id != chosen_by_agent).collect();
    assert!(
        relays.len() >= 2,
        "the handshake's ID and at least one spare: {relays:02x?}"
    );
    for id in relays {
        assert_eq!(id.len(), cid::CID_LEN, "{id:02x?}");
        assert_eq!(id[0], 19, "config rotation 0, 19 octets follow: {id:02x?}");
        assert_eq!(id[cid::SERVER_ID_RANGE], SERVER_ID.octets(), "{id:02x?}");
    }
}

/// A relay that dies takes its connections' state with it. The one started after it on the same
/// port as the same relay (same serving key, instance and server id) answers the agent's next
/// packet with a stateless reset the agent takes; one with another key (quinn's default, random
/// per process) cannot, and the agent would wait for its idle timeout.
#[tokio::test]
async fn a_relay_restarted_as_itself_resets_the_tunnels_of_the_one_before() {
    let identity = Identity::new(&["localhost"]);
    let same = || super::reset::reset_key(&identity.key, SERVER_ID, "relay");
    let random: Arc<dyn quinn::crypto::HmacKey> = {
        let mut octets = [0; 32];
        rand::RngCore::fill_bytes(&mut rand::rng(), &mut octets);
        Arc::new(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &octets))
    };
    for (restarted_with, reset) in [(same() as Arc<dyn quinn::crypto::HmacKey>, true), (random, false)] {
        let (_old, old_addr) = relay_on(([127, 0, 0, 1], 0).into(), &identity.cert, &identity.key, same());
        // The agent reaches the relay at the tap's address, which stays when the relay changes.
        let (addr, _, relay_at) = tap_to(old_addr).await;
        let agent = agent_endpoint(&pinned(&[identity.pin()]), &TunnelConfig::default(), addr).unwrap();
        let connection = super::dial(&agent, addr, "localhost", HANDSHAKE_TIMEOUT).await.unwrap();
        // The old relay dies as a killed process does, sending nothing (no CONNECTION_CLOSE), and
        // a new one takes its address.
        let (_new, new_addr) = relay_on(
            ([127, 0, 0, 1], 0).into(),
            &identity.cert,
            &identity.key,
            restarted_with,
        );
        *relay_at.lock().unwrap() = new_addr;
        let (mut send, _recv) = connection.open_bi().await.unwrap();
        // A packet of the old connection reaches the new relay.
        send.write_all(b"anyone there?").await.unwrap();
        let ended = tokio::time::timeout(Duration::from_secs(2), connection.closed()).await;
        if reset {
            assert!(
                matches!(ended, Ok(quinn::ConnectionError::Reset)),
                "the restarted relay's reset: {ended:?}"
            );
        } else {
            assert!(ended.is_err(), "a reset with another key must not count: {ended:?}");
        }
    }
}
