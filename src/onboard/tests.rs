use std::os::unix::fs::PermissionsExt;

use super::*;

fn onboarding(trust: RelayTrust) -> Onboarding {
    Onboarding {
        cluster: "prod-eu".into(),
        relay: "relay.example.com:443".into(),
        server_name: Some("relay.internal".into()),
        trust,
        mode: AccessMode::Both,
        assertions_issuer: "https://relay.example.com/assertions".into(),
        assertions_jwks_url: None,
        chart: "helm/hawser-agent".into(),
        entry_format: EntryFormat::Toml,
    }
}

fn values(onboarded: &Onboarded) -> serde_json::Value {
    serde_yaml_ng::from_str(&onboarded.values).expect("the values are YAML")
}

#[test]
fn the_entry_holds_the_tokens_digest_and_the_values_hold_the_token() {
    let pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
    let onboarded = onboarding(RelayTrust::Ca(pem.into())).render().unwrap();
    let token = onboarded.token.expose().to_owned();
    assert_eq!(token.len(), 43, "32 bytes, base64url");

    let entry: toml::Value = toml::from_str(&onboarded.relay_entry).unwrap();
    let cluster = &entry["clusters"][0];
    assert_eq!(cluster["name"].as_str(), Some("prod-eu"));
    assert_eq!(
        cluster["agent_token_sha256"].as_str(),
        Some(crate::relay::token_digest_hex(&token).as_str())
    );
    assert!(
        !onboarded.relay_entry.contains(&token),
        "the relay gets the digest only"
    );

    let values = values(&onboarded);
    assert_eq!(
        values,
        serde_json::json!({
            "cluster": "prod-eu",
            "mode": "both",
            "token": {"value": token},
            "relayCA": pem,
            "config": {
                "relay": {"address": "relay.example.com:443", "server_name": "relay.internal"},
                "assertions": {
                    "issuer": "https://relay.example.com/assertions",
                    "jwks_url": "https://relay.example.com:443/.well-known/hawser/assertion-jwks.json",
                },
            },
        })
    );

    // A second run mints another token.
    let again = onboarding(RelayTrust::Ca(pem.into())).render().unwrap();
    assert_ne!(again.token.expose(), token);
}

#[test]
fn pins_go_to_the_relays_table_and_no_ca_is_written() {
    let pin: Pin = "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=".parse().unwrap();
    let mut onboarding = onboarding(RelayTrust::Pins(vec![pin]));
    onboarding.server_name = None;
    onboarding.mode = AccessMode::Identity;
    onboarding.assertions_jwks_url = Some("https://jwks.example.com/k.json".into());
    let values = values(&onboarding.render().unwrap());
    assert_eq!(
        values["config"]["relay"],
        serde_json::json!({
            "address": "relay.example.com:443",
            "pinned_key_sha256": ["47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="],
        })
    );
    assert!(values.get("relayCA").is_none());
    assert_eq!(values["mode"], "identity");
    assert_eq!(
        values["config"]["assertions"]["jwks_url"],
        "https://jwks.example.com/k.json"
    );
}

#[test]
fn names_and_addresses_the_relay_or_chart_would_refuse_are_refused() {
    let good = onboarding(RelayTrust::Pins(vec![]));
    for name in ["Prod", "-prod", "prod-", "prod_eu", "prod.eu", "", &"a".repeat(64)] {
        let mut o = good.clone();
        o.cluster = name.into();
        let err = o.render().err().unwrap().to_string();
        assert!(err.contains("DNS-1123 label"), "{name}: {err}");
    }
    for relay in [
        "relay.example.com",
        "relay.example.com:0",
        ":443",
        "relay.example.com:https",
        "a b:443",
    ] {
        let mut o = good.clone();
        o.relay = relay.into();
        let err = o.render().err().unwrap().to_string();
        assert!(err.starts_with("--relay "), "{relay}: {err}");
    }
    let mut o = good.clone();
    o.relay = "[2001:db8::1]:8443".into();
    assert!(o.render().is_ok());
    o.assertions_jwks_url = Some("http://relay/jwks".into());
    assert!(o.render().err().unwrap().to_string().contains("an https:// URL"));
}

#[test]
fn files_are_private_and_never_replaced_without_force() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("prod-eu");
    let first = onboarding(RelayTrust::Pins(vec![])).render().unwrap();
    let [values, token] = write(&out, &first, false).unwrap();
    for path in [&values, &token] {
        let mode = std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", path.display());
    }
    assert_eq!(std::fs::read_to_string(&token).unwrap().trim(), first.token.expose());

    let second = onboarding(RelayTrust::Pins(vec![])).render().unwrap();
    let err = write(&out, &second, false).err().unwrap().to_string();
    assert!(err.contains("values.yaml exists") && err.contains("--force"), "{err}");
    assert_eq!(std::fs::read_to_string(&token).unwrap().trim(), first.token.expose());

    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o644)).unwrap();
    write(&out, &second, true).unwrap();
    assert_eq!(std::fs::read_to_string(&token).unwrap().trim(), second.token.expose());
    let mode = std::fs::metadata(&token).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "replaced, not rewritten in place");
}

#[test]
fn a_ca_file_must_hold_a_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ca.crt");
    std::fs::write(&path, "not pem").unwrap();
    assert!(read_ca(&path).err().unwrap().to_string().contains("no CERTIFICATE"));
    assert!(read_ca(&dir.path().join("missing")).is_err());
}

#[test]
fn the_entry_in_yaml_is_an_item_of_the_relay_charts_clusters() {
    let mut onboarding = onboarding(RelayTrust::Pins(vec![]));
    onboarding.entry_format = EntryFormat::Yaml;
    let onboarded = onboarding.render().unwrap();
    let items: serde_json::Value = serde_yaml_ng::from_str(&onboarded.relay_entry).unwrap();
    assert_eq!(
        items,
        serde_json::json!([{
            "name": "prod-eu",
            "agent_token_sha256": crate::relay::token_digest_hex(onboarded.token.expose()),
        }])
    );
}
