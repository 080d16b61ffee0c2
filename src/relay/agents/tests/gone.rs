//! Every end of a registered session is on record once, as an `agent_gone` event with its reason.

use super::*;

impl Relay {
    /// Registers `instance` of cluster `c` over QUIC, keeping its control stream (to retire the
    /// tunnel on); the connection, the stream and the session id.
    async fn register_as(&self, instance: &str) -> (quinn::Connection, tunnel::Stream, u64) {
        let connection = self.dial(Duration::from_secs(10)).await.unwrap();
        let mut control = tunnel::join(connection.open_bi().await.unwrap());
        proto::write_frame(&mut control, &hello(instance)).await.unwrap();
        let welcome = tokio::time::timeout(Duration::from_secs(10), proto::read_frame::<_, Welcome>(&mut control))
            .await
            .expect("a welcome within 10 s")
            .expect("welcomed");
        (connection, control, welcome.session)
    }

    /// The `agent_gone` reasons by session once there are `n` of them; fails after 10 s.
    async fn gone(&self, n: usize) -> Vec<(u64, String)> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let gone: Vec<(u64, String)> = self
                .audit_lines()
                .into_iter()
                .filter(|l| l["event"] == "agent_gone")
                .map(|l| (l["session"].as_u64().unwrap(), l["reason"].as_str().unwrap().to_owned()))
                .collect();
            if gone.len() >= n || Instant::now() > deadline {
                return gone;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_end_of_a_quic_session_is_on_record_once() {
    let relay = relay(MAX_HANDSHAKES);
    let (_replaced, _c1, replaced) = relay.register_as("agent-1").await;
    let (_replacing, _c2, shut_down) = relay.register_as("agent-1").await;
    let (_retiring, mut control, retired) = relay.register_as("agent-2").await;
    let (lost, _c4, lost_id) = relay.register_as("agent-3").await;

    proto::write_frame(&mut control, &proto::AgentNotice::Retire)
        .await
        .unwrap();
    lost.close(0u32.into(), b"agent pod deleted");
    let before_stop = relay.gone(3).await;
    let reason = |of: u64, gone: &[(u64, String)]| {
        let reasons: Vec<&String> = gone.iter().filter(|(s, _)| *s == of).map(|(_, r)| r).collect();
        assert_eq!(reasons.len(), 1, "session {of} gone once: {gone:?}");
        reasons[0].clone()
    };
    assert!(reason(replaced, &before_stop).contains("replaced"), "{before_stop:?}");
    assert!(reason(retired, &before_stop).starts_with("retired"), "{before_stop:?}");
    assert!(
        reason(lost_id, &before_stop).contains("agent pod deleted"),
        "{before_stop:?}"
    );
    // The retired tunnel is still open (what it carries goes on), but routes nothing new.
    assert_eq!(relay.sessions.registry.pick("c").map(|s| s.id), Some(shut_down));

    // The relay stops: the last session ends, and the retired tunnel's end adds no second event.
    relay.stop.send(true).unwrap();
    let all = relay.gone(4).await;
    assert_eq!(reason(shut_down, &all), "relay shutting down");
    assert_eq!(all.len(), 4, "{all:?}");
    reason(retired, &all);
}
