//! When to re-read a configuration file: on SIGHUP, and when its content changes.
//!
//! Kubernetes updates a mounted ConfigMap by a symlink swap: `FILE -> ..data/FILE` and
//! `..data -> ..2026_12_01_...`; the kubelet writes a new timestamped directory and renames a
//! new `..data` link over the old one. The file's own inode never changes, so watching it alone
//! misses the update. This watches the directory that names the file (and, when the file is a
//! symlink elsewhere, its target's directory), lets a burst of events settle, then compares the
//! file's content with what it last saw: only a change of content is a reload, so a touch, an
//! audit log written beside the file, or a swap to the same text does nothing.

use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

/// How long the directory must stay quiet before the file is read (an editor's save or a
/// ConfigMap swap is several events).
const SETTLE: Duration = Duration::from_millis(300);

/// A value that a reload replaces whole while readers keep the snapshot they took.
#[derive(Debug, Default)]
pub struct Snapshot<T>(std::sync::RwLock<std::sync::Arc<T>>);

impl<T> Snapshot<T> {
    /// Holds `value`.
    pub fn new(value: T) -> Self {
        Self(std::sync::RwLock::new(std::sync::Arc::new(value)))
    }

    /// The value now (cheap: one `Arc`); a decision keeps it to its end.
    pub fn current(&self) -> std::sync::Arc<T> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Replaces the value; snapshots taken before keep the old one.
    pub fn replace(&self, value: T) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = std::sync::Arc::new(value);
    }
}

crate::telemetry::metrics::attribute_values! {
    /// How a reload ended (`hawser.config.reloads`).
    pub enum Outcome: "hawser.result" {
        /// The file was applied (restart-only settings aside).
        Applied = "applied",
        /// The file was refused; the running configuration stays.
        Refused = "refused",
    }
}

/// Counts a reload that ended with `outcome`.
pub fn counted(outcome: Outcome) {
    crate::telemetry::metrics::count(&crate::telemetry::metrics::metrics().reloads, outcome);
}

/// Why a reload is due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// SIGHUP: always a reload.
    Hangup,
    /// The file's content changed.
    Changed,
}

impl Trigger {
    /// How logs name it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Hangup => "SIGHUP",
            Self::Changed => "file changed",
        }
    }
}

/// The reloads of one configuration file, in order.
pub struct Reloads {
    path: PathBuf,
    /// SHA-256 of the content last loaded or seen.
    seen: Option<[u8; 32]>,
    hangup: Option<tokio::signal::unix::Signal>,
    /// The watcher (kept alive) and its events.
    events: Option<(notify::RecommendedWatcher, mpsc::Receiver<()>)>,
}

impl Reloads {
    /// Watches `path` and listens for SIGHUP; a watch that cannot be set up is one warning, and
    /// SIGHUP still works.
    pub fn new(path: &Path) -> Self {
        use tokio::signal::unix::{SignalKind, signal};
        let events = match watch(path) {
            Ok(events) => Some(events),
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "cannot watch the configuration file; reload with SIGHUP");
                None
            }
        };
        crate::telemetry::metrics::start_at_zero::<Outcome>(&crate::telemetry::metrics::metrics().reloads);
        Self {
            path: path.to_owned(),
            seen: digest(path),
            hangup: signal(SignalKind::hangup()).ok(),
            events,
        }
    }

    /// The next reload due (never, if there is neither a signal handler nor a watch).
    pub async fn next(&mut self) -> Trigger {
        loop {
            let event = async {
                match &mut self.events {
                    Some((_, events)) => events.recv().await,
                    None => std::future::pending().await,
                }
            };
            let hangup = async {
                match &mut self.hangup {
                    Some(hangup) => hangup.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = hangup => {
                    self.seen = digest(&self.path);
                    return Trigger::Hangup;
                }
                Some(()) = event => {
                    self.settle().await;
                    // Unreadable (mid-way through a non-atomic write): the next event reads it.
                    let now = digest(&self.path);
                    if now.is_some() && now != self.seen {
                        self.seen = now;
                        return Trigger::Changed;
                    }
                }
            }
        }
    }

    /// Waits until no event has come for [`SETTLE`].
    async fn settle(&mut self) {
        let Some((_, events)) = &mut self.events else { return };
        while let Ok(Some(())) = tokio::time::timeout(SETTLE, events.recv()).await {}
    }
}

/// SHA-256 of the file's content, if it can be read.
fn digest(path: &Path) -> Option<[u8; 32]> {
    std::fs::read(path).ok().map(|text| Sha256::digest(text).into())
}

/// Watches the directories that decide what `path` reads, sending one wake-up per relevant event
/// (a full channel already holds one).
fn watch(path: &Path) -> notify::Result<(notify::RecommendedWatcher, mpsc::Receiver<()>)> {
    use notify::{EventKind, RecursiveMode, Watcher};
    let name = path.file_name().map(ToOwned::to_owned);
    let target = std::fs::canonicalize(path).ok();
    let dirs: Vec<PathBuf> = [Some(path), target.as_deref()]
        .into_iter()
        .flatten()
        .filter_map(|p| {
            p.parent()
                .map(|d| if d.as_os_str().is_empty() { Path::new(".") } else { d })
        })
        .map(Path::to_path_buf)
        .collect();
    let (wake, events) = mpsc::channel(1);
    let relevant = move |event: &notify::Event| {
        // Reading the file is an access event: reacting to it would read it forever.
        !matches!(event.kind, EventKind::Access(_))
            && event.paths.iter().any(|p| {
                let file = p.file_name();
                file == name.as_deref()
                    || target.as_deref() == Some(p.as_path())
                    // The ConfigMap's own links and directories (`..data`, `..2026_...`).
                    || file.is_some_and(|f| f.as_encoded_bytes().starts_with(b".."))
            })
    };
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if event.is_ok_and(|e| relevant(&e)) {
            let _ = wake.try_send(());
        }
    })?;
    for dir in dirs.iter().collect::<std::collections::BTreeSet<_>>() {
        watcher.watch(dir, RecursiveMode::NonRecursive)?;
    }
    Ok((watcher, events))
}

#[cfg(test)]
mod tests;
