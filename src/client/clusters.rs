//! `hawser clusters`: asks a relay for every cluster, its connected agents and the relays holding
//! them (the relay answers callers an admin access rule names), and prints a table or the JSON.

use std::path::Path;
use std::time::Duration;

use http::header::{ACCEPT, AUTHORIZATION, HeaderValue};
use http::{Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Limited};

use super::ClientError;
use crate::config::Secret;
use crate::overview::Overview;

/// How long the whole exchange with the relay may take.
const TIMEOUT: Duration = Duration::from_secs(30);
/// The largest answer read (about 10,000 clusters with a few agents each).
const MAX_ANSWER_BYTES: usize = 16 << 20;

/// Asks the relay at `relay` (its base URL) for its overview, as the caller whose token is
/// `token`, trusting the CAs in `ca_file` (else the system's).
pub async fn fetch(relay: &str, ca_file: Option<&Path>, token: &Secret) -> Result<Overview, ClientError> {
    let url = report_url(relay)?;
    let client = crate::forward::https_client(super::relay_tls(ca_file)?, true);
    let bearer = HeaderValue::from_str(&format!("Bearer {}", token.expose()))
        .map_err(|_| ClientError::Usage("the token holds characters no HTTP header can carry".into()))?;
    let mut req = Request::new(crate::body::empty());
    *req.method_mut() = Method::GET;
    *req.uri_mut() = url.clone();
    req.headers_mut().insert(AUTHORIZATION, bearer);
    req.headers_mut()
        .insert(ACCEPT, HeaderValue::from_static("application/json"));
    let exchange = async {
        let resp = client
            .request(req)
            .await
            .map_err(|e| ClientError::Relay(format!("{url}: {}", crate::telemetry::error_chain(&e))))?;
        let status = resp.status();
        let body = Limited::new(resp.into_body(), MAX_ANSWER_BYTES)
            .collect()
            .await
            .map_err(|e| ClientError::Relay(format!("{url}: reading the answer: {e}")))?
            .to_bytes();
        Ok::<_, ClientError>((status, body))
    };
    let (status, body) = tokio::time::timeout(TIMEOUT, exchange)
        .await
        .map_err(|_| ClientError::Relay(format!("{url}: no answer within {TIMEOUT:?}")))??;
    parse_answer(status, &body)
}

/// `{relay}/.well-known/hawser/clusters`, for an `https://` base URL.
fn report_url(relay: &str) -> Result<Uri, ClientError> {
    let relay = relay.trim_end_matches('/');
    let usage = || ClientError::Usage(format!("--relay must be an https:// URL, not {relay}"));
    let url: Uri = format!("{relay}{}", crate::overview::PATH)
        .parse()
        .map_err(|_| usage())?;
    if url.scheme_str() != Some("https") || url.authority().is_none() || url.query().is_some() {
        return Err(usage());
    }
    Ok(url)
}

/// The overview in a 200 answer; otherwise the relay's `Status` as one line: its code and
/// message, as kubectl says them.
fn parse_answer(status: StatusCode, body: &[u8]) -> Result<Overview, ClientError> {
    if status == StatusCode::OK {
        return serde_json::from_slice(body)
            .map_err(|e| ClientError::Relay(format!("the relay's answer is not an overview: {e}")));
    }
    let message = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["message"].as_str().map(|m| format!("{status}: {m}")))
        .unwrap_or_else(|| {
            let text = String::from_utf8_lossy(body);
            let text: String = text.chars().take(200).collect();
            format!("the relay answered {status}: {}", text.trim())
        });
    // One line, whatever the relay wrote.
    Err(ClientError::Relay(
        message.split_whitespace().collect::<Vec<_>>().join(" "),
    ))
}

/// The overview as two tables: a row per agent (`-` and `OFFLINE` for a cluster without one),
/// then a row per relay.
pub fn table(overview: &Overview) -> String {
    let mut agents = vec![row(["CLUSTER", "AGENT", "RELAY", "TRANSPORT", "PROTOCOL", "SINCE"])];
    for cluster in &overview.clusters {
        if cluster.agents.is_empty() {
            agents.push(row([&cluster.name, "-", "OFFLINE", "-", "-", "-"]));
        }
        for a in &cluster.agents {
            let protocol = a.protocol.to_string();
            agents.push(row([
                &cluster.name,
                &a.agent,
                &a.relay,
                &a.transport,
                &protocol,
                &a.since,
            ]));
        }
    }
    let mut relays = vec![row(["RELAY", "PEER", "STATE", "PROTOCOL", "STARTED"])];
    for r in &overview.relays {
        let state = if r.draining { "draining" } else { "serving" };
        let protocol = r.protocol.to_string();
        let peer = r.peer.as_deref().unwrap_or("-");
        relays.push(row([&r.name, peer, state, &protocol, &r.started]));
    }
    format!("{}\n{}", aligned(&agents), aligned(&relays))
}

fn row<const N: usize>(cells: [&str; N]) -> Vec<String> {
    cells.iter().map(|c| (*c).to_owned()).collect()
}

/// Rows in columns three spaces apart, each line without trailing blanks.
fn aligned(rows: &[Vec<String>]) -> String {
    let columns = rows.first().map_or(0, Vec::len);
    let widths: Vec<usize> = (0..columns)
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in rows {
        let mut line = String::new();
        for (cell, width) in r.iter().zip(&widths) {
            line.push_str(cell);
            line.extend(std::iter::repeat_n(' ', width - cell.chars().count() + 3));
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::overview::{Agent, Cluster, Relay};

    fn overview() -> Overview {
        let agent = |agent: &str, relay: &str, transport: &str| Agent {
            agent: agent.into(),
            relay: relay.into(),
            since: "2026-12-01T10:01:00.000Z".into(),
            transport: transport.into(),
            protocol: 3,
        };
        let relay = |name: &str, peer: Option<&str>, draining| Relay {
            name: name.into(),
            peer: peer.map(str::to_owned),
            started: "2026-12-01T10:00:00.000Z".into(),
            draining,
            protocol: 3,
        };
        Overview {
            relay: "relay-0".into(),
            clusters: vec![
                Cluster {
                    name: "alpha".into(),
                    agents: vec![agent("agent-alpha", "relay-0", "quic")],
                },
                Cluster {
                    name: "beta".into(),
                    agents: vec![
                        agent("agent-beta-1", "relay-1", "quic"),
                        agent("agent-beta-2", "relay-1", "tcp"),
                    ],
                },
                Cluster {
                    name: "gamma".into(),
                    agents: vec![],
                },
            ],
            relays: vec![
                relay("relay-0", Some("10.0.0.1:7443"), false),
                relay("relay-1", None, true),
            ],
        }
    }

    #[test]
    fn a_row_per_agent_an_offline_row_per_cluster_without_one_then_the_relays() {
        let expected = "\
CLUSTER   AGENT          RELAY     TRANSPORT   PROTOCOL   SINCE
alpha     agent-alpha    relay-0   quic        3          2026-12-01T10:01:00.000Z
beta      agent-beta-1   relay-1   quic        3          2026-12-01T10:01:00.000Z
beta      agent-beta-2   relay-1   tcp         3          2026-12-01T10:01:00.000Z
gamma     -              OFFLINE   -           -          -

RELAY     PEER            STATE      PROTOCOL   STARTED
relay-0   10.0.0.1:7443   serving    3          2026-12-01T10:00:00.000Z
relay-1   -               draining   3          2026-12-01T10:00:00.000Z
";
        assert_eq!(table(&overview()), expected);
    }

    #[tokio::test]
    async fn a_status_is_its_message_on_one_line_and_an_overview_parses_back() {
        let json = serde_json::to_vec(&overview()).unwrap();
        assert_eq!(parse_answer(StatusCode::OK, &json).unwrap(), overview());
        let forbidden = crate::status::HttpError::forbidden("the fleet is forbidden:\n  User \"bob\"").into_response();
        let body = forbidden.into_body().collect().await.unwrap().to_bytes();
        let err = parse_answer(StatusCode::FORBIDDEN, &body).unwrap_err();
        assert_eq!(err.to_string(), "403 Forbidden: the fleet is forbidden: User \"bob\"");
        let err = parse_answer(StatusCode::BAD_GATEWAY, b"<html>bad gateway</html>").unwrap_err();
        assert_eq!(
            err.to_string(),
            "the relay answered 502 Bad Gateway: <html>bad gateway</html>"
        );
        assert!(parse_answer(StatusCode::OK, b"{}").is_err(), "not an overview");
    }

    #[test]
    fn the_relay_url_is_https_and_the_report_path_goes_after_its_own() {
        assert_eq!(
            report_url("https://relay.example.com/").unwrap(),
            "https://relay.example.com/.well-known/hawser/clusters"
        );
        assert_eq!(
            report_url("https://lb.example.com/hawser").unwrap(),
            "https://lb.example.com/hawser/.well-known/hawser/clusters"
        );
        for bad in [
            "http://relay.example.com",
            "relay.example.com",
            "https://",
            "https://r/?x=1",
        ] {
            assert!(report_url(bad).is_err(), "{bad}");
        }
    }
}
