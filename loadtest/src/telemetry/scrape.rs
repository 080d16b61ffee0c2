//! The Prometheus side without Prometheus: `GET /metrics` of every admin listener once a
//! second, each on a keep-alive HTTP/1.1 connection of its own (as Prometheus scrapes), the
//! bodies read whole and counted.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::scenario::Failures;

/// How long one scrape may take (Prometheus's default `scrape_timeout`).
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(10);

/// What the scrapes of one phase did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ScrapeStats {
    /// Scrapes answered 200, over every admin listener.
    pub ok: u64,
    /// Scrapes that failed.
    pub failures: Failures,
    /// Body bytes of the answered scrapes.
    pub bytes: u64,
    /// Body bytes of the last answered scrape of each listener (relay first, then agents).
    pub last_bytes: Vec<u64>,
}

/// A scrape loop running until [`Scraper::stop`].
pub struct Scraper {
    stop: CancellationToken,
    task: JoinHandle<ScrapeStats>,
}

impl Scraper {
    /// Scrapes every one of `addrs` now and then every `every`.
    pub fn start(addrs: Vec<SocketAddr>, every: Duration) -> Self {
        let stop = CancellationToken::new();
        let task = tokio::spawn(scrape_loop(addrs, every, stop.clone()));
        Self { stop, task }
    }

    /// Stops the loop (a scrape in flight is abandoned) and says what it did.
    pub async fn stop(self) -> Result<ScrapeStats> {
        self.stop.cancel();
        Ok(self.task.await?)
    }
}

async fn scrape_loop(addrs: Vec<SocketAddr>, every: Duration, stop: CancellationToken) -> ScrapeStats {
    let mut stats = ScrapeStats {
        last_bytes: vec![0; addrs.len()],
        ..Default::default()
    };
    let mut connections: Vec<Option<SendRequest<Empty<Bytes>>>> = addrs.iter().map(|_| None).collect();
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return stats,
            _ = ticks.tick() => {}
        }
        for (i, (addr, connection)) in addrs.iter().zip(&mut connections).enumerate() {
            let scraped = tokio::select! {
                () = stop.cancelled() => return stats,
                r = tokio::time::timeout(SCRAPE_TIMEOUT, scrape_on(connection, *addr)) => {
                    r.unwrap_or_else(|_| Err(anyhow!("no answer within {SCRAPE_TIMEOUT:?}")))
                }
            };
            match scraped {
                Ok(body) => {
                    stats.ok += 1;
                    stats.bytes += body.len() as u64;
                    stats.last_bytes[i] = body.len() as u64;
                }
                Err(e) => {
                    // A new connection at the next scrape.
                    *connection = None;
                    stats.failures.add(format!("{addr}: {e:#}"));
                }
            }
        }
    }
}

/// One `GET /metrics` of `addr` on its own connection, made if there is none.
async fn scrape_on(connection: &mut Option<SendRequest<Empty<Bytes>>>, addr: SocketAddr) -> Result<Bytes> {
    let sender = match connection {
        Some(s) if !s.is_closed() => s,
        _ => connection.insert(open(addr).await?),
    };
    sender.ready().await.context("connection")?;
    let req = Request::get("/metrics")
        .header(http::header::HOST, addr.to_string())
        .body(Empty::new())?;
    let resp = sender.send_request(req).await.context("request")?;
    let status = resp.status();
    let body = resp.into_body().collect().await.context("body")?.to_bytes();
    if status != StatusCode::OK {
        bail!("status {status}");
    }
    Ok(body)
}

/// One `GET /metrics` of `addr` on a connection of its own.
pub async fn scrape(addr: SocketAddr) -> Result<String> {
    let body = tokio::time::timeout(SCRAPE_TIMEOUT, scrape_on(&mut None, addr))
        .await
        .map_err(|_| anyhow!("{addr}/metrics: no answer within {SCRAPE_TIMEOUT:?}"))?
        .with_context(|| format!("{addr}/metrics"))?;
    Ok(String::from_utf8_lossy(&body).into_owned())
}

async fn open(addr: SocketAddr) -> Result<SendRequest<Empty<Bytes>>> {
    let tcp = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// The sum of every series of the counter `name` in a Prometheus text exposition.
pub fn counter_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        // `name{labels} value`: no timestamps in what relay and agent serve.
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_counter_is_summed_over_its_series_and_nothing_else() {
        let text = "# HELP hawser_requests_total Requests.\n\
                    # TYPE hawser_requests_total counter\n\
                    hawser_requests_total{hawser_cluster=\"bench-0\",http_response_status_code=\"200\"} 1200\n\
                    hawser_requests_total{hawser_cluster=\"bench-0\",http_response_status_code=\"503\"} 3\n\
                    hawser_requests_total_other 7\n\
                    hawser_requests 5\n";
        assert_eq!(counter_sum(text, "hawser_requests_total"), 1203.0);
        assert_eq!(counter_sum(text, "hawser_refusals_total"), 0.0);
        assert_eq!(counter_sum("hawser_requests_total 9\n", "hawser_requests_total"), 9.0);
    }
}
