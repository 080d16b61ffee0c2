//! Binding the relay's listeners: an address that is taken is one line naming its key.

use std::net::SocketAddr;

use super::*;

/// A relay on `listen` (and `agent_listen`, if any) whose keys and certificate it generates in `dir`.
fn config(dir: &std::path::Path, listen: SocketAddr, agent_listen: Option<SocketAddr>) -> RelayConfig {
    let agent_listen = agent_listen
        .map(|a| format!("agent_listen = \"{a}\"\n"))
        .unwrap_or_default();
    let path = dir.join("relay.toml");
    std::fs::write(
        &path,
        format!(
            r#"listen = "{listen}"
{agent_listen}[tls]
cert_file = "relay.crt"
key_file = "relay.key"
generate_self_signed = true
[issuer]
issuer = "https://relay"
audience = "hawser"
signing_key_file = "issuer.key"
generate = true
[assertions]
issuer = "https://relay/assertions"
signing_key_file = "assertion.key"
generate = true
"#
        ),
    )
    .unwrap();
    crate::config::load(&path).unwrap()
}

/// What the binary prints for the relay's failure to bind.
async fn bind_error(config: RelayConfig) -> String {
    match Relay::bind(config).await {
        Ok(_) => panic!("bound a taken address"),
        Err(e) => format!("{:#}", anyhow::Error::from(e)),
    }
}

#[tokio::test]
async fn a_taken_listener_address_is_one_cause_naming_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = tcp.local_addr().unwrap();
    let in_use = std::net::TcpListener::bind(taken).unwrap_err().to_string();
    assert_eq!(
        bind_error(config(dir.path(), taken, None)).await,
        format!("listen {taken}: {in_use}")
    );

    // The agents' QUIC listener shares the callers' address unless it has one of its own.
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let udp_taken = udp.local_addr().unwrap();
    assert_eq!(
        bind_error(config(dir.path(), udp_taken, None)).await,
        format!("listen (UDP) {udp_taken}: {in_use}")
    );
    let free: SocketAddr = "127.0.0.1:0".parse().unwrap();
    assert_eq!(
        bind_error(config(dir.path(), free, Some(udp_taken))).await,
        format!("agent_listen {udp_taken}: {in_use}")
    );
}
