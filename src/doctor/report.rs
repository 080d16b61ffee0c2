//! The doctor's lines: one per check, `ok`, `warn`, `FAIL` or `skip`, what was found, how long it
//! took and, for what is wrong, the fix. Everything is escaped as it is written: a relay's close
//! reason or an apiserver's message can neither start a line of its own nor disguise one.

use std::fmt;
use std::time::Duration;

use crate::telemetry::escape;

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// As it should be.
    Ok,
    /// Works, but not as configured (QUIC blocked where `auto` falls back to TCP).
    Warn,
    /// The agent would fail here.
    Fail,
    /// Not run: not needed by this configuration, or an earlier check failed.
    Skip,
}

impl Status {
    fn word(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Warn => "warn",
            Self::Fail => "FAIL",
            Self::Skip => "skip",
        }
    }
}

/// One check's line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// How it came out.
    pub status: Status,
    /// What was checked (`relay over QUIC`).
    pub name: &'static str,
    /// What was found, or why it failed.
    pub detail: String,
    /// How long it took, where that tells something.
    pub took: Option<Duration>,
    /// What to change, for a warning or a failure.
    pub fix: Option<String>,
}

impl Check {
    /// A check that passed.
    pub fn ok(name: &'static str, detail: impl Into<String>) -> Self {
        Self::new(Status::Ok, name, detail.into())
    }

    /// A check that failed, and its fix.
    pub fn fail(name: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> Self {
        Self {
            fix: Some(fix.into()),
            ..Self::new(Status::Fail, name, detail.into())
        }
    }

    /// A check not run, and why.
    pub fn skip(name: &'static str, why: impl Into<String>) -> Self {
        Self::new(Status::Skip, name, why.into())
    }

    /// A check that could not run because `needed` failed.
    pub fn needs(name: &'static str, needed: &str) -> Self {
        Self::skip(name, format!("skipped: needs {needed}"))
    }

    /// The same line with the time the check took.
    pub fn took(self, took: Duration) -> Self {
        Self {
            took: Some(took),
            ..self
        }
    }

    fn new(status: Status, name: &'static str, detail: String) -> Self {
        Self {
            status,
            name,
            detail,
            took: None,
            fix: None,
        }
    }
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:<6}{}: {}", self.status.word(), self.name, escape(&self.detail))?;
        if let Some(took) = self.took {
            write!(f, " ({} ms)", took.as_millis())?;
        }
        if let Some(fix) = &self.fix {
            write!(f, " — fix: {}", escape(fix))?;
        }
        Ok(())
    }
}

/// Every check's line, in order.
#[derive(Debug, Default)]
pub struct Report {
    /// The lines.
    pub checks: Vec<Check>,
}

impl Report {
    /// How many checks failed: the doctor exits non-zero unless none did.
    pub fn failures(&self) -> usize {
        self.checks.iter().filter(|c| c.status == Status::Fail).count()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for check in &self.checks {
            writeln!(f, "{check}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_is_status_name_detail_time_and_fix() {
        let ok = Check::ok("relay over QUIC", "relay.example:443, certificate verified by ca_file")
            .took(Duration::from_micros(14_600));
        assert_eq!(
            ok.to_string(),
            "ok    relay over QUIC: relay.example:443, certificate verified by ca_file (14 ms)"
        );
        let fail = Check::fail(
            "agent token",
            "refused: wrong token",
            "put the right token in token_file",
        );
        assert_eq!(
            fail.to_string(),
            "FAIL  agent token: refused: wrong token — fix: put the right token in token_file"
        );
        assert_eq!(
            Check::needs("impersonation rights", "the apiserver").to_string(),
            "skip  impersonation rights: skipped: needs the apiserver"
        );
        let warn = Check {
            status: Status::Warn,
            ..Check::fail("relay over QUIC", "no handshake", "allow UDP")
        };
        assert_eq!(warn.to_string(), "warn  relay over QUIC: no handshake — fix: allow UDP");
    }

    #[test]
    fn what_came_from_outside_stays_on_its_line() {
        let hostile = "wrong token\nok    agent token: forged\u{1b}[2K\u{202e}";
        let line = Check::fail("agent token", hostile, "a fix\rwith a return").to_string();
        assert_eq!(line.lines().count(), 1, "{line}");
        assert!(
            line.contains("wrong token\\nok    agent token: forged\\u{1b}[2K\\u{202e}"),
            "{line}"
        );
        assert!(line.ends_with("a fix\\rwith a return"), "{line}");
    }

    #[test]
    fn only_failures_count_against_the_exit_code() {
        let mut report = Report::default();
        report.checks.push(Check::ok("config", "fine"));
        report.checks.push(Check::skip("proxy", "none applies"));
        report.checks.push(Check {
            status: Status::Warn,
            ..Check::ok("relay over QUIC", "blocked")
        });
        assert_eq!(report.failures(), 0);
        report.checks.push(Check::fail("apiserver", "refused", "start it"));
        report
            .checks
            .push(Check::needs("impersonation rights", "the apiserver"));
        assert_eq!(report.failures(), 1);
        assert_eq!(report.to_string().lines().count(), 5);
    }
}
