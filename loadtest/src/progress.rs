//! The progress line on stderr: rewritten in place at a terminal, else one
//! line every few seconds (CI logs stay short).

use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// What a phase counts in `ok`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Requests (and req/s).
    Requests,
    /// Downloads (and MB/s).
    Downloads,
    /// Connected agents.
    Agents,
}

/// Counters the scenarios bump and the ticker prints.
pub struct Progress {
    tty: bool,
    phase: Mutex<Option<(String, Kind, Instant, Duration)>>,
    /// Requests that succeeded.
    pub ok: AtomicU64,
    /// Requests that failed.
    pub failed: AtomicU64,
    /// Body bytes received.
    pub bytes: AtomicU64,
    last_line: Mutex<Instant>,
}

impl Progress {
    /// A progress line for stderr.
    pub fn new() -> Self {
        Self {
            tty: std::io::stderr().is_terminal(),
            phase: Mutex::new(None),
            ok: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            last_line: Mutex::new(Instant::now()),
        }
    }

    /// Starts a phase named `label` counting `kind`, planned to last `planned` (zero: until done).
    pub fn begin(&self, label: &str, kind: Kind, planned: Duration) {
        self.ok.store(0, Ordering::Relaxed);
        self.failed.store(0, Ordering::Relaxed);
        self.bytes.store(0, Ordering::Relaxed);
        *lock(&self.phase) = Some((label.to_owned(), kind, Instant::now(), planned));
    }

    /// Ends the phase and prints its last line.
    pub fn end(&self) {
        let line = self.line();
        *lock(&self.phase) = None;
        if let Some(line) = line {
            self.print(&format!("{line} done"), true);
        }
    }

    /// Called by the ticker: prints the current line if it is time.
    pub fn tick(&self) {
        let Some(line) = self.line() else { return };
        if self.tty {
            self.print(&line, false);
        } else {
            let mut last = lock(&self.last_line);
            if last.elapsed() >= Duration::from_secs(5) {
                *last = Instant::now();
                drop(last);
                self.print(&line, true);
            }
        }
    }

    /// How often the ticker should call [`Progress::tick`].
    pub fn interval(&self) -> Duration {
        if self.tty {
            Duration::from_millis(250)
        } else {
            Duration::from_secs(1)
        }
    }

    /// A message of its own, on its own line.
    pub fn say(&self, message: &str) {
        self.print(message, true);
    }

    fn line(&self) -> Option<String> {
        let phase = lock(&self.phase);
        let (label, kind, started, planned) = phase.as_ref()?;
        let elapsed = started.elapsed().as_secs_f64();
        let ok = self.ok.load(Ordering::Relaxed);
        let failed = self.failed.load(Ordering::Relaxed);
        let bytes = self.bytes.load(Ordering::Relaxed);
        let time = if planned.is_zero() {
            format!("{elapsed:.1}s")
        } else {
            format!("{elapsed:.1}/{:.1}s", planned.as_secs_f64())
        };
        let per_second = |n: f64| if elapsed > 0.0 { n / elapsed } else { 0.0 };
        Some(match kind {
            Kind::Requests => format!(
                "[{label}] {time}  ok {ok}  failed {failed}  {:.0} req/s",
                per_second(ok as f64)
            ),
            Kind::Downloads => format!(
                "[{label}] {time}  done {ok}  failed {failed}  {:.0} MB/s",
                per_second(bytes as f64) / 1e6
            ),
            Kind::Agents => format!("[{label}] {time}  connected {ok}"),
        })
    }

    fn print(&self, line: &str, newline: bool) {
        let mut err = std::io::stderr().lock();
        let _ = if self.tty {
            write!(err, "\r\x1b[2K{line}{}", if newline { "\n" } else { "" })
        } else {
            writeln!(err, "{line}")
        };
        let _ = err.flush();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
