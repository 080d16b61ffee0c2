//! Latency percentiles (exact, from every sample) and CPU time per process.

use std::time::Duration;

use serde::Serialize;

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Latency {
    /// Samples.
    pub count: usize,
    /// Mean.
    pub mean_ms: f64,
    /// Median.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile (meaningful from 1,000 samples on).
    pub p999_ms: f64,
    /// Largest.
    pub max_ms: f64,
}

impl Latency {
    /// From samples in nanoseconds (sorted here).
    pub fn of(samples: &mut [u64]) -> Self {
        if samples.is_empty() {
            return Self::default();
        }
        samples.sort_unstable();
        let ms = |ns: u64| ns as f64 / 1e6;
        // Nearest rank: the smallest sample with at least q of all samples at or below it.
        let at = |q: f64| {
            let rank = (q * samples.len() as f64).ceil() as usize;
            ms(samples[rank.clamp(1, samples.len()) - 1])
        };
        let sum: u128 = samples.iter().map(|&s| u128::from(s)).sum();
        Self {
            count: samples.len(),
            mean_ms: sum as f64 / samples.len() as f64 / 1e6,
            p50_ms: at(0.50),
            p90_ms: at(0.90),
            p99_ms: at(0.99),
            p999_ms: at(0.999),
            max_ms: ms(*samples.last().unwrap_or(&0)),
        }
    }
}

/// Nanoseconds of a duration, saturating.
pub fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// CPU seconds (user + system) used during a measurement, per part.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CpuUse {
    /// The relay process.
    pub relay_s: f64,
    /// All agent processes of the loaded clusters.
    pub agents_s: f64,
    /// The backend process.
    pub backend_s: f64,
    /// This driver (the callers).
    pub driver_s: f64,
    /// UDP datagrams the kernel dropped for a full receive buffer meanwhile
    /// (`RcvbufErrors` of /proc/net/snmp: machine-wide, so any UDP traffic counts).
    pub udp_rcvbuf_errors: u64,
}

/// Cumulative CPU ticks of the parts at one instant.
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuSnapshot {
    relay: u64,
    agents: u64,
    backend: u64,
    driver: u64,
    udp_rcvbuf_errors: u64,
}

/// The processes whose CPU time is counted.
#[derive(Debug, Clone)]
pub struct Pids {
    /// The relay.
    pub relay: u32,
    /// The loaded clusters' agents.
    pub agents: Vec<u32>,
    /// The backend.
    pub backend: u32,
}

impl Pids {
    /// Reads every part's cumulative CPU ticks now.
    pub fn snapshot(&self) -> CpuSnapshot {
        CpuSnapshot {
            relay: ticks(&self.relay.to_string()),
            agents: self.agents.iter().map(|p| ticks(&p.to_string())).sum(),
            backend: ticks(&self.backend.to_string()),
            driver: ticks("self"),
            udp_rcvbuf_errors: udp_rcvbuf_errors(),
        }
    }
}

impl CpuSnapshot {
    /// CPU seconds used between `self` and `later`.
    pub fn until(&self, later: &CpuSnapshot, ticks_per_second: f64) -> CpuUse {
        let s = |a: u64, b: u64| b.saturating_sub(a) as f64 / ticks_per_second;
        CpuUse {
            relay_s: s(self.relay, later.relay),
            agents_s: s(self.agents, later.agents),
            backend_s: s(self.backend, later.backend),
            driver_s: s(self.driver, later.driver),
            udp_rcvbuf_errors: later.udp_rcvbuf_errors.saturating_sub(self.udp_rcvbuf_errors),
        }
    }
}

/// utime + stime of `/proc/PID/stat`, in clock ticks (0 if unreadable).
pub(crate) fn ticks(pid: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(0, |stat| parse_ticks(&stat))
}

fn parse_ticks(stat: &str) -> u64 {
    // Fields after the command name, which is in parentheses and may hold spaces.
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line; `rest` starts at field 3.
    let get = |i: usize| fields.get(i - 3).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
    get(14) + get(15)
}

/// `Udp: RcvbufErrors` of /proc/net/snmp (0 if unreadable).
fn udp_rcvbuf_errors() -> u64 {
    std::fs::read_to_string("/proc/net/snmp").map_or(0, |snmp| parse_snmp(&snmp, "Udp:", "RcvbufErrors"))
}

/// A counter of /proc/net/snmp: a header line and a value line share a prefix.
fn parse_snmp(snmp: &str, prefix: &str, name: &str) -> u64 {
    let mut lines = snmp.lines().filter(|l| l.starts_with(prefix));
    let (Some(names), Some(values)) = (lines.next(), lines.next()) else {
        return 0;
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == name)
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

/// Clock ticks per second (`getconf CLK_TCK`; 100 if that fails, as on every Linux here).
pub fn ticks_per_second() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|t| *t > 0.0)
        .unwrap_or(100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let mut samples: Vec<u64> = (1..=1000).map(|i| i * 1_000_000).collect();
        samples.reverse();
        let l = Latency::of(&mut samples);
        assert_eq!(l.count, 1000);
        assert_eq!(l.p50_ms, 500.0);
        assert_eq!(l.p99_ms, 990.0);
        assert_eq!(l.p999_ms, 999.0);
        assert_eq!(l.max_ms, 1000.0);
        assert!((l.mean_ms - 500.5).abs() < 1e-9);
        assert_eq!(Latency::of(&mut []).count, 0);
    }

    #[test]
    fn snmp_counters() {
        let snmp = "Ip: Forwarding DefaultTTL\nIp: 1 64\n\
                    Udp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors\n\
                    Udp: 26568 0 638 27206 638 0\n\
                    UdpLite: InDatagrams RcvbufErrors\nUdpLite: 0 7\n";
        assert_eq!(parse_snmp(snmp, "Udp:", "RcvbufErrors"), 638);
        assert_eq!(parse_snmp(snmp, "Udp:", "Nope"), 0);
        assert_eq!(parse_snmp("", "Udp:", "RcvbufErrors"), 0);
    }

    #[test]
    fn stat_line_with_spaces_in_the_name() {
        let stat = "42 (tokio (worker) 1) S 1 42 42 0 -1 4194560 100 0 0 0 250 30 0 0 20 0 3 0 1000 1 1";
        assert_eq!(parse_ticks(stat), 280);
        assert_eq!(parse_ticks("garbage"), 0);
    }
}
