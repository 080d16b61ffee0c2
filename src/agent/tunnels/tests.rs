use super::*;

#[test]
fn a_draining_relays_refusal_and_a_held_relay_are_redialled_not_backed_off() {
    let closed = |code| {
        SessionError::Dial(tunnel::DialError::Handshake(quinn::ConnectionError::ConnectionClosed(
            quinn::ConnectionClose {
                error_code: code,
                frame_type: None,
                reason: bytes::Bytes::new(),
            },
        )))
    };
    assert!(closed(quinn::TransportErrorCode::CONNECTION_REFUSED).elsewhere());
    assert!(SessionError::SameRelay("relay-0".into()).elsewhere());
    assert!(!closed(quinn::TransportErrorCode::PROTOCOL_VIOLATION).elsewhere());
    assert!(
        !SessionError::Refused {
            code: 2,
            reason: "wrong token".into()
        }
        .elsewhere()
    );
}

#[test]
fn tunnels_claim_distinct_relays_and_avoid_the_one_they_leave() {
    let slots = Slots::default();
    assert!(slots.claim(0, "relay-a", None));
    assert!(!slots.claim(1, "relay-a", None), "held by tunnel 0");
    assert!(slots.claim(1, "relay-b", None));
    // Tunnel 0 moves away from relay-a: neither relay-a nor relay-b will do.
    assert!(!slots.claim(0, "relay-a", Some("relay-a")));
    assert!(!slots.claim(0, "relay-b", Some("relay-a")));
    assert!(slots.claim(0, "relay-c", Some("relay-a")));
    slots.release(1);
    assert!(slots.claim(2, "relay-b", None), "released by tunnel 1");
}
