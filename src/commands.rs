//! What each subcommand does, in a few lines each; the work lives in the
//! modules. The binary's top level: errors become one line on stderr.

use std::io::Write;

use anyhow::{Context, Result, bail};

use crate::cli::{
    ClusterAddArgs, ClusterCommand, ClustersArgs, Command, KubeconfigArgs, LoginArgs, LogoutArgs, ModeArg,
    OidcLoginArgs, Output, ProxyArgs, SigningKeyArgs, TokenArgs, TokenCommand,
};
use crate::cli::{EntryArg, LogFormat};
use crate::client::kubeconfig::{self, Entry, User};
use crate::client::{clusters, proxy, token};
use crate::config::{self, AgentConfig, RelayConfig, Secret};
use crate::telemetry::{self, Otel, Service};

/// `e` and its causes as one line, each said once: an error whose message already holds its
/// cause (`"peers: {0}"` over the error it wraps) is not followed by that cause again.
pub fn error_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

/// Runs one subcommand to completion, logging in `format`.
pub async fn run(command: Command, format: LogFormat) -> Result<()> {
    // A relay or agent logs once its configuration says where its traces go.
    if !matches!(command, Command::Relay { .. } | Command::Agent { .. }) {
        telemetry::init(format, None);
    }
    match command {
        Command::Relay { config: path } => {
            let config: RelayConfig = config::load(&path)?;
            let otel = observe(
                format,
                &config.telemetry,
                &config.admin,
                "hawser-relay",
                &config.instance,
            )?;
            let relay = crate::relay::Relay::bind(config)
                .await?
                .reload_from(path)
                .with_metrics(otel.prometheus());
            relay.run().await;
            otel.shutdown();
            Ok(())
        }
        Command::Agent { config: path } => {
            let config: AgentConfig = config::load(&path)?;
            let otel = observe(
                format,
                &config.telemetry,
                &config.admin,
                "hawser-agent",
                &config.instance,
            )?;
            let ran = crate::agent::run(config, Some(path), otel.prometheus()).await;
            otel.shutdown();
            Ok(ran?)
        }
        Command::Doctor { config } => {
            let report = crate::doctor::run(&config).await;
            print!("{report}");
            std::io::stdout().flush()?;
            match report.failures() {
                0 => Ok(()),
                1 => bail!("1 check failed"),
                n => bail!("{n} checks failed"),
            }
        }
        Command::Login(args) => login_command(args).await,
        Command::Logout(args) => logout_command(args).await,
        Command::Token(args) => token_command(args).await,
        Command::Kubeconfig(args) => kubeconfig_command(args).await,
        Command::Proxy(args) => proxy_command(args).await,
        Command::Clusters(args) => clusters_command(args).await,
        Command::Cluster {
            command: ClusterCommand::Add(args),
        } => cluster_add(args),
        Command::Pin { cert } => {
            println!("{}", crate::tls::Pin::of_pem_file(&cert)?);
            Ok(())
        }
    }
}

/// Starts a relay's or agent's telemetry and its log.
fn observe(
    format: LogFormat,
    telemetry: &config::TelemetryConfig,
    admin: &config::AdminConfig,
    name: &'static str,
    instance: &str,
) -> Result<Otel> {
    let otel = Otel::start(telemetry, admin.listen.is_some(), Service { name, instance })?;
    telemetry::init(format, Some(&otel));
    if let Some(endpoint) = &telemetry.otlp_endpoint {
        // The collector is dialled lazily: say at start where spans and metrics will go.
        tracing::info!(%endpoint, sampling_ratio = telemetry.sampling_ratio, "exporting traces and metrics over OTLP/gRPC");
    }
    Ok(otel)
}

async fn login_command(args: LoginArgs) -> Result<()> {
    use crate::login::{LoginOptions, Provider, browser::BrowserOptions, store::Store};
    let timeout = config::parse_duration(&args.timeout).map_err(|e| anyhow::anyhow!("--timeout: {e}"))?;
    let (issuer, client_id, mut scopes) = match (args.issuer, args.client_id, &args.relay) {
        (Some(issuer), Some(client_id), _) => (issuer, client_id, Vec::new()),
        (_, _, Some(relay)) => {
            let named = crate::login::relay::discover(relay, args.relay_ca_file.as_deref()).await?;
            (named.issuer, named.client_id, named.scopes)
        }
        _ => bail!("give --relay, or --issuer and --client-id"),
    };
    for scope in args.scopes {
        if !scopes.contains(&scope) {
            scopes.push(scope);
        }
    }
    let provider = Provider::new(issuer, client_id, args.ca_file, args.client_secret_file.as_deref())?;
    let options = LoginOptions {
        scopes,
        device: args.device,
        browser: BrowserOptions {
            callback_port: args.callback_port,
            open_browser: !args.no_browser,
        },
        timeout,
        client_secret_file: args.client_secret_file,
    };
    let (login, claims) = crate::login::login(&Store::from_env()?, &provider, &options).await?;
    eprintln!(
        "Logged in to {} as {} until {}.",
        login.issuer,
        crate::login::provider_text(&claims.sub),
        crate::login::rfc3339(login.expiry)
    );
    Ok(())
}

async fn logout_command(args: LogoutArgs) -> Result<()> {
    use crate::login::{logout, store::Store};
    let store = Store::from_env()?;
    let done = match (&args.issuer, &args.client_id) {
        (Some(issuer), Some(client_id)) if !args.all => match logout::one(&store, issuer, client_id).await? {
            Some(done) => vec![done],
            None => {
                eprintln!("Not logged in to {issuer} (client {client_id}).");
                return Ok(());
            }
        },
        _ => logout::all(&store).await?,
    };
    if done.is_empty() {
        eprintln!("Not logged in anywhere.");
    }
    for logged_out in done {
        if let Some(warning) = &logged_out.warning {
            eprintln!("hawser: warning: {warning}");
        }
        eprintln!("Logged out of {}.", logged_out.issuer);
    }
    Ok(())
}

/// The login `--issuer`/`--client-id` name, or `--login` asks the relay for, as a token source
/// for kubeconfig and proxy.
async fn login_provider(
    login: &OidcLoginArgs,
    relay: &str,
    relay_ca: Option<&std::path::Path>,
) -> Result<Option<crate::login::Provider>> {
    let (issuer, client_id) = match (&login.issuer, &login.client_id) {
        (Some(issuer), Some(client_id)) => (issuer.clone(), client_id.clone()),
        _ if login.login => {
            let named = crate::login::relay::discover(relay, relay_ca).await?;
            (named.issuer, named.client_id)
        }
        _ if login.oidc_ca_file.is_some() => bail!("--oidc-ca-file goes with --login or --issuer"),
        _ => return Ok(None),
    };
    Ok(Some(crate::login::Provider::new(
        issuer,
        client_id,
        login.oidc_ca_file.clone(),
        None,
    )?))
}

async fn token_command(args: TokenArgs) -> Result<()> {
    match args.issue {
        None if args.issuer.is_some() => {
            let provider = crate::login::Provider::new(
                args.issuer.unwrap_or_default(),
                args.client_id.unwrap_or_default(),
                args.ca_file,
                args.client_secret_file.as_deref(),
            )?;
            let store = crate::login::store::Store::from_env()?;
            let login = crate::login::refresh::fresh(&store, &provider, crate::login::unix_now()).await?;
            println!(
                "{}",
                token::exec_credential_until(login.id_token.expose(), &crate::login::rfc3339(login.expiry))
            );
        }
        None => {
            let token = token::caller_token(args.token_file.as_deref())?;
            println!("{}", token::exec_credential(&token));
        }
        Some(TokenCommand::Issue {
            key,
            issuer,
            mut audiences,
            subject,
            groups,
            ttl,
        }) => {
            let ttl = config::parse_duration(&ttl).map_err(anyhow::Error::msg)?;
            let builtin = signing_issuer(&key, issuer, audiences.first().cloned())?;
            if audiences.is_empty() {
                audiences.push(builtin.audience().to_owned());
            }
            println!("{}", builtin.issue_for(&audiences, &subject, &groups, ttl)?);
        }
        Some(TokenCommand::Jwks { key }) => {
            let builtin = signing_issuer(&key, Some("jwks".into()), Some("jwks".into()))?;
            println!("{}", builtin.jwks());
        }
    }
    Ok(())
}

/// The issuer that signs for `hawser token issue`/`jwks`: the relay's built-in one, or a key file
/// with the issuer and audience given on the command line.
fn signing_issuer(
    key: &SigningKeyArgs,
    issuer: Option<String>,
    audience: Option<String>,
) -> Result<crate::auth::BuiltinIssuer> {
    if let Some(path) = &key.config {
        let config: RelayConfig = config::load(path)?;
        let Some(issuer) = &config.issuer else {
            bail!("the relay configuration has no [issuer]; sign with --signing-key instead");
        };
        return issuer.load_existing().map_err(|e| match e {
            crate::auth::IssuerError::Missing(key) if issuer.generate => anyhow::anyhow!(
                "[issuer] signing_key_file {} does not exist yet: the relay creates it on its first start \
                 (generate = true); start the relay once, then issue tokens",
                key.display()
            ),
            crate::auth::IssuerError::Missing(key) => anyhow::anyhow!(
                "[issuer] signing_key_file {} does not exist: create it, or set generate = true and start the \
                 relay once",
                key.display()
            ),
            other => other.into(),
        });
    }
    let Some(path) = &key.signing_key else {
        bail!("give --config or --signing-key");
    };
    let (Some(issuer), Some(audience)) = (issuer, audience) else {
        bail!("--signing-key needs --issuer and --audience");
    };
    Ok(crate::auth::BuiltinIssuer::load_or_generate(
        path,
        issuer,
        audience,
        key.generate,
    )?)
}

async fn kubeconfig_command(args: KubeconfigArgs) -> Result<()> {
    let relay = args.relay.trim_end_matches('/');
    if !relay.starts_with("https://") {
        bail!("--relay must be an https:// URL, not {relay}");
    }
    let ca_pem = match &args.ca_file {
        Some(path) => Some(std::fs::read(path).with_context(|| format!("reading {}", path.display()))?),
        None => None,
    };
    let command = std::env::current_exe().context("finding the hawser binary for the exec plugin")?;
    let plugin_args = plugin_args(&args).await?;
    let mut entries = Vec::new();
    for cluster in &args.clusters {
        if !config::valid_cluster_name(cluster) {
            bail!("{cluster:?} is not a cluster name");
        }
        entries.push(Entry {
            name: format!("hawser-{cluster}"),
            server: format!("{relay}/clusters/{cluster}"),
            ca_pem: ca_pem.clone(),
            user: User::Exec {
                command: command.clone(),
                args: plugin_args.clone(),
            },
        });
    }
    std::io::stdout().write_all(kubeconfig::render(&entries).as_bytes())?;
    Ok(())
}

/// The exec plugin's arguments: `token` with the login, else with the token file.
async fn plugin_args(args: &KubeconfigArgs) -> Result<Vec<String>> {
    let mut plugin_args = vec!["token".to_owned()];
    if let Some(provider) = login_provider(&args.login, &args.relay, args.ca_file.as_deref()).await? {
        plugin_args.extend([
            "--issuer".to_owned(),
            provider.issuer,
            "--client-id".to_owned(),
            provider.client_id,
        ]);
        if let Some(ca) = &provider.ca_file {
            let ca = std::path::absolute(ca).with_context(|| format!("resolving {}", ca.display()))?;
            plugin_args.extend(["--ca-file".to_owned(), ca.display().to_string()]);
        }
    } else if let Some(file) = &args.token_file {
        let file = std::path::absolute(file).with_context(|| format!("resolving {}", file.display()))?;
        plugin_args.extend(["--token-file".to_owned(), file.display().to_string()]);
    }
    Ok(plugin_args)
}

async fn proxy_command(args: ProxyArgs) -> Result<()> {
    let options = proxy::ProxyOptions {
        relay: args
            .relay
            .trim_end_matches('/')
            .parse()
            .context("--relay is not a URL")?,
        clusters: args.clusters,
        port: args.port,
        kubeconfig: kubeconfig::default_path(args.kubeconfig.as_deref())?,
        token: relay_token(
            &args.login,
            &args.relay,
            args.ca_file.as_deref(),
            args.token_file.as_deref(),
        )
        .await?,
        relay_ca: args.ca_file,
        cluster_tokens: args.cluster_token_files,
    };
    let path = options.kubeconfig.clone();
    let proxy = proxy::Proxy::bind(options).await?;
    // The contexts line is for people and scripts alike; flush it before serving.
    let listening: Vec<String> = proxy
        .addresses()?
        .iter()
        .map(|(cluster, addr)| format!("{addr} ({cluster})"))
        .collect();
    println!(
        "hawser proxy listening on {}; wrote contexts {} to {}",
        listening.join(", "),
        proxy.contexts.join(", "),
        path.display()
    );
    std::io::stdout().flush()?;
    proxy.run().await;
    Ok(())
}

/// The proxy's relay token: the login's (checked now, so a missing login fails at start), else
/// the token file's or HAWSER_TOKEN.
async fn relay_token(
    login: &OidcLoginArgs,
    relay: &str,
    relay_ca: Option<&std::path::Path>,
    token_file: Option<&std::path::Path>,
) -> Result<proxy::RelayToken> {
    let Some(provider) = login_provider(login, relay, relay_ca).await? else {
        return Ok(proxy::RelayToken::Fixed(Secret::new(token::caller_token(token_file)?)));
    };
    let source = crate::login::refresh::LoginToken::new(crate::login::store::Store::from_env()?, provider);
    source.get().await?;
    Ok(proxy::RelayToken::Login(std::sync::Arc::new(source)))
}

/// `hawser cluster add`: the relay's entry on stdout (so `>> relay.toml` appends it), the files
/// written and the next steps on stderr.
fn cluster_add(args: ClusterAddArgs) -> Result<()> {
    use crate::onboard::{Onboarding, RelayTrust};
    let trust = match &args.ca_file {
        Some(path) => RelayTrust::Ca(crate::onboard::read_ca(path)?),
        None => RelayTrust::Pins(args.pins),
    };
    let onboarding = Onboarding {
        cluster: args.name,
        relay: args.relay,
        server_name: args.server_name,
        trust,
        mode: match args.mode {
            ModeArg::Identity => config::AccessMode::Identity,
            ModeArg::Passthrough => config::AccessMode::Passthrough,
            ModeArg::Both => config::AccessMode::Both,
        },
        assertions_issuer: args.assertions_issuer,
        assertions_jwks_url: args.assertions_jwks_url,
        chart: args.chart,
        entry_format: match args.entry {
            EntryArg::Toml => crate::onboard::EntryFormat::Toml,
            EntryArg::Yaml => crate::onboard::EntryFormat::Yaml,
        },
    };
    let onboarded = onboarding.render()?;
    let out = args.out.unwrap_or_else(|| onboarding.cluster.clone().into());
    let [values, token] = crate::onboard::write(&out, &onboarded, args.force)?;
    print!("{}", onboarded.relay_entry);
    std::io::stdout().flush()?;
    eprintln!(
        "wrote {} (the agent chart's values) and {} (the token alone), both mode 0600\n\
         1. add the entry above to every relay's config ([[clusters]]; with the relay chart, its \
         config.clusters and `helm upgrade`), then `kill -HUP` the relay (or restart it)\n\
         2. with kubectl's context on cluster {}: {}",
        values.display(),
        token.display(),
        onboarding.cluster,
        onboarding.helm_install(&values),
    );
    Ok(())
}

async fn clusters_command(args: ClustersArgs) -> Result<()> {
    let token = Secret::new(token::caller_token(args.token_file.as_deref())?);
    let overview = clusters::fetch(&args.relay, args.ca_file.as_deref(), &token).await?;
    let text = match args.output {
        Output::Table => clusters::table(&overview),
        Output::Json => format!("{}\n", serde_json::to_string_pretty(&overview)?),
    };
    std::io::stdout().write_all(text.as_bytes())?;
    Ok(())
}

#[cfg(test)]
mod tests;
