//! Command-line interface of the `hawser` binary.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Reach a Kubernetes API server from anywhere, without an inbound port.
///
/// An agent in each cluster dials out to a relay; people and CI jobs run
/// plain kubectl through the relay, and the agent forwards to kube-apiserver
/// with Kubernetes user impersonation, so RBAC decides.
#[derive(Debug, Parser)]
#[command(name = "hawser", version, about, long_about)]
pub struct Cli {
    /// What to run.
    #[command(subcommand)]
    pub command: Command,
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// Log output formats.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the relay: the callers' front door and the agents' QUIC listener.
    Relay {
        /// The relay's TOML configuration.
        #[arg(long)]
        config: PathBuf,
    },
    /// Run the agent: dial out to the relay and serve kube-apiserver through it.
    Agent {
        /// The agent's TOML configuration.
        #[arg(long)]
        config: PathBuf,
    },
    /// Check an agent's configuration: the relay over each transport, its certificate, the agent
    /// token, the apiserver and the agent's rights; one line per check, exit 1 if any failed.
    /// Safe beside the running agent: its hello is a probe that the relay never registers.
    Doctor {
        /// The agent's TOML configuration.
        #[arg(long)]
        config: PathBuf,
    },
    /// Log in to an OIDC provider (browser, or --device) and keep the login for `hawser token`,
    /// `hawser kubeconfig --issuer` and `hawser proxy --issuer`.
    Login(LoginArgs),
    /// Forget stored logins, revoking their refresh tokens at the provider.
    Logout(LogoutArgs),
    /// Print the caller's token as a kubectl exec credential, or issue a token.
    Token(TokenArgs),
    /// Print a kubeconfig whose server is the relay and whose user runs `hawser token`.
    Kubeconfig(KubeconfigArgs),
    /// Serve a local endpoint that forwards kubectl to the relay with your token.
    Proxy(ProxyArgs),
    /// List every cluster, its connected agents and the relays holding them (for callers an
    /// admin access rule names).
    Clusters(ClustersArgs),
    /// Onboard a cluster: `hawser cluster add NAME`.
    Cluster {
        /// What to do.
        #[command(subcommand)]
        command: ClusterCommand,
    },
    /// Print a certificate's key pin, for the agent's `relay.pinned_key_sha256`.
    Pin {
        /// PEM certificate (of a chain, the first: the relay's own).
        #[arg(long)]
        cert: PathBuf,
    },
}

/// `hawser token`.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct TokenArgs {
    /// Issue a token instead of printing one.
    #[command(subcommand)]
    pub issue: Option<TokenCommand>,
    /// File holding the caller's token (else the HAWSER_TOKEN variable).
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// Print the ID token of your `hawser login` to this issuer (refreshed when it nears expiry).
    #[arg(long, conflicts_with = "token_file", requires = "client_id")]
    pub issuer: Option<String>,
    /// The client id of the login (with --issuer).
    #[arg(long, requires = "issuer")]
    pub client_id: Option<String>,
    /// PEM CA that signs the provider's certificate (else the system's CAs; with --issuer).
    #[arg(long, requires = "issuer")]
    pub ca_file: Option<PathBuf>,
    /// File holding the client secret, for a confidential client (with --issuer).
    #[arg(long, requires = "issuer")]
    pub client_secret_file: Option<PathBuf>,
}

/// `hawser login`.
#[derive(Debug, Args)]
pub struct LoginArgs {
    /// The provider's issuer URL, exactly as its ID tokens say it.
    #[arg(
        long,
        required_unless_present = "relay",
        conflicts_with = "relay",
        requires = "client_id"
    )]
    pub issuer: Option<String>,
    /// The OAuth2 client id (the ID token's audience, listed in the relay's issuer `audiences`).
    #[arg(long, requires = "issuer")]
    pub client_id: Option<String>,
    /// Or the relay's base URL: log in to the provider its `[login]` names.
    #[arg(long)]
    pub relay: Option<String>,
    /// CA certificate that signs the relay's certificate, with --relay (else the system's CAs).
    #[arg(long, requires = "relay", conflicts_with = "issuer")]
    pub relay_ca_file: Option<PathBuf>,
    /// PEM CA that signs the provider's certificate (else the system's CAs).
    #[arg(long, visible_alias = "oidc-ca-file")]
    pub ca_file: Option<PathBuf>,
    /// A scope to ask for beside `openid offline_access`; repeat for several.
    #[arg(long = "scope")]
    pub scopes: Vec<String>,
    /// Use the device authorization grant: print a URL and a code to enter on any device.
    #[arg(long)]
    pub device: bool,
    /// Do not try to open a browser; only print the URL.
    #[arg(long)]
    pub no_browser: bool,
    /// The loopback port the provider redirects to (0: a free port; a fixed one when the
    /// provider allows only fixed redirect URIs).
    #[arg(long, default_value_t = 0, conflicts_with = "device")]
    pub callback_port: u16,
    /// How long you have to log in, such as 5m.
    #[arg(long, default_value = "5m")]
    pub timeout: String,
    /// File holding the client secret, for a confidential client.
    #[arg(long)]
    pub client_secret_file: Option<PathBuf>,
}

/// `hawser logout`.
#[derive(Debug, Args)]
pub struct LogoutArgs {
    /// The issuer of the login to forget.
    #[arg(
        long,
        required_unless_present = "all",
        requires = "client_id",
        conflicts_with = "all"
    )]
    pub issuer: Option<String>,
    /// The client id of the login to forget.
    #[arg(long, requires = "issuer")]
    pub client_id: Option<String>,
    /// Forget every stored login.
    #[arg(long)]
    pub all: bool,
}

/// The caller's identity from a `hawser login`, for `hawser kubeconfig` and `hawser proxy`.
#[derive(Debug, Args)]
pub struct OidcLoginArgs {
    /// Use your `hawser login` to this issuer as the relay token.
    #[arg(long, conflicts_with = "token_file", requires = "client_id")]
    pub issuer: Option<String>,
    /// The client id of that login.
    #[arg(long, requires = "issuer")]
    pub client_id: Option<String>,
    /// Use your `hawser login` to the provider the relay names (its `[login]`).
    #[arg(long, conflicts_with_all = ["token_file", "issuer"])]
    pub login: bool,
    /// PEM CA that signs the provider's certificate (else the system's CAs).
    #[arg(long)]
    pub oidc_ca_file: Option<PathBuf>,
}

/// `hawser token issue` and `hawser token jwks`.
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Sign a token: with the relay's built-in issuer (--config), or with a key of your own kept
    /// away from the relay (--signing-key, --issuer, --audience), which the relay and agents then
    /// trust as an ordinary [[issuers]] entry (its public half: `hawser token jwks`).
    Issue {
        /// The signing key.
        #[command(flatten)]
        key: SigningKeyArgs,
        /// The token's `iss` (with --signing-key).
        #[arg(long, requires = "signing_key")]
        issuer: Option<String>,
        /// The token's `aud`: with --config, instead of the issuer's (e.g. a cluster's
        /// caller_audience); with --signing-key, required. Repeat for several.
        #[arg(long = "audience")]
        audiences: Vec<String>,
        /// The token's subject (the Kubernetes username, after the issuer's prefix).
        #[arg(long)]
        subject: String,
        /// A group of the subject; repeat for several.
        #[arg(long = "group")]
        groups: Vec<String>,
        /// Lifetime such as 30m or 1h; at most the issuer's max_token_lifetime (24h unless configured).
        #[arg(long, default_value = "1h")]
        ttl: String,
    },
    /// Print the public JWKS of a signing key, for an [[issuers]] entry's jwks_file.
    Jwks {
        /// The signing key.
        #[command(flatten)]
        key: SigningKeyArgs,
    },
}

/// Which key signs: the relay configuration's built-in issuer, or a key file (one of the two).
#[derive(Debug, Args)]
pub struct SigningKeyArgs {
    /// The relay's configuration (its [issuer] and signing key).
    #[arg(long, conflicts_with = "signing_key")]
    pub config: Option<PathBuf>,
    /// A PKCS#8 PEM ES256 key file of your own.
    #[arg(long)]
    pub signing_key: Option<PathBuf>,
    /// Create the --signing-key file (mode 0600) if it does not exist.
    #[arg(long, requires = "signing_key")]
    pub generate: bool,
}

/// `hawser kubeconfig`.
#[derive(Debug, Args)]
pub struct KubeconfigArgs {
    /// The relay's base URL, e.g. https://relay.example.com.
    #[arg(long)]
    pub relay: String,
    /// A cluster to add a context for; repeat for several (the first is current).
    #[arg(long = "cluster", required = true)]
    pub clusters: Vec<String>,
    /// CA certificate that signs the relay's certificate (embedded in the kubeconfig).
    #[arg(long)]
    pub ca_file: Option<PathBuf>,
    /// Token file the exec plugin reads (else it reads HAWSER_TOKEN at run time).
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// Or your `hawser login`: the exec plugin runs `hawser token --issuer ...`.
    #[command(flatten)]
    pub login: OidcLoginArgs,
}

/// `hawser proxy`.
#[derive(Debug, Args)]
pub struct ProxyArgs {
    /// The relay's base URL, e.g. https://relay.example.com.
    #[arg(long)]
    pub relay: String,
    /// A cluster to serve; repeat for several.
    #[arg(long = "cluster", required = true)]
    pub clusters: Vec<String>,
    /// Local port on 127.0.0.1 of the first cluster; each further cluster takes the next port.
    /// 0 picks a free port for each.
    #[arg(long, default_value_t = 0)]
    pub port: u16,
    /// Kubeconfig to merge the contexts into (else KUBECONFIG, else ~/.kube/config).
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// File holding your relay token (else the HAWSER_TOKEN variable).
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// CA certificate that signs the relay's certificate (else the system's CAs).
    #[arg(long)]
    pub ca_file: Option<PathBuf>,
    /// Or your `hawser login`, refreshed near its expiry.
    #[command(flatten)]
    pub login: OidcLoginArgs,
    /// Your own cluster token (passthrough mode), as CLUSTER=FILE (or FILE with a single --cluster); repeatable.
    /// Re-read every 10 s; sent beside the relay token, which never reaches the cluster.
    #[arg(long = "cluster-token-file", value_name = "[CLUSTER=]FILE")]
    pub cluster_token_files: Vec<String>,
}

/// `hawser clusters`.
#[derive(Debug, Args)]
pub struct ClustersArgs {
    /// The relay's base URL, e.g. https://relay.example.com (any relay of a fleet answers).
    #[arg(long)]
    pub relay: String,
    /// CA certificate that signs the relay's certificate (else the system's CAs).
    #[arg(long)]
    pub ca_file: Option<PathBuf>,
    /// File holding your relay token (else the HAWSER_TOKEN variable).
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// What to print.
    #[arg(long, short = 'o', value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

/// How `hawser clusters` prints.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Output {
    /// A row per agent, then a row per relay.
    Table,
    /// The relay's answer, as JSON.
    Json,
}

/// `hawser cluster`.
#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Mint a fresh agent token; print the relay's [[clusters]] entry (its SHA-256 only) on stdout,
    /// write the agent chart's values and the token into --out (mode 0600), and print the
    /// `helm install` to run on stderr.
    Add(ClusterAddArgs),
}

/// `hawser cluster add`.
#[derive(Debug, Args)]
pub struct ClusterAddArgs {
    /// The cluster's name at the relay: a DNS-1123 label.
    pub name: String,
    /// The relay's HOST:PORT for agents (its load balancer's, for a fleet).
    #[arg(long)]
    pub relay: String,
    /// The name the relay's certificate carries, if not the host of --relay.
    #[arg(long)]
    pub server_name: Option<String>,
    /// PEM CA that signs the relay's certificate (put in the values as relayCA).
    #[arg(long, required_unless_present = "pins", conflicts_with = "pins")]
    pub ca_file: Option<PathBuf>,
    /// Pin of the relay's key (`hawser pin --cert FILE`); repeat for several.
    #[arg(long = "pin", value_name = "SHA256_BASE64")]
    pub pins: Vec<crate::tls::Pin>,
    /// identity (impersonate callers), passthrough (callers' own cluster tokens) or both.
    #[arg(long, value_enum, default_value_t = ModeArg::Identity)]
    pub mode: ModeArg,
    /// The relay's [assertions] issuer, which the agent trusts for callers.
    #[arg(long)]
    pub assertions_issuer: String,
    /// Where the agent fetches the relay's assertion key (default:
    /// https://RELAY/.well-known/hawser/assertion-jwks.json).
    #[arg(long)]
    pub assertions_jwks_url: Option<String>,
    /// Directory for values.yaml and agent-token (default: ./NAME).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Replace values.yaml and agent-token if they exist (the old token stops working once the
    /// relay's entry is replaced).
    #[arg(long)]
    pub force: bool,
    /// The agent chart, as helm names it in the printed command.
    #[arg(long, default_value = "helm/hawser-agent")]
    pub chart: String,
    /// How to print the relay's entry: a TOML [[clusters]] table (the relay's file), or a YAML
    /// item for the relay chart's config.clusters.
    #[arg(long, value_enum, default_value_t = EntryArg::Toml)]
    pub entry: EntryArg,
}

/// `hawser cluster add --entry`.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum EntryArg {
    /// A `[[clusters]]` table, to append to the relay's TOML.
    Toml,
    /// An item of the relay chart's `config.clusters` list.
    Yaml,
}

/// The agent's `mode`.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ModeArg {
    /// Impersonate the caller the relay vouches for.
    Identity,
    /// Forward the caller's own cluster token.
    Passthrough,
    /// Passthrough when a cluster token comes, identity otherwise.
    Both,
}
