//! Agents over TCP: the same hello, judgement and budgets as on QUIC, answered with frames on the
//! stream (the TLS in front is the door's; these run over an in-memory pipe).

use tokio::io::DuplexStream;

use super::*;
use crate::proto::Accepts;
use crate::proto::Answer;
use crate::transport::h2::agent_side;

const SOURCE: &str = "192.0.2.7:40000";

impl Relay {
    /// Starts a TCP session from `SOURCE` over a pipe and says `hello` on it, unless `None`.
    pub(super) async fn tcp(&self, hello: Option<&Hello>) -> (DuplexStream, Option<Answer>) {
        let (relay_io, mut agent_io) = tokio::io::duplex(64 * 1024);
        let permit = Arc::new(Semaphore::new(1)).try_acquire_owned().unwrap();
        tokio::spawn(tcp_session(
            relay_io,
            SOURCE.parse().unwrap(),
            self.sessions.clone(),
            permit,
            self.stop.subscribe(),
        ));
        let Some(hello) = hello else {
            return (agent_io, None);
        };
        proto::write_frame(&mut agent_io, hello).await.unwrap();
        let answer = tokio::time::timeout(Duration::from_secs(10), proto::read_frame::<_, Answer>(&mut agent_io))
            .await
            .expect("an answer within 10 s")
            .expect("a readable answer");
        (agent_io, Some(answer))
    }
}

fn closing(answer: Option<Answer>) -> (u32, String) {
    match answer {
        Some(Answer::Closing(c)) => (c.code, c.reason),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn over_tcp_a_refused_hello_gets_its_code_and_is_charged_to_its_source() {
    let relay = relay_full(Arc::new(Semaphore::new(8)), 0, 2, 64);
    let wrong = Hello {
        link: 0,
        held: Vec::new(),
        token: "not-the-token".into(),
        ..hello("agent-1")
    };
    for _ in 0..2 {
        let (_io, answer) = relay.tcp(Some(&wrong)).await;
        assert_eq!(
            closing(answer),
            (close_code::REFUSED, "unknown cluster or wrong agent token".to_owned())
        );
    }
    let ip: std::net::SocketAddr = SOURCE.parse().unwrap();
    assert!(
        relay.sessions.hello_failures.is_spent(ip.ip()),
        "TCP refusals spend the same per-source budget as QUIC ones (the door then closes before TLS)"
    );
    let other_model = Hello {
        link: 0,
        held: Vec::new(),
        accepts: Accepts::CallerToken {
            audiences: vec!["x".into()],
        },
        ..hello("agent-1")
    };
    let (code, why) = closing(relay.tcp(Some(&other_model)).await.1);
    assert_eq!(code, close_code::MISMATCH);
    assert!(why.contains("this relay sends relay assertions"), "{why}");
}

#[tokio::test]
async fn over_tcp_a_welcomed_agent_is_routed_to_and_hears_why_it_is_closed() {
    let relay = relay(8);
    let (io, answer) = relay.tcp(Some(&hello("agent-1"))).await;
    let Some(Answer::Welcome(welcome)) = answer else {
        panic!("expected a welcome, got {answer:?}");
    };
    assert_eq!(welcome.relay, "relay-test");
    let side = agent_side(io, &TunnelConfig::default()).await.unwrap();
    let served = tokio::spawn(side.serve(
        |_send, _recv| {},
        tokio_util::sync::CancellationToken::new(),
        tokio_util::sync::CancellationToken::new(),
        tokio_util::sync::CancellationToken::new(),
    ));
    let deadline = Instant::now() + Duration::from_secs(5);
    let session = loop {
        if let Some(session) = relay.sessions.registry.pick("c") {
            break session;
        }
        assert!(Instant::now() < deadline, "the session is registered within 5 s");
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    assert_eq!(session.id, welcome.session);
    assert!(matches!(session.connection, Tunnel::H2(_)));
    relay.stop.send(true).unwrap();
    let said = tokio::time::timeout(Duration::from_secs(5), served)
        .await
        .expect("the agent's tunnel ends")
        .unwrap();
    assert_eq!(said, "the relay closed the tunnel (3): relay shutting down");
    let events: Vec<String> = relay
        .audit_lines()
        .iter()
        .filter_map(|l| l["event"].as_str().map(str::to_owned))
        .collect();
    assert!(events.contains(&"agent_registered".to_owned()), "{events:?}");
}

/// The caller port's TLS door in front of this relay's sessions, with the relay's certificate.
fn door(relay: &Relay) -> crate::relay::door::Door {
    let (cert, key) = (relay.dir.path().join("relay.crt"), relay.dir.path().join("relay.key"));
    let config = |alpn: &[&[u8]]| Arc::new(crate::tls::server_config(&cert, &key, alpn).unwrap());
    crate::relay::door::Door {
        callers: config(&[b"h2", b"http/1.1"]),
        agents: config(&[crate::proto::ALPN]),
        sessions: relay.sessions.clone(),
        handshakes: Arc::new(Semaphore::new(8)),
        stopping: relay.stop.subscribe(),
        tasks: tokio_util::task::TaskTracker::new(),
    }
}

/// A TLS client offering `alpn` to the door over a pipe, as if from `peer`: the door's verdict
/// for a caller, and the client's handshake.
async fn knock(
    relay: &Relay,
    door: &crate::relay::door::Door,
    alpn: &[u8],
    peer: &str,
) -> (bool, std::io::Result<tokio_rustls::client::TlsStream<DuplexStream>>) {
    let (server_io, client_io) = tokio::io::duplex(64 * 1024);
    let tls = Arc::new(relay.trust.client_config(&[alpn]).unwrap());
    let connector = tokio_rustls::TlsConnector::from(tls);
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let (entered, client) = tokio::join!(door.enter(server_io, peer.parse().unwrap()), async {
        tokio::time::timeout(Duration::from_secs(10), connector.connect(name, client_io))
            .await
            .expect("the handshake ends within 10 s")
    });
    (entered.is_some(), client)
}

#[tokio::test]
async fn the_door_tells_agents_from_callers_by_alpn_and_turns_away_spent_sources_before_tls() {
    let relay = relay_full(Arc::new(Semaphore::new(8)), 0, 1, 64);
    let door = door(&relay);
    let (caller, client) = knock(&relay, &door, b"h2", "192.0.2.1:1000").await;
    assert!(caller && client.is_ok(), "a caller gets the front door");

    let spent: std::net::SocketAddr = "192.0.2.2:1000".parse().unwrap();
    relay.sessions.hello_failures.charge(spent.ip());
    let (caller, client) = knock(&relay, &door, crate::proto::ALPN, "192.0.2.2:1000").await;
    assert!(!caller);
    assert!(client.is_err(), "a spent source gets no TLS handshake");
    assert!(door.tasks.is_empty(), "and costs no task");

    let (caller, client) = knock(&relay, &door, crate::proto::ALPN, "192.0.2.3:1000").await;
    assert!(!caller, "an agent is not a caller");
    let mut io = client.expect("an agent gets its TLS handshake");
    proto::write_frame(&mut io, &hello("agent-1")).await.unwrap();
    let answer = proto::read_frame::<_, Answer>(&mut io).await.unwrap();
    assert!(matches!(answer, Answer::Welcome(_)), "{answer:?}");
}

#[tokio::test]
async fn one_source_holds_at_most_its_share_of_unproven_tcp_connections_before_any_tls() {
    let relay = relay_full(Arc::new(Semaphore::new(8)), 0, 30, 1);
    let door = door(&relay);
    // Past TLS and silent: holds the source's one unproven slot until its hello deadline.
    let (_, silent) = knock(&relay, &door, crate::proto::ALPN, "192.0.2.4:1000").await;
    let _silent = silent.expect("the first gets its handshake");
    let (_, second) = knock(&relay, &door, crate::proto::ALPN, "192.0.2.4:1001").await;
    assert!(second.is_err(), "the same address gets no TLS handshake for a second");
    let (_, other) = knock(&relay, &door, crate::proto::ALPN, "192.0.2.5:1000").await;
    assert!(other.is_ok(), "another address is not held up");
}
