//! Probes (`hawser doctor`): judged as hellos, answered, never registered.

use super::*;
use crate::proto::Answer;

/// A probe of cluster `c` under `instance`.
fn probe(instance: &str) -> Hello {
    Hello {
        probe: true,
        ..hello(instance)
    }
}

fn events(relay: &Relay) -> Vec<String> {
    relay
        .audit_lines()
        .iter()
        .filter_map(|l| l["event"].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test]
async fn a_probe_is_welcomed_and_replaces_no_session() {
    let relay = relay(MAX_HANDSHAKES);
    let agent = relay.register().await;
    let registered = relay.sessions.registry.pick("c").expect("the agent's session").id;

    // The same instance and link as the running agent: a hello would replace its session.
    let (prober, answer) = relay.say(&probe("agent-1")).await;
    let welcome = answer.expect("the probe is welcomed");
    assert_eq!((welcome.relay.as_str(), welcome.session), ("relay-test", 0));
    prober.close(0u32.into(), b"probe done");
    let (_io, answer) = relay.tcp(Some(&probe("agent-1"))).await;
    assert!(
        matches!(&answer, Some(Answer::Welcome(w)) if w.session == 0),
        "over TCP too: {answer:?}"
    );

    let session = relay.sessions.registry.pick("c").expect("still registered");
    assert_eq!(session.id, registered, "the agent's session is the one in the registry");
    assert!(agent.close_reason().is_none(), "the agent's tunnel is up");
    let events = events(&relay);
    assert_eq!(
        events.iter().filter(|e| *e == "agent_registered").count(),
        1,
        "{events:?}"
    );
    assert_eq!(events.iter().filter(|e| *e == "agent_probed").count(), 2, "{events:?}");
    assert!(!events.contains(&"agent_gone".to_owned()), "{events:?}");
}

#[tokio::test]
async fn a_probe_alone_leaves_the_cluster_offline() {
    let relay = relay(MAX_HANDSHAKES);
    let (prober, answer) = relay.say(&probe("doctor")).await;
    answer.expect("welcomed");
    assert!(relay.sessions.registry.pick("c").is_none(), "nothing to route to");
    // The relay waits for the prober to close, then lets the connection go.
    prober.close(0u32.into(), b"probe done");
    assert!(relay.sessions.registry.pick("c").is_none());
}

#[tokio::test]
async fn a_refused_probe_is_charged_as_a_refused_hello() {
    let relay = relay_full(Arc::new(Semaphore::new(MAX_HANDSHAKES)), 0, 2, 64);
    let guess = Hello {
        token: "guess".into(),
        ..probe("doctor")
    };
    let (_, answer) = relay.say(&guess).await;
    assert_eq!(
        refusal(answer),
        (close_code::REFUSED, "unknown cluster or wrong agent token".to_owned())
    );
    let (_, answer) = relay.say(&guess).await;
    assert_eq!(refusal(answer).0, close_code::REFUSED);
    assert_unanswered(&relay, "a source that spent its hello failures on probes").await;
    let (_io, answer) = relay.tcp(Some(&guess)).await;
    assert!(
        matches!(&answer, Some(Answer::Closing(c)) if c.code == close_code::REFUSED),
        "{answer:?}"
    );
}
