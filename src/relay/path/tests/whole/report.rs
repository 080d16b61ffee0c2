//! The fleet report (`hawser clusters`) through the relay's request path: the same token check
//! and failed-authentication limit as a cluster's requests, then the admin rule.

use http::{Method, StatusCode};
use serde_json::Value;

use super::support::*;
use super::{body_of, relay_line};
use crate::overview::{Overview, PATH};

#[tokio::test]
async fn an_admin_gets_every_cluster_and_its_agents_and_a_cluster_caller_a_403() {
    let world = World::new().await;
    let agent = world.agent("dev", "dev", "idp.pem");
    let _session = world.register("dev", &agent);

    let resp = world
        .send(request(Method::GET, PATH, Some(&world.token(USER, "dev"))))
        .await;
    assert_eq!(
        resp.status(),
        StatusCode::FORBIDDEN,
        "alice reaches clusters, is no admin"
    );
    let status: Value = serde_json::from_slice(&body_of(resp).await).unwrap();
    assert_eq!(
        (status["kind"].as_str(), status["code"].as_u64()),
        (Some("Status"), Some(403))
    );
    let message = status["message"].as_str().unwrap();
    assert!(
        message.contains("\"alice\"") && message.contains("admin = true"),
        "{message}"
    );
    let refused = relay_line(&world, PATH);
    assert_eq!(
        (refused["status"].as_u64(), refused["caller"].as_str()),
        (Some(403), Some(USER))
    );

    let resp = world
        .send(request(Method::GET, PATH, Some(&world.token(ADMIN, "dev"))))
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let overview: Overview = serde_json::from_slice(&body_of(resp).await).unwrap();
    assert_eq!(overview.relay, RELAY);
    let clusters: Vec<(&str, Vec<String>)> = overview
        .clusters
        .iter()
        .map(|c| {
            let agents = c
                .agents
                .iter()
                .map(|a| format!("{} on {} over {}", a.agent, a.relay, a.transport))
                .collect();
            (c.name.as_str(), agents)
        })
        .collect();
    let dev = vec![format!("{INSTANCE} on {RELAY} over memory")];
    assert_eq!(clusters, [("dev", dev), ("idle", vec![]), ("rogue", vec![])]);
    assert_eq!(
        overview.relays.len(),
        1,
        "a relay of its own lists itself: {:?}",
        overview.relays
    );
    let me = &overview.relays[0];
    assert_eq!(
        (me.name.as_str(), me.peer.as_deref(), me.draining),
        (RELAY, None, false)
    );
    let lines: Vec<Value> = world
        .relay_audit()
        .into_iter()
        .filter(|line| line["path"] == PATH && line["status"] == 200)
        .collect();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(
        (lines[0]["caller"].as_str(), lines[0]["cluster"].as_str()),
        (Some(ADMIN), None)
    );
    assert!(world.apiserver.seen().is_empty(), "the report reaches no cluster");
}

#[tokio::test]
async fn failed_authentications_at_the_report_are_charged_to_the_source() {
    let world = World::new().await;
    for _ in 0..FAILURES_PER_MINUTE {
        let resp = world.send(request(Method::GET, PATH, Some("not-a-token"))).await;
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    }
    // The source's budget is spent: even an admin's good token from there waits, and so does a
    // cluster's request, since both paths share the limit.
    let resp = world
        .send(request(Method::GET, PATH, Some(&world.token(ADMIN, "dev"))))
        .await;
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    let resp = world
        .send(request(
            Method::GET,
            "/clusters/dev/api",
            Some(&world.token(USER, "dev")),
        ))
        .await;
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    let other = std::net::SocketAddr::from(([192, 0, 2, 99], 40000));
    let resp = world
        .send_from(other, request(Method::GET, PATH, Some(&world.token(ADMIN, "dev"))))
        .await;
    assert_eq!(resp.status(), StatusCode::OK, "another source is not charged");
}

#[tokio::test]
async fn the_report_answers_get_only() {
    let world = World::new().await;
    let resp = world
        .send(request(Method::POST, PATH, Some(&world.token(ADMIN, "dev"))))
        .await;
    assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
}
