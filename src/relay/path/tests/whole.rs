//! The whole request path in one process, milliseconds each: the relay's steps → an in-memory
//! tunnel → the agent's own stream serving and steps → a fake kube-apiserver over HTTPS.

mod report;
mod support;

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONNECTION, HOST, UPGRADE};
use http::{Method, StatusCode};
use http_body_util::BodyExt;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use self::support::*;
use crate::proto;

const CONFIGMAP_PATH: &str = "/api/v1/namespaces/default/configmaps/cm";

async fn body_of(resp: http::Response<crate::body::Body>) -> Bytes {
    tokio::time::timeout(DEADLINE, resp.into_body().collect())
        .await
        .expect("the whole body within the deadline")
        .unwrap()
        .to_bytes()
}

/// The relay's audit line for the only request to `path`.
fn relay_line(world: &World, path: &str) -> Value {
    let lines: Vec<Value> = world
        .relay_audit()
        .into_iter()
        .filter(|line| line["path"] == path)
        .collect();
    assert_eq!(lines.len(), 1, "one relay audit line for {path}: {lines:?}");
    lines.into_iter().next().unwrap()
}

#[tokio::test]
async fn a_get_reaches_the_apiserver_as_the_callers_identity_and_only_that() {
    let world = World::new().await;
    let agent = world.agent("dev", "dev", "idp.pem");
    let _session = world.register("dev", &agent);
    let mut req = request(
        Method::GET,
        &format!("/clusters/dev{CONFIGMAP_PATH}"),
        Some(&world.token(USER, "dev")),
    );
    for (name, value) in [
        ("impersonate-user", "admin"),
        ("impersonate-group", "system:masters"),
        ("Impersonate-Uid", "0"),
        ("impersonate-extra-scopes", "all"),
    ] {
        req.headers_mut().append(name, value.parse().unwrap());
    }
    let resp = world.send(req).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(body_of(resp).await, CONFIGMAP);

    let seen = world.apiserver.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    let (uri, headers) = (&seen[0].uri, &seen[0].headers);
    assert_eq!(uri.path(), CONFIGMAP_PATH);
    let all = |name: &str| -> Vec<&str> { headers.get_all(name).iter().map(|v| v.to_str().unwrap()).collect() };
    assert_eq!(all("impersonate-user"), [USER]);
    assert_eq!(all("impersonate-group"), ["dev-team"]);
    // The agent's own credential, never the caller's token.
    assert_eq!(all("authorization"), [format!("Bearer {AGENT_CREDENTIAL}").as_str()]);
    let claimed: Vec<_> = headers
        .keys()
        .map(|k| k.as_str())
        .filter(|k| k.starts_with("impersonate-") && !matches!(*k, "impersonate-user" | "impersonate-group"))
        .collect();
    assert!(
        claimed.is_empty(),
        "caller's identity headers reached the apiserver: {claimed:?}"
    );

    let relay = relay_line(&world, CONFIGMAP_PATH);
    let id = relay["request_id"].as_str().unwrap();
    assert!(id.starts_with(RELAY), "{id}");
    let agent_line = agent.audit_line(id).await;
    for line in [&relay, &agent_line] {
        assert_eq!(line["caller"], USER, "{line}");
        assert_eq!(line["status"], 200, "{line}");
        assert_eq!(line["cluster"], "dev", "{line}");
        assert_eq!(line["relay"], RELAY, "{line}");
        assert_eq!(line["agent"], INSTANCE, "{line}");
    }
    assert_eq!(
        (relay["component"].as_str(), agent_line["component"].as_str()),
        (Some("relay"), Some("agent"))
    );
}

#[tokio::test]
async fn no_token_is_a_401_status_that_reaches_no_agent() {
    let world = World::new().await;
    let agent = world.agent("dev", "dev", "idp.pem");
    let _session = world.register("dev", &agent);
    let resp = world
        .send(request(Method::GET, &format!("/clusters/dev{CONFIGMAP_PATH}"), None))
        .await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let status: Value = serde_json::from_slice(&body_of(resp).await).unwrap();
    assert_eq!(
        (status["kind"].as_str(), status["code"].as_u64()),
        (Some("Status"), Some(401))
    );
    assert!(world.apiserver.seen().is_empty());
    assert_eq!(relay_line(&world, CONFIGMAP_PATH)["status"], 401);
    assert!(agent.audited_ids().is_empty(), "the agent saw the request");
}

#[tokio::test]
async fn unknown_offline_and_forbidden_clusters_are_404_503_and_403() {
    let world = World::new().await;
    let agent = world.agent("dev", "dev", "idp.pem");
    let _session = world.register("dev", &agent);
    let cases = [
        ("nope", world.token(USER, "dev"), StatusCode::NOT_FOUND),
        // Configured, but no agent is connected.
        ("idle", world.token(USER, "idle"), StatusCode::SERVICE_UNAVAILABLE),
        ("dev", world.token("mallory", "dev"), StatusCode::FORBIDDEN),
    ];
    for (cluster, token, code) in cases {
        let resp = world
            .send(request(Method::GET, &format!("/clusters/{cluster}/api"), Some(&token)))
            .await;
        assert_eq!(resp.status(), code, "{cluster}");
        let status: Value = serde_json::from_slice(&body_of(resp).await).unwrap();
        assert_eq!(status["kind"], "Status", "{cluster}");
        assert_eq!(status["code"], code.as_u16(), "{cluster}");
    }
    assert!(world.apiserver.seen().is_empty());
}

#[tokio::test]
async fn a_token_the_agent_refuses_is_a_401_charged_to_the_source() {
    let world = World::new().await;
    // The relay trusts the callers' issuer key; this agent trusts another key under its name.
    let rogue = world.agent("rogue", "rogue", "other.pem");
    let _session = world.register("rogue", &rogue);
    let peer: std::net::SocketAddr = "192.0.2.77:5000".parse().unwrap();
    let uri = format!("/clusters/rogue{CONFIGMAP_PATH}");
    for attempt in 1..=FAILURES_PER_MINUTE {
        assert!(
            !world.relay.live.current().auth_failures.is_spent(peer.ip()),
            "attempt {attempt}"
        );
        let resp = world
            .send_from(peer, request(Method::GET, &uri, Some(&world.token(USER, "rogue"))))
            .await;
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "attempt {attempt}");
        assert!(
            !resp.headers().contains_key(proto::AUTH_FAILED_HEADER),
            "the agent's mark is the relay's to read, not the caller's"
        );
    }
    assert!(
        world.relay.live.current().auth_failures.is_spent(peer.ip()),
        "each refusal was charged"
    );
    // The source is now refused before any token is checked, a good one included.
    let resp = world
        .send_from(peer, request(Method::GET, &uri, Some(&world.token(USER, "rogue"))))
        .await;
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(world.apiserver.seen().is_empty());
    // The agent refused each one itself (its lines may land just after the caller's answers).
    eventually("the agent's audit lines of its refusals", || {
        (rogue.audited_ids().len() == FAILURES_PER_MINUTE as usize).then_some(())
    })
    .await;
}

#[tokio::test]
async fn an_upgrade_switches_at_every_hop_and_bytes_cross_both_ways() {
    let world = World::new().await;
    let agent = world.agent("dev", "dev", "idp.pem");
    let _session = world.register("dev", &agent);
    let relay = world.serve_http1().await;
    let tcp = tokio::net::TcpStream::connect(relay).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn.with_upgrades());
    let exec = "/api/v1/namespaces/default/pods/p/exec";
    let req = http::Request::post(format!("/clusters/dev{exec}?command=sh&stdin=true&stdout=true"))
        .header(HOST, "relay.test")
        .header(AUTHORIZATION, format!("Bearer {}", world.token(USER, "dev")))
        .header(CONNECTION, "Upgrade")
        .header(UPGRADE, "SPDY/3.1")
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();
    let resp = tokio::time::timeout(DEADLINE, sender.send_request(req))
        .await
        .expect("a response head within the deadline")
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
    assert_eq!(resp.headers()[UPGRADE], "SPDY/3.1");
    let io = hyper::upgrade::on(resp).await.unwrap();
    let mut io = hyper_util::rt::TokioIo::new(io);
    io.write_all(b"ping").await.unwrap();
    let mut echoed = [0u8; 4];
    tokio::time::timeout(DEADLINE, io.read_exact(&mut echoed))
        .await
        .expect("the echo within the deadline")
        .unwrap();
    assert_eq!(&echoed, b"ping");
    // Ending our side (exec's stdin EOF) still lets the answer to what we sent come back.
    io.write_all(b" and more").await.unwrap();
    io.shutdown().await.unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(DEADLINE, io.read_to_end(&mut rest))
        .await
        .expect("the far side ends once ours did")
        .unwrap();
    assert_eq!(rest, b" and more");

    let seen = world.apiserver.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].uri.path(), exec);
    assert_eq!(seen[0].headers["impersonate-user"], USER);
    // The relay's line is written once the spliced connection is over.
    let line = eventually("the relay's audit line", || {
        world.relay_audit().into_iter().find(|line| line["path"] == exec)
    })
    .await;
    assert_eq!(
        (line["status"].as_u64(), line["upgrade"].as_str()),
        (Some(101), Some("spdy"))
    );
    assert_eq!(
        (line["bytes_in"].as_u64(), line["bytes_out"].as_u64()),
        (Some(13), Some(13))
    );
}

#[tokio::test]
async fn a_caller_leaving_a_watch_closes_it_at_the_apiserver_and_frees_its_slot() {
    let world = World::new().await;
    let agent = world.agent("dev", "dev", "idp.pem");
    let _session = world.register("dev", &agent);
    let uri = "/clusters/dev/api/v1/namespaces/default/pods?watch=true";
    let resp = world
        .send(request(Method::GET, uri, Some(&world.token(USER, "dev"))))
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    // Events flow while the watch is open (chunks may arrive merged).
    let mut events = String::new();
    while events.lines().count() < 2 {
        let chunk = tokio::time::timeout(DEADLINE, body.frame())
            .await
            .expect("an event within the deadline")
            .unwrap()
            .unwrap();
        events.push_str(std::str::from_utf8(&chunk.into_data().unwrap()).unwrap());
    }
    assert!(events.lines().all(|e| e == "{\"type\":\"BOOKMARK\"}"), "{events}");
    let user = USER.to_owned();
    assert_eq!(world.relay.caller_streams.count(&user), 1, "the watch holds a slot");
    drop(body);
    tokio::time::timeout(DEADLINE, world.apiserver.watch_ended.notified())
        .await
        .expect("the apiserver's side of the watch closed");
    eventually("the caller's slot freed", || {
        (world.relay.caller_streams.count(&user) == 0).then_some(())
    })
    .await;
    let id = relay_line(&world, "/api/v1/namespaces/default/pods")["request_id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(agent.audit_line(&id).await["status"], 200);
}

#[tokio::test]
async fn a_reconnect_takes_new_requests_while_the_old_session_finishes_its_own() {
    let world = World::new().await;
    let (old, new) = (
        world.agent("dev-old", "dev", "idp.pem"),
        world.agent("dev-new", "dev", "idp.pem"),
    );
    let first = world.register("dev", &old);
    let slow = "/api/v1/namespaces/default/configmaps/slow";
    let in_flight = world.spawn_send(request(
        Method::GET,
        &format!("/clusters/dev{slow}"),
        Some(&world.token(USER, "dev")),
    ));
    world.apiserver.arrived(slow).await;

    // The same agent instance comes back on a new connection: the old tunnel is closed.
    let _second = world.register("dev", &new);
    let (code, reason) = tokio::time::timeout(DEADLINE, first.served)
        .await
        .expect("the old tunnel closed")
        .unwrap();
    assert_eq!((code, reason.as_str()), (0, "replaced by a newer session"));

    let resp = world
        .send(request(
            Method::GET,
            &format!("/clusters/dev{CONFIGMAP_PATH}"),
            Some(&world.token(USER, "dev")),
        ))
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(body_of(resp).await, CONFIGMAP);
    let fresh = relay_line(&world, CONFIGMAP_PATH)["request_id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(new.audit_line(&fresh).await["status"], 200);
    assert!(
        !old.audited_ids().contains(&fresh),
        "a new request went to the old session"
    );

    world.apiserver.release.notify_one();
    let resp = tokio::time::timeout(DEADLINE, in_flight)
        .await
        .expect("the in-flight request finished")
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(body_of(resp).await, CONFIGMAP);
    let held = relay_line(&world, slow)["request_id"].as_str().unwrap().to_owned();
    assert_eq!(old.audit_line(&held).await["status"], 200);
    assert!(!new.audited_ids().contains(&held));
}

/// A session whose tunnel was closed (an agent closing a duplicate, a tunnel lost) is still
/// registered: a GET that lands on it goes once more on the cluster's other tunnel and is
/// answered; a request with a body is never sent again, and says the tunnel was lost.
#[tokio::test]
async fn a_get_on_a_lost_tunnel_goes_once_more_on_another_and_a_post_does_not() {
    let world = World::new().await;
    let _lost = world.register_closed("dev");
    let agent = world.agent("dev", "dev", "idp.pem");
    let _session = world.register("dev", &agent);
    let token = world.token(USER, "dev");
    // Two sessions picked in turn: of two requests in a row, one lands on the lost tunnel.
    for i in 0..4 {
        let req = request(Method::GET, &format!("/clusters/dev{CONFIGMAP_PATH}"), Some(&token));
        let resp = world.send(req).await;
        assert_eq!(resp.status(), StatusCode::OK, "GET {i}");
    }
    let mut lost = 0;
    for _ in 0..2 {
        let mut req = request(
            Method::POST,
            "/clusters/dev/api/v1/namespaces/default/configmaps",
            Some(&token),
        );
        *req.body_mut() = crate::body::full(Bytes::from_static(b"{}"));
        let resp = world.send(req).await;
        if resp.status() == StatusCode::SERVICE_UNAVAILABLE {
            let body = String::from_utf8_lossy(&body_of(resp).await).into_owned();
            assert!(body.contains("tunnel"), "{body}");
            lost += 1;
        }
    }
    assert_eq!(lost, 1, "the POST that landed on the lost tunnel was not sent again");
}
