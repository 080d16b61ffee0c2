//! The relay's checks: the agent's configuration as the agent reads it at start, the relay over
//! each transport the agent would use (the proxy on TCP's way apart), and the relay's answer to a
//! probe hello, which says whether the agent token and trust model are accepted.

mod explain;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Check, Status};
use crate::agent::link::Dialer;
use crate::agent::{AgentError, SessionError, read_token};
use crate::config::{AgentConfig, Transport};
use crate::proto::Welcome;
use crate::tls::{Refusals, RelayTrust};
use crate::tunnel::HANDSHAKE_TIMEOUT;

const CONFIG: &str = "config";
const QUIC: &str = "relay over QUIC";
const PROXY: &str = "proxy";
const TCP: &str = "relay over TCP";
const TOKEN: &str = "agent token";
/// The lines after `config`, in order.
pub(super) const CHECKS: [&str; 4] = [QUIC, PROXY, TCP, TOKEN];

/// A dialer whose hellos are probes, and why it last refused the relay's certificate.
struct Prober {
    dialer: Dialer,
    refusals: Arc<Refusals>,
}

/// How the relay answered a probe hello.
enum Answer {
    /// Welcomed (and, being a probe, not registered).
    Welcome(Welcome),
    /// Refused with one of the relay's close codes.
    Refused { code: u32, reason: String },
    /// No answer that could be read.
    Lost(String),
}

/// A transport's line, and the relay's answer when the relay was reached.
struct Outcome {
    line: Check,
    answer: Option<Answer>,
    /// Nothing answered at all (for QUIC: no handshake, as where UDP is blocked).
    unreachable: bool,
}

impl Outcome {
    fn failed(line: Check, unreachable: bool) -> Self {
        Self {
            line,
            answer: None,
            unreachable,
        }
    }
}

/// The configuration line, a line per transport (and the proxy), and the agent token's line.
pub(super) async fn check(path: &Path, config: &AgentConfig) -> Vec<Check> {
    let (quic_prober, tcp_prober) = match (prober(config), prober(config)) {
        (Ok(quic), Ok(tcp)) => (quic, tcp),
        (Err(e), _) | (_, Err(e)) => {
            let detail = match e {
                AgentError::Tls(e) => format!("relay.ca_file or pinned_key_sha256: {e}"),
                e => e.to_string(),
            };
            let mut lines = vec![Check::fail(
                CONFIG,
                detail,
                "the agent would not start with it: correct the file or what it names",
            )];
            lines.extend(CHECKS.map(|name| Check::needs(name, "a usable config")));
            return lines;
        }
    };
    let relay = &config.relay;
    let transport = format!("{:?}", relay.transport).to_lowercase();
    let config_line = Check::ok(
        CONFIG,
        format!(
            "{}: cluster {}, instance {}, transport {transport}, mode {}",
            path.display(),
            config.cluster,
            config.instance,
            format!("{:?}", config.mode).to_lowercase()
        ),
    );
    let unused = |name| Check::skip(name, format!("not used (relay.transport = \"{transport}\")"));
    let (quic, tcp) = tokio::join!(
        async {
            match relay.transport {
                Transport::Tcp => Outcome::failed(unused(QUIC), false),
                _ => quic(config, &quic_prober).await,
            }
        },
        async {
            match relay.transport {
                Transport::Quic => (unused(PROXY), Outcome::failed(unused(TCP), false)),
                _ => tcp(config, &tcp_prober).await,
            }
        }
    );
    let (proxy, tcp) = tcp;
    let mut quic = quic;
    if relay.transport == Transport::Auto && quic.unreachable && tcp.line.status == Status::Ok {
        // Exactly the case `auto` is for: the agent works, over TCP.
        quic.line.status = Status::Warn;
        quic.line.fix = Some(format!(
            "none needed: the agent falls back to TCP after {} s and tries QUIC again every {} s; \
             allow UDP to {} for QUIC",
            relay.quic_fallback_secs,
            relay.quic_probe_secs,
            quic_prober.dialer.addresses().0
        ));
    }
    let answers: Vec<(&str, &Answer)> = [("QUIC", &quic.answer), ("TCP", &tcp.answer)]
        .into_iter()
        .filter_map(|(via, answer)| Some((via, answer.as_ref()?)))
        .collect();
    let token = token_line(config, &answers);
    vec![config_line, quic.line, proxy, tcp.line, token]
}

/// What the agent builds at start: its token, its trust in the relay and its proxy, as a probing
/// dialer whose certificate refusals are kept.
fn prober(config: &AgentConfig) -> Result<Prober, AgentError> {
    let token = read_token(&config.token_file)?;
    let relay = &config.relay;
    let trust = RelayTrust::load(relay.ca_file.as_deref(), &relay.pinned_key_sha256)?;
    let refusals = Arc::new(Refusals::default());
    let dialer = Dialer::probing(config, &token, trust.witnessed_verifier(refusals.clone())?)?;
    Ok(Prober { dialer, refusals })
}

/// The relay over QUIC, within the time the agent would give it (`quic_fallback_secs` for `auto`).
async fn quic(config: &AgentConfig, prober: &Prober) -> Outcome {
    let relay = &config.relay;
    let address = prober.dialer.addresses().0;
    let deadline = match relay.transport {
        Transport::Auto => Duration::from_secs(relay.quic_fallback_secs),
        _ => HANDSHAKE_TIMEOUT,
    };
    let started = Instant::now();
    let result = prober.dialer.quic(deadline, 0, &[]).await;
    let took = started.elapsed();
    let answer = match result {
        Ok((link, welcome)) => {
            link.close("probe answered");
            Ok(Answer::Welcome(welcome))
        }
        Err(e) => answer_of(e),
    };
    // Let the close reach the relay, which otherwise waits a while for the prober to go.
    let endpoints = std::mem::take(&mut *prober.dialer.current.lock().unwrap_or_else(|e| e.into_inner()));
    for endpoint in endpoints {
        let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
    }
    match answer {
        Ok(answer) => Outcome {
            line: Check::ok(QUIC, format!("{address}, {}", explain::trusted(config))).took(took),
            answer: Some(answer),
            unreachable: false,
        },
        Err(e) => {
            let unreachable = e.quic_unreachable();
            let (detail, fix) = explain::quic(&e, prober, config, deadline);
            Outcome::failed(Check::fail(QUIC, detail, fix).took(took), unreachable)
        }
    }
}

/// The relay over TCP, through the proxy if one applies: the proxy's line, and the relay's.
async fn tcp(config: &AgentConfig, prober: &Prober) -> (Check, Outcome) {
    let address = prober.dialer.addresses().1;
    let proxy = prober.dialer.proxy();
    let started = Instant::now();
    let connected = prober.dialer.tcp_connect().await;
    let proxy_line = match (&proxy, &connected) {
        (None, _) => Check::skip(
            PROXY,
            "none applies (relay.proxy is unset and no HTTPS_PROXY or ALL_PROXY names one for the relay)",
        ),
        (Some(proxy), Ok(_)) => {
            Check::ok(PROXY, format!("{proxy} opened a tunnel to {address}")).took(started.elapsed())
        }
        (Some(_), Err(SessionError::Proxy(e))) => {
            let (detail, fix) = explain::proxy(e, config);
            Check::fail(PROXY, detail, fix).took(started.elapsed())
        }
        (Some(proxy), Err(e)) => Check::fail(PROXY, format!("{proxy}: {e}"), "check relay.proxy"),
    };
    let tcp = match connected {
        Ok(tcp) => tcp,
        Err(SessionError::Proxy(_)) => return (proxy_line, Outcome::failed(Check::needs(TCP, "the proxy"), false)),
        Err(e) => {
            let (detail, fix) = explain::tcp(&e, prober, config);
            return (proxy_line, Outcome::failed(Check::fail(TCP, detail, fix), true));
        }
    };
    let result = prober.dialer.tcp_hello(tcp, 0, &[]).await;
    let took = started.elapsed();
    let answer = match result {
        // Dropping the stream ends the connection; the relay has already ended its side.
        Ok((_io, welcome)) => Ok(Answer::Welcome(welcome)),
        Err(e) => answer_of(e),
    };
    let through = if proxy.is_some() { " through the proxy" } else { "" };
    let outcome = match answer {
        Ok(answer) => Outcome {
            line: Check::ok(TCP, format!("{address}{through}, {}", explain::trusted(config))).took(took),
            answer: Some(answer),
            unreachable: false,
        },
        Err(e) => {
            let (detail, fix) = explain::tcp(&e, prober, config);
            Outcome::failed(Check::fail(TCP, detail, fix).took(took), false)
        }
    };
    (proxy_line, outcome)
}

/// The relay's answer, when the error is one: the relay was reached and spoke.
fn answer_of(e: SessionError) -> Result<Answer, SessionError> {
    match e {
        SessionError::Refused { code, reason } => Ok(Answer::Refused { code, reason }),
        SessionError::SameRelay(reason) => Ok(Answer::Refused {
            code: crate::proto::HELD_HERE,
            reason,
        }),
        SessionError::Hello(why) => Ok(Answer::Lost(why)),
        e => Err(e),
    }
}

/// Whether the relay accepts the agent token and trust model: welcomed over every transport that
/// reached it, or the first refusal with its fix.
fn token_line(config: &AgentConfig, answers: &[(&str, &Answer)]) -> Check {
    if answers.is_empty() {
        return Check::needs(TOKEN, "the relay reached over QUIC or TCP");
    }
    for (via, answer) in answers {
        match answer {
            Answer::Refused { code, reason } => {
                let (detail, fix) = explain::refusal(*code, reason, via, config);
                return Check::fail(TOKEN, detail, fix);
            }
            Answer::Lost(why) => {
                return Check::fail(
                    TOKEN,
                    format!("no answer to the hello over {via}: {why}"),
                    "check that relay.address is a hawser relay of this release",
                );
            }
            Answer::Welcome(_) => {}
        }
    }
    let vias: Vec<&str> = answers.iter().map(|(via, _)| *via).collect();
    let relays: Vec<String> = answers
        .iter()
        .filter_map(|(_, answer)| match answer {
            Answer::Welcome(w) => Some(format!("{}{}", w.relay, if w.fleet { " (one of a fleet)" } else { "" })),
            _ => None,
        })
        .collect();
    let mut relays = relays;
    relays.dedup();
    Check::ok(
        TOKEN,
        format!(
            "relay {} accepts cluster {}'s token and trust model over {} (probed: nothing registered)",
            relays.join(" and "),
            config.cluster,
            vias.join(" and ")
        ),
    )
}
