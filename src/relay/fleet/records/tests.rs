use super::*;

fn session(since: &str) -> Vec<u8> {
    serde_json::to_vec(&SessionRecord {
        since: since.into(),
        transport: "quic".into(),
        protocol: 3,
    })
    .unwrap()
}

fn relay(peer: &str, draining: bool) -> Vec<u8> {
    serde_json::to_vec(&RelayRecord {
        peer: peer.into(),
        protocol: 3,
        started: "2026-12-01T00:00:00.000Z".into(),
        draining,
    })
    .unwrap()
}

#[test]
fn keys_round_trip_and_anything_else_is_ignored() {
    let keys = Keys::new("/hawser");
    assert_eq!(
        keys.parse(keys.relay("relay-0").as_bytes()),
        Some(Key::Relay("relay-0".into()))
    );
    assert_eq!(
        keys.parse(keys.session("prod", "relay-0", "agent-1").as_bytes()),
        Some(Key::Session("prod".into(), "relay-0".into(), "agent-1".into()))
    );
    for other in [
        "/hawser-other/relays/r",
        "/hawser/relays/r/extra",
        "/hawser/sessions/Prod/r/a",
        "/hawser/sessions/prod/r",
        "/hawser/sessions/prod/r/a b",
        "/hawser/unknown/x",
        "/hawser/relays/",
    ] {
        assert_eq!(keys.parse(other.as_bytes()), None, "{other}");
    }
    assert_eq!(keys.parse(&[0xff, 0xfe]), None);
}

#[test]
fn holders_are_other_present_relays_ready_ones_first_and_rotated() {
    let keys = Keys::new("/h");
    let view = View::default();
    let put = |key: String, value: Vec<u8>| assert!(view.put(keys.parse(key.as_bytes()).unwrap(), &value));
    put(keys.relay("r1"), relay("10.0.0.1:1", false));
    put(keys.relay("r2"), relay("10.0.0.2:1", true));
    put(keys.relay("r3"), relay("10.0.0.3:1", false));
    put(keys.relay("me"), relay("10.0.0.9:1", false));
    for r in ["r1", "r2", "r3", "me", "gone"] {
        put(keys.session("prod", r, "agent"), session("t"));
    }
    let names = |turn| {
        view.holders("prod", "me", turn)
            .into_iter()
            .map(|h| h.relay)
            .collect::<Vec<_>>()
    };
    // Not this relay, not one without presence ("gone"); the draining one last.
    assert_eq!(names(0), ["r1", "r3", "r2"]);
    assert_eq!(names(1), ["r3", "r1", "r2"]);
    assert!(view.holders("other", "me", 0).is_empty());

    // A session deleted, then a relay's presence.
    view.delete(keys.parse(keys.session("prod", "r1", "agent").as_bytes()).unwrap());
    view.delete(keys.parse(keys.relay("r3").as_bytes()).unwrap());
    assert_eq!(names(0), ["r2"]);
    // A value that does not parse changes nothing.
    assert!(!view.put(keys.parse(keys.relay("r3").as_bytes()).unwrap(), b"{"));
    assert_eq!(names(0), ["r2"]);
}
