use http::StatusCode;

use crate::telemetry::metrics::Values;

use super::*;

#[test]
fn each_refusal_has_its_status_and_only_credential_failures_are_charged() {
    let c = || "prod".to_owned();
    let cases = [
        (Refusal::Connect, StatusCode::METHOD_NOT_ALLOWED, false),
        (Refusal::MalformedPath, StatusCode::BAD_REQUEST, false),
        (Refusal::UnknownCluster(c()), StatusCode::NOT_FOUND, false),
        (
            Refusal::Auth(AuthError::ProviderUnavailable("down".into())),
            StatusCode::SERVICE_UNAVAILABLE,
            false,
        ),
        (Refusal::Auth(AuthError::Missing), StatusCode::UNAUTHORIZED, true),
        (
            Refusal::BoundElsewhere {
                cluster: c(),
                other: "dev".into(),
            },
            StatusCode::UNAUTHORIZED,
            true,
        ),
        (
            Refusal::Forbidden {
                cluster: c(),
                user: "u".into(),
            },
            StatusCode::FORBIDDEN,
            false,
        ),
        (Refusal::NotAdmin { user: "u".into() }, StatusCode::FORBIDDEN, false),
        (
            Refusal::ReportMethod(http::Method::POST),
            StatusCode::METHOD_NOT_ALLOWED,
            false,
        ),
        (
            Refusal::SourceThrottled(Duration::from_secs(7)),
            StatusCode::TOO_MANY_REQUESTS,
            false,
        ),
        (Refusal::Offline(c()), StatusCode::SERVICE_UNAVAILABLE, false),
        (
            Refusal::PeerUnreachable {
                cluster: c(),
                why: "relay-2: timed out".into(),
            },
            StatusCode::SERVICE_UNAVAILABLE,
            false,
        ),
        (Refusal::RegistryUnread(c()), StatusCode::SERVICE_UNAVAILABLE, false),
        (
            Refusal::TunnelLost {
                cluster: c(),
                why: "lost".into(),
            },
            StatusCode::SERVICE_UNAVAILABLE,
            false,
        ),
        (
            Refusal::AgentShutdown { cluster: c(), code: 3 },
            StatusCode::SERVICE_UNAVAILABLE,
            false,
        ),
        (
            Refusal::NoAnswer {
                cluster: c(),
                why: "reset".into(),
            },
            StatusCode::BAD_GATEWAY,
            false,
        ),
        (
            Refusal::CannotVouch("no key".into()),
            StatusCode::INTERNAL_SERVER_ERROR,
            false,
        ),
    ];
    for (refusal, code, charged) in cases {
        let text = refusal.to_string();
        assert_eq!(refusal.is_unauthenticated(), charged, "{text}");
        let status = refusal.status();
        assert_eq!(status.code, code, "{text}");
        // Token errors say what they are about ("Unauthorized: ...", "cannot check the token: ...").
        assert!(
            status.message.ends_with(&text),
            "the Status says what the error says: {text}"
        );
    }
    let throttled = Refusal::SourceThrottled(Duration::from_secs(7)).status();
    assert_eq!(throttled.retry_after_secs, Some(7));
}

/// One refusal of each kind; the match below fails to compile when a kind is added, so that
/// it gets a sample here too.
fn one_of_each() -> Vec<Refusal> {
    let c = || "prod".to_owned();
    let all = vec![
        Refusal::Connect,
        Refusal::NoIssuer,
        Refusal::NoAssertions,
        Refusal::NotAClusterPath("/x".into()),
        Refusal::Undecodable,
        Refusal::MalformedPath,
        Refusal::UnknownCluster(c()),
        Refusal::SourceThrottled(Duration::from_secs(1)),
        Refusal::Auth(AuthError::Missing),
        Refusal::Auth(AuthError::ProviderUnavailable("down".into())),
        Refusal::Forbidden {
            cluster: c(),
            user: "u".into(),
        },
        Refusal::NotAdmin { user: "u".into() },
        Refusal::ReportMethod(http::Method::POST),
        Refusal::CannotReport("x".into()),
        Refusal::NotForCluster {
            cluster: c(),
            audience: "a".into(),
        },
        Refusal::AlsoGoodElsewhere {
            cluster: c(),
            other: "dev".into(),
            audience: "a".into(),
        },
        Refusal::BoundElsewhere {
            cluster: c(),
            other: "dev".into(),
        },
        Refusal::CannotVouch("x".into()),
        Refusal::Offline(c()),
        Refusal::CallerBusy {
            user: "u".into(),
            limit: 1,
        },
        Refusal::Saturated {
            cluster: c(),
            wait: Duration::from_secs(1),
        },
        Refusal::Unreachable {
            cluster: c(),
            error: StreamError::Reset(1),
        },
        Refusal::Unsendable(wire::HeadError::Ended),
        Refusal::AgentShutdown { cluster: c(), code: 3 },
        Refusal::PeerUnreachable {
            cluster: c(),
            why: "x".into(),
        },
        Refusal::RegistryUnread(c()),
        Refusal::TunnelLost {
            cluster: c(),
            why: "x".into(),
        },
        Refusal::NoAnswer {
            cluster: c(),
            why: "x".into(),
        },
        Refusal::UnaskedUpgrade(c()),
        Refusal::Miswired("x"),
        Refusal::NoLogin,
    ];
    let mut kinds = std::collections::HashSet::new();
    for refusal in &all {
        let kind = match refusal {
            Refusal::Connect => 0,
            Refusal::NoIssuer => 1,
            Refusal::NoAssertions => 2,
            Refusal::NotAClusterPath(_) => 3,
            Refusal::Undecodable => 4,
            Refusal::MalformedPath => 5,
            Refusal::UnknownCluster(_) => 6,
            Refusal::SourceThrottled(_) => 7,
            Refusal::Auth(_) => 8,
            Refusal::Forbidden { .. } => 9,
            Refusal::NotAdmin { .. } => 10,
            Refusal::ReportMethod(_) => 11,
            Refusal::CannotReport(_) => 12,
            Refusal::NotForCluster { .. } => 13,
            Refusal::AlsoGoodElsewhere { .. } => 14,
            Refusal::BoundElsewhere { .. } => 15,
            Refusal::CannotVouch(_) => 16,
            Refusal::Offline(_) => 17,
            Refusal::CallerBusy { .. } => 18,
            Refusal::Saturated { .. } => 19,
            Refusal::Unreachable { .. } => 20,
            Refusal::Unsendable(_) => 21,
            Refusal::AgentShutdown { .. } => 22,
            Refusal::PeerUnreachable { .. } => 23,
            Refusal::NoAnswer { .. } => 24,
            Refusal::UnaskedUpgrade(_) => 25,
            Refusal::Miswired(_) => 26,
            Refusal::RegistryUnread(_) => 27,
            Refusal::TunnelLost { .. } => 28,
            Refusal::NoLogin => 29,
        };
        kinds.insert(kind);
    }
    assert_eq!(kinds.len(), 30, "a sample of every kind of refusal");
    all
}

#[test]
fn every_reason_is_some_refusals_and_in_the_docs_at_the_relay() {
    let given: Vec<Reason> = one_of_each().iter().map(Refusal::reason).collect();
    for reason in Reason::ALL {
        assert!(given.contains(reason), "no refusal has the reason {reason:?}");
    }
    crate::telemetry::metrics::tests::documented::<Reason>("relay");
}
