use anyhow::Context as _;

use super::*;

#[derive(Debug, thiserror::Error)]
enum Outer {
    /// A message that holds its source, as `#[from]` variants often do.
    #[error("peers: {0}")]
    Wraps(#[from] Inner),
}

#[derive(Debug, thiserror::Error)]
#[error("udp socket: {0}")]
struct Inner(#[from] std::io::Error);

#[test]
fn an_error_line_says_each_cause_once() {
    let in_use = || std::io::Error::new(std::io::ErrorKind::AddrInUse, "Address already in use (os error 98)");
    let nested = anyhow::Error::from(Outer::from(Inner::from(in_use())));
    assert_eq!(
        format!("{nested:#}"),
        "peers: udp socket: Address already in use (os error 98): udp socket: Address already in use (os error 98): \
         Address already in use (os error 98)",
        "what the binary printed before"
    );
    assert_eq!(
        error_line(&nested),
        "peers: udp socket: Address already in use (os error 98)"
    );
    // Context that does not say its cause is followed by it.
    let context = Err::<(), _>(in_use()).context("reading relay.toml").unwrap_err();
    assert_eq!(
        error_line(&context),
        "reading relay.toml: Address already in use (os error 98)"
    );
}

/// A relay configuration in `dir` with a built-in issuer whose key file is missing.
fn relay_without_its_issuer_key(dir: &std::path::Path, generate: bool) -> std::path::PathBuf {
    let path = dir.join("relay.toml");
    std::fs::write(
        &path,
        format!(
            r#"listen = "127.0.0.1:0"
[tls]
cert_file = "relay.crt"
key_file = "relay.key"
[issuer]
issuer = "https://relay"
audience = "hawser"
signing_key_file = "issuer.key"
generate = {generate}
[assertions]
issuer = "https://relay/assertions"
signing_key_file = "assertion.key"
"#
        ),
    )
    .unwrap();
    path
}

#[test]
fn token_issue_never_generates_the_relays_key() {
    let dir = tempfile::tempdir().unwrap();
    for generate in [true, false] {
        let args = SigningKeyArgs {
            config: Some(relay_without_its_issuer_key(dir.path(), generate)),
            signing_key: None,
            generate: false,
        };
        let e = signing_issuer(&args, None, None).expect_err("no key, no issuer");
        let line = error_line(&e);
        let key = dir.path().join("issuer.key");
        assert!(!key.exists(), "generate = {generate}: no key was made");
        assert!(
            line.starts_with(&format!("[issuer] signing_key_file {} does not exist", key.display())),
            "{line}"
        );
        let advice = if generate {
            "the relay creates it on its first start"
        } else {
            "create it"
        };
        assert!(line.contains(advice), "{line}");
    }
}

#[test]
fn cluster_add_needs_a_way_to_trust_the_relay_and_takes_one() {
    use clap::Parser;
    let parse = |extra: &[&str]| {
        let mut args = vec!["hawser", "cluster", "add", "prod", "--relay", "r.example.com:443"];
        args.extend_from_slice(&["--assertions-issuer", "https://r.example.com/assertions"]);
        args.extend_from_slice(extra);
        crate::cli::Cli::try_parse_from(args)
    };
    let neither = parse(&[]).unwrap_err().to_string();
    assert!(neither.contains("--ca-file"), "{neither}");
    let pin = "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=";
    let both = parse(&["--ca-file", "ca.crt", "--pin", pin]).unwrap_err().to_string();
    assert!(both.contains("cannot be used with"), "{both}");
    let bad_pin = parse(&["--pin", "abc"]).unwrap_err().to_string();
    assert!(bad_pin.contains("hawser pin --cert FILE"), "{bad_pin}");
    assert!(parse(&["--pin", pin, "--pin", pin, "--mode", "both"]).is_ok());
    assert!(parse(&["--ca-file", "ca.crt"]).is_ok());
}

fn parse(line: &str) -> Result<Command, clap::Error> {
    use clap::Parser as _;
    crate::cli::Cli::try_parse_from(line.split_whitespace()).map(|cli| cli.command)
}

#[test]
fn the_login_command_lines_parse_as_the_e2e_tests_write_them() {
    let Command::Login(login) = parse(
        "hawser login --issuer https://idp.example.com --client-id kubectl --ca-file ca.pem --scope groups \
         --scope email --no-browser --callback-port 8000 --timeout 2m --client-secret-file s",
    )
    .unwrap() else {
        panic!("not login")
    };
    assert_eq!(
        (login.issuer.as_deref(), login.client_id.as_deref()),
        (Some("https://idp.example.com"), Some("kubectl"))
    );
    assert_eq!(login.scopes, ["groups", "email"]);
    assert!(login.no_browser && !login.device);
    assert_eq!((login.callback_port, login.timeout.as_str()), (8000, "2m"));
    assert!(parse("hawser login --issuer https://i --client-id c --device").is_ok());
    assert!(
        parse("hawser login --issuer https://i").is_err(),
        "--client-id is required"
    );
    assert!(parse("hawser login").is_err(), "--relay, or --issuer and --client-id");
    let Command::Login(login) =
        parse("hawser login --relay https://r --relay-ca-file r.crt --oidc-ca-file idp.pem").unwrap()
    else {
        panic!("not login")
    };
    assert_eq!(login.relay.as_deref(), Some("https://r"));
    assert!(login.issuer.is_none() && login.ca_file.is_some());
    assert!(parse("hawser login --relay https://r --issuer https://i --client-id c").is_err());
    assert!(parse("hawser login --issuer https://i --client-id c --relay-ca-file r.crt").is_err());

    let Command::Token(token) = parse("hawser token --issuer https://i --client-id c --ca-file ca.pem").unwrap() else {
        panic!("not token")
    };
    assert_eq!(token.issuer.as_deref(), Some("https://i"));
    assert!(parse("hawser token --issuer https://i --client-id c --token-file t").is_err());
    assert!(
        parse("hawser token --issuer https://i").is_err(),
        "--issuer needs --client-id"
    );
    assert!(parse("hawser token --token-file t").is_ok());
    assert!(
        parse("hawser token issue --signing-key k --issuer https://i --audience a --subject s").is_ok(),
        "token issue keeps its own --issuer"
    );

    assert!(parse("hawser logout --all").is_ok());
    assert!(parse("hawser logout --issuer https://i --client-id c").is_ok());
    assert!(parse("hawser logout").is_err(), "says which login, or --all");
    assert!(parse("hawser logout --issuer https://i --client-id c --all").is_err());

    let proxy = "hawser proxy --relay https://r --cluster dev --issuer https://i --client-id c --oidc-ca-file ca.pem";
    assert!(parse(proxy).is_ok());
    assert!(parse(&format!("{proxy} --token-file t")).is_err());
    assert!(parse("hawser proxy --relay https://r --cluster dev --login").is_ok());
    assert!(parse("hawser proxy --relay https://r --cluster dev --login --token-file t").is_err());
    assert!(
        parse("hawser kubeconfig --relay https://r --cluster dev --login --issuer https://i --client-id c").is_err()
    );
}

#[tokio::test]
async fn a_kubeconfig_with_a_login_runs_hawser_token_with_it() {
    let Command::Kubeconfig(args) = parse(
        "hawser kubeconfig --relay https://r --cluster dev --issuer https://idp.example.com --client-id kubectl \
         --oidc-ca-file /etc/idp-ca.pem",
    )
    .unwrap() else {
        panic!("not kubeconfig")
    };
    assert_eq!(
        plugin_args(&args).await.unwrap(),
        [
            "token",
            "--issuer",
            "https://idp.example.com",
            "--client-id",
            "kubectl",
            "--ca-file",
            "/etc/idp-ca.pem"
        ]
    );
    let Command::Kubeconfig(args) =
        parse("hawser kubeconfig --relay https://r --cluster dev --issuer http://idp.example.com --client-id c")
            .unwrap()
    else {
        panic!("not kubeconfig")
    };
    let err = plugin_args(&args).await.unwrap_err().to_string();
    assert!(err.contains("must be an https:// URL"), "{err}");
    let Command::Kubeconfig(args) =
        parse("hawser kubeconfig --relay https://r --cluster dev --oidc-ca-file ca.pem").unwrap()
    else {
        panic!("not kubeconfig")
    };
    let err = plugin_args(&args).await.unwrap_err().to_string();
    assert!(err.contains("--oidc-ca-file goes with --login or --issuer"), "{err}");
    assert!(
        parse("hawser kubeconfig --relay https://r --cluster dev --issuer https://i --client-id c --token-file t")
            .is_err()
    );
}
