//! Shutdown signals.

use tokio::signal::unix::{SignalKind, signal as unix_signal};

/// Resolves on the first SIGINT or SIGTERM, with its name.
pub async fn signal() -> &'static str {
    let (Ok(mut term), Ok(mut int)) = (
        unix_signal(SignalKind::terminate()),
        unix_signal(SignalKind::interrupt()),
    ) else {
        // Without signal handlers the process can only be killed; wait forever.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    }
}
