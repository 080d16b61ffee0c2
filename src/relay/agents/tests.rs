//! The agent listener: tokens, and how it treats attempts it cannot take
//! (real quinn and rustls on 127.0.0.1).

use std::net::SocketAddr;
use std::time::Instant;

use super::*;
use crate::config::TunnelConfig;
use crate::proto::Accepts;
use crate::relay::clusters::ClusterTable;
use crate::tls::RelayTrust;
use crate::tunnel::DialError;

mod gone;
mod probe;
mod tcp;

/// A relay agent listener on 127.0.0.1 that knows cluster `c` (token `token-c`, relay
/// assertions from `https://relay/assertions`), and the trust an agent needs for it.
struct Relay {
    addr: SocketAddr,
    stats: Arc<ListenerStats>,
    trust: RelayTrust,
    stop: watch::Sender<bool>,
    sessions: Arc<Sessions>,
    dir: tempfile::TempDir,
}

const ASSERTIONS: &str = "https://relay/assertions";

fn relay(max_handshakes: usize) -> Relay {
    relay_with(Arc::new(Semaphore::new(max_handshakes)), 0)
}

/// A relay whose handshake permits are `handshakes`, sending a Retry first once fewer than
/// `retry_below_free` of them are free.
fn relay_with(handshakes: Arc<Semaphore>, retry_below_free: usize) -> Relay {
    relay_full(handshakes, retry_below_free, 30, 64)
}

fn relay_full(
    handshakes: Arc<Semaphore>,
    retry_below_free: usize,
    hello_failures_per_minute: u32,
    unproven_per_source: usize,
) -> Relay {
    let (dir, cert, endpoint) = relay_endpoint();
    let addr = endpoint.local_addr().unwrap();
    let digest = crate::relay::token_digest_hex("token-c");
    let (stop, stopping) = watch::channel(false);
    let stats = Arc::new(ListenerStats::default());
    let audit_config = crate::audit::AuditConfig {
        output: dir.path().join("audit.log").display().to_string(),
    };
    let sessions = Arc::new(Sessions {
        clusters: Arc::new(Clusters::new(ClusterTable::of_tokens([("c", digest.as_str())]))),
        registry: Registry::new(),
        relay: "relay-test".to_owned(),
        assertion_issuer: Some(ASSERTIONS.to_owned()),
        proven_receive_window: VarInt::MAX,
        hello_failures: AuthFailures::new(hello_failures_per_minute),
        unproven: Arc::default(),
        unproven_per_source,
        audit: crate::audit::AuditLog::open(&audit_config, "relay", "relay-test").unwrap(),
        refusal_log: RefusalLog::default(),
        tunnel: TunnelConfig::default(),
        fleet: false,
        draining: tokio::sync::watch::Sender::new(false),
    });
    let listener = Listener {
        endpoint,
        handshakes,
        retry_below_free,
        stats: stats.clone(),
        sessions: sessions.clone(),
        tasks: tokio_util::task::TaskTracker::new(),
    };
    tokio::spawn(serve(listener, stopping));
    Relay {
        addr,
        stats,
        trust: RelayTrust::load(Some(&cert), &[]).unwrap(),
        stop,
        sessions,
        dir,
    }
}

/// A relay's QUIC endpoint on 127.0.0.1 with a fresh self-signed certificate (in the directory).
fn relay_endpoint() -> (tempfile::TempDir, std::path::PathBuf, quinn::Endpoint) {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("relay.crt"), dir.path().join("relay.key"));
    crate::tls::ensure_self_signed(&cert, &key, &["localhost".to_owned()]).unwrap();
    let tls = crate::tls::server_config(&cert, &key, &[crate::proto::ALPN]).unwrap();
    let endpoint = tunnel::relay_endpoint(
        ([127, 0, 0, 1], 0).into(),
        tls,
        &TunnelConfig::default(),
        crate::cid::ServerId::from_instance("relay"),
        tunnel::reset::reset_key(
            &crate::tls::load_key(&key).unwrap(),
            crate::cid::ServerId::from_instance("relay"),
            "relay",
        ),
    )
    .unwrap();
    (dir, cert, endpoint)
}

/// The hello an agent of cluster `c` sends.
fn hello(instance: &str) -> Hello {
    Hello {
        link: 0,
        held: Vec::new(),
        probe: false,
        cluster: "c".into(),
        token: "token-c".into(),
        instance: instance.into(),
        accepts: Accepts::Assertion {
            issuer: ASSERTIONS.into(),
        },
    }
}

impl Relay {
    /// Dials as an agent would, with `deadline` for the QUIC handshake.
    async fn dial(&self, deadline: Duration) -> Result<quinn::Connection, DialError> {
        let endpoint = tunnel::agent_endpoint(&self.trust, &TunnelConfig::default(), self.addr).unwrap();
        tunnel::dial(&endpoint, self.addr, "localhost", deadline).await
    }

    /// Dials and says `hello`; the welcome, or why the relay closed the connection.
    async fn say(&self, hello: &Hello) -> (quinn::Connection, Result<Welcome, quinn::ConnectionError>) {
        let connection = self.dial(Duration::from_secs(10)).await.unwrap();
        let mut control = tunnel::join(connection.open_bi().await.unwrap());
        proto::write_frame(&mut control, hello).await.unwrap();
        let answer = tokio::time::timeout(Duration::from_secs(10), proto::read_frame::<_, Welcome>(&mut control))
            .await
            .expect("an answer within 10 s");
        let answer = match answer {
            Ok(welcome) => Ok(welcome),
            Err(_) => Err(tokio::time::timeout(Duration::from_secs(10), connection.closed())
                .await
                .expect("closed within 10 s")),
        };
        (connection, answer)
    }

    /// Dials, says hello for cluster `c` and waits for the welcome.
    async fn register(&self) -> quinn::Connection {
        let (connection, welcome) = self.say(&hello("agent-1")).await;
        welcome.expect("welcomed");
        connection
    }

    /// The audit lines written so far.
    fn audit_lines(&self) -> Vec<serde_json::Value> {
        self.sessions.audit.flush();
        std::fs::read_to_string(self.dir.path().join("audit.log"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

/// The application close code and reason of a refused hello.
fn refusal(answer: Result<Welcome, quinn::ConnectionError>) -> (u32, String) {
    match answer {
        Err(quinn::ConnectionError::ApplicationClosed(close)) => (
            u32::try_from(close.error_code.into_inner()).unwrap(),
            String::from_utf8_lossy(&close.reason).into_owned(),
        ),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// Dials with a short deadline and asserts nobody answered: a refusal would come back at once
/// and grow the agent's backoff, while an unanswered attempt is retransmitted by the agent's
/// QUIC stack until a relay takes it.
async fn assert_unanswered(relay: &Relay, why: &str) {
    let started = Instant::now();
    let deadline = Duration::from_millis(700);
    let outcome = relay.dial(deadline).await;
    assert!(
        matches!(outcome, Err(DialError::Timeout(_))),
        "{why}: expected no answer, got {outcome:?}"
    );
    assert!(started.elapsed() >= deadline);
}

#[tokio::test]
async fn stopping_closes_tunnels_and_leaves_new_attempts_unanswered_not_refused() {
    let relay = relay(MAX_HANDSHAKES);
    let tunnel = relay.register().await;
    relay.stop.send(true).unwrap();
    let reason = tokio::time::timeout(Duration::from_secs(10), tunnel.closed())
        .await
        .expect("the tunnel closed within 10 s");
    assert!(
        matches!(&reason, quinn::ConnectionError::ApplicationClosed(c) if c.error_code == close_code::SHUTDOWN.into()),
        "closed with the shutdown code: {reason}"
    );
    assert_unanswered(&relay, "a dial at a stopping relay").await;
}

#[tokio::test]
async fn beyond_the_handshake_limit_an_attempt_is_left_to_retry_not_refused() {
    assert_unanswered(&relay(0), "a dial beyond the handshake limit").await;
}

#[tokio::test]
async fn an_ignored_attempt_gets_through_once_a_handshake_permit_frees() {
    let permits = Arc::new(Semaphore::new(0));
    let relay = relay_with(permits.clone(), 0);
    let stats = relay.stats.clone();
    let started = Instant::now();
    let dial = tokio::spawn(async move { relay.dial(Duration::from_secs(8)).await.map(|_| ()) });
    // Wait until the first packet has been ignored (the agent's stack resends it about 1 s after
    // the dial), then free a permit.
    tokio::time::timeout(Duration::from_secs(5), async {
        while stats.ignored.load(Ordering::Relaxed) == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the first attempt reached the listener and was ignored within 5 s");
    let freed_at = started.elapsed();
    permits.add_permits(1);
    let outcome = dial.await.unwrap();
    let took = started.elapsed();
    outcome.expect("the same dial completes once a permit is free");
    assert!(
        took >= freed_at,
        "it cannot have completed before the permit existed: {took:?} < {freed_at:?}"
    );
}

#[tokio::test]
async fn a_quiet_relay_skips_the_retry_and_a_busy_one_validates_addresses_first() {
    let count = |relay: &Relay| {
        let (retried, _, accepted) = relay.stats.snapshot();
        (retried, accepted)
    };

    // Four permits, Retry once fewer than three are free.
    let permits = Arc::new(Semaphore::new(4));
    let relay = relay_with(permits.clone(), 3);
    relay.register().await;
    assert_eq!(count(&relay), (0, 1), "quiet: no Retry, one handshake");
    // Two handshakes in progress (as far as the listener can tell): now a Retry comes first.
    let held = permits.clone().acquire_many_owned(2).await.unwrap();
    relay.register().await;
    assert_eq!(count(&relay), (1, 2), "busy: a Retry, then the handshake");
    drop(held);
}

#[tokio::test]
async fn an_unproven_connection_can_make_the_relay_hold_a_few_kib_at_most() {
    // A relay endpoint that accepts and then never reads: what can the peer push into it?
    let (_dir, cert, endpoint) = relay_endpoint();
    let addr = endpoint.local_addr().unwrap();
    let held = tokio::spawn(async move {
        let connection = endpoint.accept().await.unwrap().await.unwrap();
        connection.closed().await;
    });
    let trust = RelayTrust::load(Some(&cert), &[]).unwrap();
    let client = tunnel::agent_endpoint(&trust, &TunnelConfig::default(), addr).unwrap();
    let connection = tunnel::dial(&client, addr, "localhost", Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(connection.max_datagram_size(), None, "no datagrams to buffer");
    let (mut send, _recv) = connection.open_bi().await.unwrap();
    let chunk = vec![b'x'; 64 * 1024];
    let mut accepted = 0;
    // The finding: 4 MiB per stream were accepted. Now writes stall at the connection window.
    while let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(500), send.write(&chunk)).await {
        accepted += n;
        assert!(
            accepted <= 1024 * 1024,
            "the relay kept taking bytes from an unproven peer"
        );
    }
    assert!(
        accepted <= tunnel::UNPROVEN_RECEIVE_WINDOW as usize,
        "{accepted} bytes accepted before the hello"
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(500), connection.open_bi())
            .await
            .is_err(),
        "a second stream (beyond the control stream) is not granted"
    );
    connection.close(0u32.into(), b"done");
    held.abort();
}

#[tokio::test]
async fn a_proven_agent_gets_the_configured_windows() {
    let relay = relay(MAX_HANDSHAKES);
    let agent = relay.register().await;
    let session = relay.sessions.registry.pick("c").expect("registered");
    // The relay opens a stream (as for a request) and never reads the answer.
    let crate::transport::Tunnel::Quic(connection) = &session.connection else {
        panic!("a QUIC session");
    };
    let (mut to_agent, _from_agent) = connection.open_bi().await.unwrap();
    to_agent.write_all(b"x").await.unwrap();
    let (mut send, _recv) = agent.accept_bi().await.unwrap();
    let chunk = vec![b'x'; 64 * 1024];
    let mut accepted = 0;
    while accepted < 1024 * 1024 {
        match tokio::time::timeout(Duration::from_secs(2), send.write(&chunk)).await {
            Ok(Ok(n)) => accepted += n,
            _ => break,
        }
    }
    assert!(
        accepted >= 1024 * 1024,
        "only {accepted} bytes before the relay read any"
    );
}

#[tokio::test]
async fn refused_hellos_are_budgeted_per_source_then_ignored() {
    let relay = relay_full(Arc::new(Semaphore::new(MAX_HANDSHAKES)), 0, 3, 64);
    let mut wrong = hello("guesser");
    wrong.token = "guess".into();
    for _ in 0..3 {
        let (_, answer) = relay.say(&wrong).await;
        assert_eq!(refusal(answer).0, close_code::REFUSED);
    }
    assert_unanswered(&relay, "a source that spent its hello failures").await;
    assert!(relay.stats.throttled.load(Ordering::Relaxed) > 0);
}

#[tokio::test]
async fn a_hello_of_another_trust_model_is_refused_naming_both() {
    let relay = relay(MAX_HANDSHAKES);
    let mut other = hello("agent-1");
    other.accepts = Accepts::CallerToken {
        audiences: vec!["hawser".into()],
    };
    let (_, answer) = relay.say(&other).await;
    let (code, reason) = refusal(answer);
    assert_eq!(code, close_code::MISMATCH);
    assert!(
        reason.contains(ASSERTIONS) && reason.contains("callers' own tokens") && reason.contains("hawser"),
        "{reason}"
    );
    assert!(relay.sessions.registry.pick("c").is_none(), "never routed to");
}

#[tokio::test]
async fn an_agent_of_another_wire_version_is_told_both() {
    let relay = relay(MAX_HANDSHAKES);
    let connection = relay.dial(Duration::from_secs(10)).await.unwrap();
    let (mut send, _recv) = connection.open_bi().await.unwrap();
    send.write_all(b"HWSR\x02\x00\x02{}").await.unwrap();
    let closed = tokio::time::timeout(Duration::from_secs(10), connection.closed())
        .await
        .unwrap();
    let (code, reason) = refusal(Err(closed));
    assert_eq!(code, close_code::BAD_HELLO);
    assert_eq!(
        reason,
        format!("the peer speaks wire version 2; this build speaks {}", proto::VERSION)
    );
}

#[tokio::test]
async fn an_instance_joining_beside_another_is_on_record() {
    let relay = relay(MAX_HANDSHAKES);
    let (_first, welcome) = relay.say(&hello("agent-1")).await;
    welcome.unwrap();
    let (_second, welcome) = relay.say(&hello("agent-2")).await;
    welcome.unwrap();
    let registered: Vec<_> = relay
        .audit_lines()
        .into_iter()
        .filter(|l| l["event"] == "agent_registered")
        .collect();
    assert_eq!(registered.len(), 2);
    assert_eq!(registered[0]["agent"], "agent-1");
    assert!(registered[0].get("beside").is_none());
    assert_eq!(registered[1]["agent"], "agent-2");
    assert_eq!(registered[1]["beside"], serde_json::json!(["agent-1"]));
    assert!(registered[1]["peer"].as_str().unwrap().starts_with("127.0.0.1:"));
}

/// Log output of the relay judging hostile hellos and a hostile close reason, in `format`.
fn hostile_session_logs(format: crate::cli::LogFormat) -> String {
    crate::telemetry::tests::capture(format, || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let relay = relay(MAX_HANDSHAKES);
            let forged = "x\n2026-01-01T00:00:00Z  INFO agent registered cluster=prod";
            let mut bad_name = hello(forged);
            bad_name.token = "wrong".into();
            let (_, answer) = relay.say(&bad_name).await;
            assert_eq!(
                refusal(answer).0,
                close_code::BAD_HELLO,
                "a name with a newline is not a name"
            );
            let mut bad_cluster = hello("agent-1");
            bad_cluster.cluster = forged.into();
            let (_, answer) = relay.say(&bad_cluster).await;
            assert_eq!(refusal(answer).0, close_code::BAD_HELLO);
            let agent = relay.register().await;
            agent.close(0u32.into(), forged.as_bytes());
            let session = relay.sessions.registry.pick("c");
            if let Some(crate::transport::Tunnel::Quic(connection)) = session.map(|s| s.connection) {
                connection.closed().await;
            }
            // The relay logs the departure after the close reaches it (10 s: a busy machine).
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            while !relay.audit_lines().iter().any(|l| l["event"] == "agent_gone")
                && tokio::time::Instant::now() < deadline
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
    })
}

#[test]
fn hostile_hello_fields_and_close_reasons_never_forge_a_log_line() {
    let text = hostile_session_logs(crate::cli::LogFormat::Text);
    assert!(text.contains("agent gone"), "{text}");
    for line in text.lines() {
        assert!(!line.starts_with("2026-01-01"), "a forged line: {line}\n{text}");
    }
    assert!(
        text.contains("x\\n2026-01-01"),
        "the hostile value is shown escaped: {text}"
    );
    let json = hostile_session_logs(crate::cli::LogFormat::Json);
    for line in json.lines() {
        let _: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
    }
}
