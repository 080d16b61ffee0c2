//! Reload: on SIGHUP or when the file's content changes (`crate::reload`), re-read the agent's
//! configuration and apply what can change while its tunnels stay up.
//!
//! Applied: the issuers' keys and claim rules (`[[issuers]]`, or `[assertions]`' key source and
//! `allow_system_names`), `mode`, `[passthrough]` (its cache and per-caller limit start afresh
//! when it changed), `[audit]` (its file reopened, for log rotation too) and `token_file` (read
//! again at every dial anyway, so a rotated token is used at the next reconnect). Each stream
//! takes one snapshot, so a reload never changes the rules under an exchange in flight.
//!
//! Not applied — the tunnels would have to re-register: what the agent's hello tells the relay
//! (`cluster`, `instance`, the trust model: `[assertions] issuer` or the issuers' audiences),
//! where and how it dials (`[relay]`, `[tunnel]`, `[reconnect]`), its apiserver credential
//! (`[apiserver]`), `[telemetry]` and `[admin]`. Such a change keeps the running value and is
//! named in one warning; a change of the hello's trust model refuses the whole reload, since
//! the rest of it (the issuers) would contradict what the relay was told.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tracing::{error, info, warn};

use super::passthrough::TokenReviewer;
use super::{AgentError, AgentState, link};
use crate::auth::Authenticator;
use crate::config::{AccessMode, AgentConfig};
use crate::reload::{Outcome, Reloads, Trigger, counted};

/// The reloadable part of the agent's state, replaced whole.
pub(crate) struct Live {
    /// Validates the credential in each stream's head.
    pub auth: Authenticator,
    /// Impersonation, passthrough, or both.
    pub mode: AccessMode,
    /// Passthrough cluster tokens' reviews, with their cache and per-caller limit.
    pub reviewer: Arc<TokenReviewer>,
    /// `[passthrough]` as written, to keep the reviewer (and its cache) when it did not change.
    passthrough: String,
}

impl Live {
    /// Builds the part from `config`, keeping `before`'s reviewer if `[passthrough]` is the same.
    pub fn new(config: &AgentConfig, before: Option<&Self>) -> Result<Self, AgentError> {
        let passthrough = format!("{:?}", config.passthrough);
        let reviewer = match before {
            Some(before) if before.passthrough == passthrough => before.reviewer.clone(),
            _ => Arc::new(TokenReviewer::new(&config.passthrough)),
        };
        Ok(Self {
            auth: Authenticator::new(config.caller_issuers()).map_err(|e| AgentError::Auth(e.to_string()))?,
            mode: config.mode,
            reviewer,
            passthrough,
        })
    }
}

/// The live part now; swapped whole on a reload.
pub(crate) type Current = crate::reload::Snapshot<Live>;

/// The settings that take effect only at a restart, each as its key and its value as written.
pub(crate) struct Fixed {
    settings: Vec<(&'static str, String)>,
    /// What the hello says the agent accepts.
    accepts: crate::proto::Accepts,
}

impl Fixed {
    /// The running values of `config`'s restart-only settings.
    pub fn of(config: &AgentConfig) -> Self {
        let shown = |value: &dyn std::fmt::Debug| format!("{value:?}");
        Self {
            settings: vec![
                ("instance", shown(&config.instance)),
                ("cluster", shown(&config.cluster)),
                ("relay", shown(&config.relay)),
                ("tunnel", shown(&config.tunnel)),
                ("reconnect", shown(&config.reconnect)),
                ("apiserver", shown(&config.apiserver)),
                ("telemetry", shown(&config.telemetry)),
                ("admin", shown(&config.admin)),
            ],
            accepts: config.accepts(),
        }
    }

    fn changed(&self, config: &AgentConfig) -> Vec<&'static str> {
        let new = Self::of(config);
        self.settings
            .iter()
            .zip(new.settings)
            .filter(|((_, running), (_, new))| *running != *new)
            .map(|((key, _), _)| *key)
            .collect()
    }
}

/// Reloads at every SIGHUP and change of the file; never completes (nor does anything without a
/// config path).
pub(crate) async fn watch(path: Option<PathBuf>, state: &AgentState, dialer: &link::Dialer, fixed: Fixed) {
    let Some(path) = path else {
        return std::future::pending().await;
    };
    let mut reloads = Reloads::new(&path);
    loop {
        let trigger = reloads.next().await;
        reload(&path, state, dialer, &fixed, trigger);
    }
}

/// Applies the file at `path`, or keeps everything if it is not valid.
fn reload(path: &Path, state: &AgentState, dialer: &link::Dialer, fixed: &Fixed, trigger: Trigger) {
    let refused = |error: &dyn std::fmt::Display| {
        counted(Outcome::Refused);
        error!(trigger = trigger.as_str(), error = %error, "reload refused; the running configuration stays");
    };
    let config: AgentConfig = match crate::config::load(path) {
        Ok(config) => config,
        Err(e) => return refused(&e),
    };
    if config.accepts() != fixed.accepts {
        return refused(&format!(
            "{}: what the agent accepts from the relay changed ([assertions] issuer or the issuers' audiences); \
             its tunnels must register again with the new hello: restart the agent",
            path.display()
        ));
    }
    let built = Live::new(&config, Some(&state.live.current())).and_then(|live| {
        super::read_token(&config.token_file)?;
        state.audit.reopen(&config.audit)?;
        Ok(live)
    });
    let live = match built {
        Ok(live) => live,
        Err(e) => return refused(&format!("{}: {e}", path.display())),
    };
    let restart = fixed.changed(&config);
    if !restart.is_empty() {
        warn!(
            settings = restart.join(", "),
            "these settings changed but take effect only at a restart; they keep their running values"
        );
    }
    let mode = live.mode;
    state.live.replace(live);
    dialer.set_token_file(config.token_file.clone());
    counted(Outcome::Applied);
    info!(
        trigger = trigger.as_str(),
        ?mode,
        "configuration reloaded: issuers, mode, passthrough, audit and token file applied"
    );
}
