//! The agent listener: tokens, and how it treats attempts it cannot take
//! (real quinn and rustls on 127.0.0.1).

use std::net::SocketAddr;
use std::time::Instant;

use super::*;
use crate::config::TunnelConfig;
use crate::tls::RelayTrust;
use crate::tunnel::DialError;

#[test]
fn token_of_one_cluster_cannot_serve_another() {
    let a = token_digest_hex("token-a");
    let b = token_digest_hex("token-b");
    let tokens = AgentTokens::new([("a", a.as_str()), ("b", b.as_str())]);
    assert!(tokens.verify("a", "token-a"));
    assert!(!tokens.verify("b", "token-a"));
    assert!(!tokens.verify("a", "token-b"));
    assert!(!tokens.verify("c", "token-a"));
    assert!(tokens.knows("a") && !tokens.knows("c"));
}

/// A relay agent listener on 127.0.0.1 that knows cluster `c` (token `token-c`), and the trust
/// an agent needs for it.
struct Relay {
    addr: SocketAddr,
    stats: Arc<ListenerStats>,
    trust: RelayTrust,
    stop: watch::Sender<bool>,
    _dir: tempfile::TempDir,
}

fn relay(max_handshakes: usize) -> Relay {
    relay_with(Arc::new(Semaphore::new(max_handshakes)), 0)
}

/// A relay whose handshake permits are `handshakes`, sending a Retry first once fewer than
/// `retry_below_free` of them are free.
fn relay_with(handshakes: Arc<Semaphore>, retry_below_free: usize) -> Relay {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("relay.crt"), dir.path().join("relay.key"));
    crate::tls::ensure_self_signed(&cert, &key, &["localhost".to_owned()]).unwrap();
    let tls = crate::tls::server_config(&cert, &key, &[crate::proto::ALPN]).unwrap();
    let endpoint = tunnel::relay_endpoint(([127, 0, 0, 1], 0).into(), tls, &TunnelConfig::default()).unwrap();
    let addr = endpoint.local_addr().unwrap();
    let digest = token_digest_hex("token-c");
    let (stop, stopping) = watch::channel(false);
    let stats = Arc::new(ListenerStats::default());
    let listener = Listener {
        endpoint,
        tokens: Arc::new(AgentTokens::new([("c", digest.as_str())])),
        registry: Registry::new(),
        relay: "relay-test".to_owned(),
        handshakes,
        retry_below_free,
        stats: stats.clone(),
    };
    tokio::spawn(serve(listener, stopping));
    Relay {
        addr,
        stats,
        trust: RelayTrust::load(Some(&cert), &[]).unwrap(),
        stop,
        _dir: dir,
    }
}

impl Relay {
    /// Dials as an agent would, with `deadline` for the QUIC handshake.
    async fn dial(&self, deadline: Duration) -> Result<quinn::Connection, DialError> {
        let endpoint = tunnel::agent_endpoint(&self.trust, &TunnelConfig::default(), self.addr).unwrap();
        tunnel::dial(&endpoint, self.addr, "localhost", deadline).await
    }

    /// Dials, says hello for cluster `c` and waits for the welcome.
    async fn register(&self) -> quinn::Connection {
        let connection = self.dial(Duration::from_secs(10)).await.unwrap();
        let mut control = tunnel::join(connection.open_bi().await.unwrap());
        let hello = Hello {
            cluster: "c".into(),
            token: "token-c".into(),
            instance: "agent-1".into(),
        };
        proto::write_frame(&mut control, &hello).await.unwrap();
        let _: Welcome = tokio::time::timeout(Duration::from_secs(10), proto::read_frame(&mut control))
            .await
            .expect("a welcome within 10 s")
            .unwrap();
        connection
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
