use std::path::Path;

use super::*;

fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("config").join(name)
}

#[test]
fn the_example_configs_load() {
    let relay: RelayConfig = load(&example("relay.toml")).unwrap();
    assert_eq!(relay.clusters[0].name, "local");
    assert!(
        relay.tls.cert_file.is_absolute(),
        "relative paths resolve against the file's directory"
    );
    let agent: AgentConfig = load(&example("agent.toml")).unwrap();
    assert_eq!(agent.cluster, "local");
    assert_eq!(
        agent.relay.ca_file.as_ref(),
        Some(&relay.tls.cert_file),
        "the agent trusts the relay's certificate"
    );
}

#[test]
fn the_example_agent_token_matches_the_relay_digest() {
    let relay: RelayConfig = load(&example("relay.toml")).unwrap();
    let token = std::fs::read_to_string(example("agent-token")).unwrap();
    assert_eq!(
        crate::relay::token_digest_hex(token.trim()),
        relay.clusters[0].agent_token_sha256.all()[0]
    );
}

fn parse_relay(text: &str) -> Result<RelayConfig, ConfigError> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("relay.toml");
    std::fs::write(&path, text).unwrap();
    load(&path)
}

const MINIMAL: &str = r#"
listen = "127.0.0.1:0"
[tls]
cert_file = "c"
key_file = "k"
[issuer]
issuer = "https://relay"
audience = "hawser"
signing_key_file = "i"
[assertions]
issuer = "https://relay/assertions"
signing_key_file = "a"
"#;

#[test]
fn unknown_keys_are_refused() {
    assert!(parse_relay(MINIMAL).is_ok());
    let err = parse_relay(&format!("{MINIMAL}\nlisten_typo = 1"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("listen_typo"), "{err}");
    assert!(!err.contains('\n'), "a config error is one line: {err}");
    let err = parse_relay(&MINIMAL.replace("key_file", "keyfile")).unwrap_err();
    assert!(matches!(err, ConfigError::Parse { .. }), "{err}");
}

#[test]
fn invalid_values_are_refused_at_start() {
    let bad_hash = format!("{MINIMAL}\n[[clusters]]\nname = \"a\"\nagent_token_sha256 = \"abc\"\n");
    assert!(parse_relay(&bad_hash).unwrap_err().to_string().contains("64 hex"));
    let bad_name = format!(
        "{MINIMAL}\n[[clusters]]\nname = \"Bad_Name\"\nagent_token_sha256 = \"{}\"\n",
        "a".repeat(64)
    );
    assert!(parse_relay(&bad_name).unwrap_err().to_string().contains("cluster name"));
    let windows = format!("{MINIMAL}\n[tunnel]\nkeep_alive_secs = 30\nidle_timeout_secs = 10\n");
    assert!(
        parse_relay(&windows)
            .unwrap_err()
            .to_string()
            .contains("idle_timeout_secs")
    );
    let no_stall_bound = format!("{MINIMAL}\n[limits]\nresponse_stall_timeout_secs = 0\n");
    assert!(
        parse_relay(&no_stall_bound)
            .unwrap_err()
            .to_string()
            .contains("response_stall_timeout_secs")
    );
    let stall_bound = format!("{MINIMAL}\n[limits]\nresponse_stall_timeout_secs = 5\n");
    assert_eq!(parse_relay(&stall_bound).unwrap().limits.response_stall_timeout_secs, 5);
    let no_issuer = MINIMAL.split("[issuer]").next().unwrap();
    assert!(
        parse_relay(no_issuer)
            .unwrap_err()
            .to_string()
            .contains("no token issuer")
    );
}

fn parse_agent(relay: &str) -> Result<AgentConfig, ConfigError> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.toml");
    let text = format!(
        r#"
cluster = "local"
token_file = "token"
[relay]
address = "relay.example:443"
{relay}
[[issuers]]
issuer = "https://relay.example"
audiences = ["hawser"]
jwks_url = "https://relay.example/.well-known/jwks.json"
"#
    );
    std::fs::write(&path, text).unwrap();
    load(&path)
}

/// The base64 SHA-256 of nothing: a well-formed pin.
const PIN: &str = "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=";

#[test]
fn the_relay_is_trusted_by_ca_pin_or_both() {
    let ca_only = parse_agent(r#"ca_file = "relay.crt""#).unwrap();
    assert!(ca_only.relay.ca_file.unwrap().is_absolute());
    assert!(ca_only.relay.pinned_key_sha256.is_empty());

    let pin_only = parse_agent(&format!(r#"pinned_key_sha256 = ["{PIN}"]"#)).unwrap();
    assert_eq!(pin_only.relay.ca_file, None);
    assert_eq!(pin_only.relay.pinned_key_sha256.len(), 1);
    assert_eq!(pin_only.relay.pinned_key_sha256[0].to_string(), PIN);

    let both = parse_agent(&format!(
        "ca_file = \"relay.crt\"\npinned_key_sha256 = [\"{PIN}\", \"{}\"]",
        PIN.replace('4', "5")
    ))
    .unwrap();
    assert!(both.relay.ca_file.is_some());
    assert_eq!(both.relay.pinned_key_sha256.len(), 2, "a second pin stages a rotation");
}

#[test]
fn the_relay_must_be_trusted_somehow() {
    for relay in ["", "pinned_key_sha256 = []"] {
        let err = parse_agent(relay).unwrap_err();
        assert!(matches!(err, ConfigError::Invalid { .. }), "{err}");
        let err = err.to_string();
        assert!(
            err.contains("ca_file") && err.contains("pinned_key_sha256") && !err.contains('\n'),
            "{err}"
        );
    }
}

#[test]
fn malformed_pins_are_refused_at_start() {
    let hex = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    for (pin, why) in [
        ("not base64!", "not base64"),
        ("AAAA", "3 bytes"),
        (hex, "that is hex"),
        (&PIN[..43], "not base64"),
    ] {
        let err = parse_agent(&format!(r#"pinned_key_sha256 = ["{PIN}", "{pin}"]"#))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("pinned_key_sha256") && err.contains(why) && err.contains(":6:") && !err.contains('\n'),
            "{pin}: {err}"
        );
    }
}

#[test]
fn secrets_are_masked() {
    let secret = Secret::new("hunter2".into());
    assert_eq!(format!("{secret:?}"), "<redacted>");
    assert_eq!(secret.expose(), "hunter2");
}

#[test]
fn durations_have_units() {
    use std::time::Duration;
    assert_eq!(parse_duration("90s").unwrap(), Duration::from_secs(90));
    assert_eq!(parse_duration("30m").unwrap(), Duration::from_secs(1800));
    assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
    assert_eq!(parse_duration("7d").unwrap(), Duration::from_secs(7 * 86_400));
    for bad in ["1", "h", "0s", "5w", "-1h", "99999999999999999999d"] {
        assert!(parse_duration(bad).is_err(), "{bad}");
    }
}

#[test]
fn the_public_demo_agent_token_is_refused_off_loopback() {
    let demo = format!("\n[[clusters]]\nname = \"local\"\nagent_token_sha256 = \"{DEMO_AGENT_TOKEN_SHA256}\"\n");
    assert!(parse_relay(&format!("{MINIMAL}{demo}")).is_ok(), "fine on loopback");
    let exposed = MINIMAL.replace("127.0.0.1:0", "0.0.0.0:8443");
    let err = parse_relay(&format!("{exposed}{demo}")).unwrap_err().to_string();
    assert!(err.contains("demo token") && err.contains("cluster local"), "{err}");
    let agents_exposed = MINIMAL.replace(
        "listen = \"127.0.0.1:0\"",
        "listen = \"127.0.0.1:0\"\nagent_listen = \"[::]:8443\"",
    );
    assert!(parse_relay(&format!("{agents_exposed}{demo}")).is_err());
    let upper = demo.replace(DEMO_AGENT_TOKEN_SHA256, &DEMO_AGENT_TOKEN_SHA256.to_uppercase());
    assert!(
        parse_relay(&format!("{exposed}{upper}")).is_err(),
        "hex case does not matter"
    );
    let own = demo.replace(DEMO_AGENT_TOKEN_SHA256, &"b".repeat(64));
    assert!(parse_relay(&format!("{exposed}{own}")).is_ok());
}

#[test]
fn every_cluster_has_one_trust_model_the_relay_can_serve() {
    let no_assertions = MINIMAL.split("[assertions]").next().unwrap();
    let cluster = |extra: &str| {
        format!(
            "\n[[clusters]]\nname = \"a\"\nagent_token_sha256 = \"{}\"\n{extra}",
            "a".repeat(64)
        )
    };
    let err = parse_relay(&format!("{no_assertions}{}", cluster("")))
        .unwrap_err()
        .to_string();
    assert!(err.contains("cluster a") && err.contains("[assertions]"), "{err}");
    // A cluster whose agent takes callers' own tokens needs no assertions, but an issuer for its
    // audience, and not the built-in issuer's own (every token it issues would be bound there).
    let err = parse_relay(&format!("{no_assertions}{}", cluster("caller_audience = \"hawser\"")))
        .unwrap_err()
        .to_string();
    assert!(err.contains("built-in issuer's own audience"), "{err}");
    let external =
        "[[issuers]]\nissuer = \"https://idp\"\naudiences = [\"cluster-a\", \"cluster-b\"]\njwks_file = \"k\"\n";
    let ext_relay = no_assertions.replace("[issuer]", &format!("{external}[issuer]"));
    assert!(parse_relay(&format!("{ext_relay}{}", cluster("caller_audience = \"cluster-a\""))).is_ok());
    let err = parse_relay(&format!("{MINIMAL}{}", cluster("caller_audience = \"cluster-a\"")))
        .unwrap_err()
        .to_string();
    assert!(err.contains("no callers' issuer accepts"), "{err}");
    let two = format!(
        "{ext_relay}{}\n[[clusters]]\nname = \"b\"\nagent_token_sha256 = \"{}\"\ncaller_audience = \"cluster-a\"\n",
        cluster("caller_audience = \"cluster-a\""),
        "b".repeat(64)
    );
    assert!(
        parse_relay(&two)
            .unwrap_err()
            .to_string()
            .contains("share caller_audience")
    );
    let rotation = format!(
        "{MINIMAL}\n[[clusters]]\nname = \"a\"\nagent_token_sha256 = [\"{}\", \"{}\"]\n",
        "a".repeat(64),
        "b".repeat(64)
    );
    assert_eq!(
        parse_relay(&rotation).unwrap().clusters[0]
            .agent_token_sha256
            .all()
            .len(),
        2
    );
}

#[test]
fn an_assertion_issuer_is_never_a_callers_issuer() {
    let clash = MINIMAL.replace("https://relay/assertions", "https://relay");
    let err = parse_relay(&clash).unwrap_err().to_string();
    assert!(err.contains("also a callers' issuer"), "{err}");
    let long = format!("{MINIMAL}lifetime = \"2h\"\n");
    assert!(parse_relay(&long).unwrap_err().to_string().contains("at most 1h"));
}

#[test]
fn an_agent_trusts_assertions_or_issuers_never_both_nor_neither() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.toml");
    let base = "cluster = \"local\"\ntoken_file = \"t\"\n[relay]\naddress = \"r:443\"\nca_file = \"c\"\n";
    let assertions = "[assertions]\nissuer = \"https://r/assertions\"\njwks_file = \"a.json\"\n";
    let issuers = "[[issuers]]\nissuer = \"https://idp\"\naudiences = [\"cluster-local\"]\njwks_file = \"i.json\"\n";
    let parse = |text: String| {
        std::fs::write(&path, text).unwrap();
        load::<AgentConfig>(&path)
    };
    let relay_vouches = parse(format!("{base}{assertions}")).unwrap();
    assert_eq!(
        relay_vouches.accepts(),
        crate::proto::Accepts::Assertion {
            issuer: "https://r/assertions".into()
        }
    );
    assert_eq!(relay_vouches.caller_issuers()[0].audiences, ["hawser:cluster:local"]);
    let own_tokens = parse(format!("{base}{issuers}")).unwrap();
    assert_eq!(
        own_tokens.accepts(),
        crate::proto::Accepts::CallerToken {
            audiences: vec!["cluster-local".into()]
        }
    );
    assert!(
        parse(format!("{base}{assertions}{issuers}"))
            .unwrap_err()
            .to_string()
            .contains("not both")
    );
    assert!(parse(base.to_owned()).unwrap_err().to_string().contains("[assertions]"));
}

#[test]
fn the_agents_transport_and_proxy_are_checked_at_start() {
    let ok =
        parse_agent("ca_file = \"relay.crt\"\ntransport = \"tcp\"\nproxy = \"http://proxy.example:3128\"").unwrap();
    assert_eq!(ok.relay.transport, crate::config::Transport::Tcp);
    assert_eq!(
        parse_agent("ca_file = \"relay.crt\"").unwrap().relay.transport,
        crate::config::Transport::Auto,
        "auto is the default"
    );
    for (relay, why) in [
        ("transport = \"udp\"", "unknown variant"),
        ("proxy = \"https://proxy.example:3128\"", "use http://host:port"),
        ("proxy = \"socks5://proxy.example:1080\"", "use http://host:port"),
        ("proxy = \"http://user:secret@proxy.example:3128\"", "proxy_auth_file"),
        ("proxy = \"https://user:secret@proxy.example:3128\"", "proxy_auth_file"),
        ("quic_fallback_secs = 0", "quic_fallback_secs"),
        ("quic_probe_secs = 5", "quic_probe_secs"),
    ] {
        let err = parse_agent(&format!("ca_file = \"relay.crt\"\n{relay}"))
            .unwrap_err()
            .to_string();
        assert!(err.contains(why), "{relay}: {err}");
        assert!(
            !err.contains("secret"),
            "a proxy password never reaches an error: {err}"
        );
    }
}

#[test]
fn a_fleet_needs_both_the_shared_registry_and_the_peer_link_and_each_is_checked() {
    const FLEET: &str = r#"
[registry]
kind = "etcd"
endpoints = ["http://127.0.0.1:2379"]
[peers]
listen = "127.0.0.1:9444"
ca_file = "fleet-ca.crt"
cert_file = "peer.crt"
key_file = "peer.key"
"#;
    let fleet = parse_relay(&format!("{MINIMAL}{FLEET}")).unwrap();
    let RegistryConfig::Etcd(etcd) = &fleet.registry else {
        panic!("etcd registry expected")
    };
    assert_eq!((etcd.prefix.as_str(), etcd.lease_ttl_secs), ("/hawser", 10));
    assert!(fleet.peers.as_ref().unwrap().ca_file.is_absolute());
    assert!(matches!(
        parse_relay(MINIMAL).unwrap().registry,
        RegistryConfig::Memory {}
    ));

    let refused = |text: String, expect: &str| {
        let err = parse_relay(&text).unwrap_err().to_string();
        assert!(err.contains(expect), "{expect}: {err}");
    };
    let without_peers = FLEET.split("[peers]").next().unwrap();
    refused(format!("{MINIMAL}{without_peers}"), "needs [peers]");
    refused(
        format!("{MINIMAL}{without_peers}").replace("kind = \"etcd\"", "kind = \"memory\""),
        "unknown field",
    );
    refused(
        format!("{MINIMAL}{FLEET}").replace("endpoints", "endpoint"),
        "unknown field",
    );
    refused(
        format!("{MINIMAL}{FLEET}").replace("http://127.0.0.1:2379", "127.0.0.1:2379"),
        "registry.endpoints",
    );
    refused(
        format!("{MINIMAL}{FLEET}").replace("127.0.0.1:9444", "0.0.0.0:9444"),
        "peers.advertise",
    );
    refused(
        format!("{MINIMAL}{FLEET}").replace("127.0.0.1:9444", "127.0.0.1:0"),
        "a port of its own",
    );
    refused(
        format!("{MINIMAL}{FLEET}").replace("[registry]", "[registry]\nlease_ttl_secs = 1"),
        "lease_ttl_secs",
    );
    refused(format!("instance = \"relay 0\"\n{MINIMAL}{FLEET}"), "instance");
}

#[test]
fn the_relays_server_id_is_configured_or_derived_from_its_instance() {
    use crate::cid::ServerId;
    let derived = parse_relay(&format!("instance = \"relay-1\"\n{MINIMAL}")).unwrap();
    assert_eq!(derived.server_id(), ServerId::from_instance("relay-1"));
    let set = parse_relay(&format!("{MINIMAL}\n[tunnel]\nserver_id = \"0x0123456789ABCDEF\"\n")).unwrap();
    assert_eq!(set.server_id().to_string(), "0123456789abcdef");
    for (value, why) in [
        ("\"0123\"", "not 4"),
        ("\"0123456789abcdeg\"", "character 16 is not a hex digit"),
        ("42", "string"),
    ] {
        let err = parse_relay(&format!("{MINIMAL}\n[tunnel]\nserver_id = {value}\n"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(why) && err.contains(":15:") && !err.contains('\n'),
            "{value}: {err}"
        );
    }
}

#[test]
fn an_agent_refuses_the_relays_server_id() {
    let err = parse_agent("ca_file = \"relay.crt\"\n[tunnel]\nserver_id = \"0123456789abcdef\"")
        .unwrap_err()
        .to_string();
    assert!(err.contains("tunnel.server_id is a relay setting"), "{err}");
}

#[test]
fn what_an_agent_impersonates_follows_its_issuers() {
    let agent = parse_agent("pinned_key_sha256 = [\"47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=\"]").unwrap();
    assert_eq!(agent.impersonates(), crate::config::Impersonates::default());
    let mut agent = agent;
    agent.issuers[0].uid_claim = Some("oid".into());
    agent.issuers[0]
        .extra_claims
        .insert("acme.io/team".into(), "team".into());
    agent.issuers[0].allow_system_names = true;
    let impersonates = agent.impersonates();
    assert!(impersonates.uids && impersonates.service_accounts);
    assert_eq!(impersonates.extra_keys, ["acme.io/team"]);
}

#[test]
fn a_validation_error_names_the_line_it_speaks_of_when_one_line_is_meant() {
    let line_of = |text: &str, needle: &str| text.lines().position(|l| l.contains(needle)).unwrap() + 1;
    let cluster = format!(
        "{MINIMAL}[[clusters]]\nname = \"Not A Name\"\nagent_token_sha256 = \"{}\"\n",
        "0".repeat(64)
    );
    let limits = format!("{MINIMAL}[limits]\nmax_header_bytes = 10\n");
    for (text, needle) in [(&cluster, "Not A Name"), (&limits, "max_header_bytes")] {
        let err = parse_relay(text).unwrap_err().to_string();
        let at = format!("relay.toml:{}: ", line_of(text, needle));
        assert!(err.contains(&at), "{at} in {err}");
    }
    // A key every cluster has is no one line: the file alone, never a wrong line.
    let two = format!(
        "{MINIMAL}[[clusters]]\nname = \"a\"\nagent_token_sha256 = \"{}\"\n[[clusters]]\nname = \"b\"\nagent_token_sha256 = \"00\"\n",
        "0".repeat(64)
    );
    let err = parse_relay(&two).unwrap_err().to_string();
    assert!(err.contains("relay.toml: cluster b: agent_token_sha256"), "{err}");
}
