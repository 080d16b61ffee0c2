//! HTTP/2 abuse against the relay's front door: rapid reset (CVE-2023-44487)
//! and CONTINUATION floods must end the offending connection with a GOAWAY,
//! while the relay keeps serving everyone else; connections that hold no
//! request (silent, or an HTTP/2 header block never finished) are closed.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::routes::Deployment;
use crate::support::Testbed;
use crate::support::hawser::{CLUSTER, Extra, Hawser};
use crate::support::https;
use crate::tunnel::version;

/// A TLS connection to the relay that negotiated `h2`.
pub async fn h2_tls(hawser: &Hawser) -> Result<TlsStream<TcpStream>> {
    let roots = hawser::tls::root_store(&hawser.relay_ca)?;
    let config = hawser::tls::client_config(roots, &[b"h2"])?;
    let authority = hawser.relay_url.strip_prefix("https://").context("relay URL")?;
    let tcp = TcpStream::connect(authority).await?;
    let name = rustls::pki_types::ServerName::try_from("localhost")?.to_owned();
    let tls = TlsConnector::from(Arc::new(config)).connect(name, tcp).await?;
    ensure!(
        tls.get_ref().1.alpn_protocol() == Some(b"h2"),
        "the relay did not negotiate h2"
    );
    Ok(tls)
}

/// A runtime for one test's async part.
pub fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread().enable_all().build()?)
}

/// Rapid reset: open and cancel streams as fast as the client can. The
/// relay answers with GOAWAY (ENHANCE_YOUR_CALM) instead of doing the work.
pub fn h2_rapid_reset_gets_goaway(tb: &Testbed, deployment: &Deployment) -> Result<()> {
    let hawser = deployment.get(tb)?;
    runtime()?.block_on(async {
        let tls = h2_tls(&hawser).await?;
        let (mut client, connection) = h2::client::handshake(tls).await?;
        let driver = tokio::spawn(connection);
        let request = || {
            http::Request::get(format!("{}/healthz", hawser.relay_url))
                .body(())
                .expect("request")
        };
        let mut refused = None;
        for i in 0..5000 {
            match client.send_request(request(), true) {
                Ok((_, mut stream)) => stream.send_reset(h2::Reason::CANCEL),
                Err(e) => {
                    refused = Some((i, e));
                    break;
                }
            }
            if i % 100 == 99 {
                // Let the connection flush, so the resets reach the relay in bursts.
                tokio::task::yield_now().await;
                match client.ready().await {
                    Ok(ready) => client = ready,
                    Err(e) => {
                        refused = Some((i, e));
                        break;
                    }
                }
            }
        }
        let ended = tokio::time::timeout(Duration::from_secs(10), driver)
            .await
            .context("the relay kept the connection open after a reset flood")??;
        let Some((sent, refusal)) = &refused else {
            bail!("the relay accepted 5000 rapid resets without ending the connection");
        };
        // The relay sends GOAWAY ENHANCE_YOUR_CALM and closes; when our writes race the
        // close, the client may only see the broken connection. Either way it ended early.
        let calm = Some(h2::Reason::ENHANCE_YOUR_CALM);
        let closed = |e: &h2::Error| e.reason() == calm || e.is_io();
        ensure!(
            closed(refusal) && ended.as_ref().err().is_none_or(closed),
            "after {sent} resets: expected GOAWAY ENHANCE_YOUR_CALM or a closed connection, got {ended:?} / {refusal:?}"
        );
        Ok(())
    })?;
    let admin = hawser.kubeconfig_route("hawser-admin", &[])?;
    ensure!(
        version(&admin)?.0,
        "the relay stopped serving others after a reset flood"
    );
    Ok(())
}

/// Writes one HTTP/2 frame header and payload.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).expect("frame size").to_be_bytes();
    let mut out = vec![len[1], len[2], len[3], kind, flags];
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// CONTINUATION flood: a header block that never ends. The relay must stop
/// reading it at its header-list limit and end the connection, not buffer
/// it without bound.
pub fn h2_continuation_flood_is_cut(tb: &Testbed, deployment: &Deployment) -> Result<()> {
    const HEADERS: u8 = 0x1;
    const SETTINGS: u8 = 0x4;
    const GOAWAY: u8 = 0x7;
    const CONTINUATION: u8 = 0x9;
    const END_STREAM: u8 = 0x1;
    let hawser = deployment.get(tb)?;
    runtime()?.block_on(async {
        let mut tls = h2_tls(&hawser).await?;
        let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        out.extend(frame(SETTINGS, 0, 0, &[]));
        // :method GET, :scheme https, :path / (static table), then a literal header
        // whose value the CONTINUATION frames keep extending.
        let mut block = vec![0x82, 0x87, 0x84, 0x00, 0x05];
        block.extend_from_slice(b"x-big");
        block.extend_from_slice(&[0x7f, 0xff, 0xff, 0xff, 0x0f]); // a value length of ~32 MiB
        out.extend(frame(HEADERS, END_STREAM, 1, &block));
        tls.write_all(&out).await?;
        let chunk = vec![b'a'; 16 * 1024];
        let mut sent = 0usize;
        let flood = async {
            // 8 MiB of CONTINUATION, far past the 64 KiB header-list limit.
            for _ in 0..512 {
                tls.write_all(&frame(CONTINUATION, 0, 1, &chunk)).await?;
                sent += chunk.len();
            }
            Ok::<_, std::io::Error>(())
        };
        let write = tokio::time::timeout(Duration::from_secs(20), flood).await;
        // Either the relay closed while we were still sending, or it must say GOAWAY now.
        if !matches!(write, Ok(Err(_))) {
            let mut seen = Vec::new();
            let read = tokio::time::timeout(Duration::from_secs(10), async {
                let mut buf = [0u8; 4096];
                loop {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                    if goaway_in(&seen, GOAWAY) {
                        return;
                    }
                }
            })
            .await;
            ensure!(
                read.is_ok(),
                "after {sent} bytes of CONTINUATION the relay neither closed nor sent GOAWAY"
            );
        }
        Ok(())
    })?;
    let admin = hawser.kubeconfig_route("hawser-admin", &[])?;
    ensure!(
        version(&admin)?.0,
        "the relay stopped serving others after a CONTINUATION flood"
    );
    Ok(())
}

/// Whether the server's bytes so far hold a frame of type `goaway`.
fn goaway_in(bytes: &[u8], goaway: u8) -> bool {
    let mut at = 0;
    while at + 9 <= bytes.len() {
        let len = usize::from(bytes[at]) << 16 | usize::from(bytes[at + 1]) << 8 | usize::from(bytes[at + 2]);
        if bytes[at + 3] == goaway {
            return true;
        }
        at += 9 + len;
    }
    false
}

/// How long the relay took to close `conn` (reading and discarding whatever it sends), at most 20 s.
async fn closed_after<S: tokio::io::AsyncRead + Unpin>(conn: &mut S) -> Result<Duration> {
    let started = std::time::Instant::now();
    tokio::time::timeout(Duration::from_secs(20), async {
        let mut buf = [0u8; 4096];
        while matches!(conn.read(&mut buf).await, Ok(n) if n > 0) {}
    })
    .await
    .context("the relay kept the connection open for 20 s")?;
    Ok(started.elapsed())
}

/// Connections holding no request are closed: a TLS connection that never sends a byte and an
/// HTTP/2 header block never finished after `header_read_timeout_secs`, an idle connection after
/// `idle_connection_timeout_secs`; a quiet watch keeps its connection.
pub fn connections_without_requests_are_closed(tb: &Testbed, _: &Deployment) -> Result<()> {
    const HEADERS: u8 = 0x1;
    const SETTINGS: u8 = 0x4;
    let hawser = Hawser::start_with(
        tb,
        &Extra {
            relay: "[limits]\nheader_read_timeout_secs = 2\nidle_connection_timeout_secs = 4\n",
            ..Extra::default()
        },
    )?;
    let in_window = |what: &str, held: Duration, secs: f64| {
        ensure!(
            held.as_secs_f64() >= secs * 0.75 && held.as_secs_f64() < secs + 8.0,
            "{what} was closed after {held:?}, not the configured {secs} s"
        );
        Ok(())
    };
    let token = hawser.issue_token("idle-test", &["dev"])?;
    let ns = tb.namespace("idle")?;
    tb.bind_role(&ns, "cluster-admin", "idle-test")?;
    // A watch on which nothing happens: it must outlive every deadline below.
    let watch = format!(
        "{}/clusters/{CLUSTER}/api/v1/namespaces/{ns}/configmaps?watch=true",
        hawser.relay_url
    );
    let (status, mut quiet_watch) = https::get_and_stall(
        &watch,
        &hawser.relay_ca,
        &[("Authorization", &format!("Bearer {token}"))],
    )?;
    ensure!(status == 200, "the quiet watch got {status}");

    runtime()?.block_on(async {
        // Silent after the TLS handshake: hyper-util is still sniffing the protocol.
        let mut silent = h2_tls(&hawser).await?;
        in_window("a silent connection", closed_after(&mut silent).await?, 2.0)?;

        // An HTTP/2 HEADERS frame without END_HEADERS, and no CONTINUATION ever.
        let mut slow = h2_tls(&hawser).await?;
        let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        out.extend(frame(SETTINGS, 0, 0, &[]));
        out.extend(frame(HEADERS, 0x1, 1, &[0x82, 0x87, 0x84]));
        slow.write_all(&out).await?;
        in_window("an unfinished HTTP/2 header block", closed_after(&mut slow).await?, 2.0)?;

        // A complete request, then nothing: closed after the idle timeout, not the first deadline.
        let tls = h2_tls(&hawser).await?;
        let (client, connection) = h2::client::handshake(tls).await?;
        let driver = tokio::spawn(connection);
        let mut client = client.ready().await?;
        let request = http::Request::get(format!("{}/healthz", hawser.relay_url)).body(())?;
        let (response, _) = client.send_request(request, true)?;
        let mut body = response.await?.into_body();
        while let Some(chunk) = body.data().await {
            chunk?;
        }
        let started = std::time::Instant::now();
        tokio::time::timeout(Duration::from_secs(20), driver)
            .await
            .context("an idle HTTP/2 connection stayed open for 20 s")??
            .ok();
        in_window("an idle HTTP/2 connection", started.elapsed(), 4.0)
    })?;

    // The watch, quiet all along, is still open: a read times out instead of seeing the end.
    quiet_watch.sock.set_read_timeout(Some(Duration::from_millis(300)))?;
    let mut buf = [0u8; 1];
    match std::io::Read::read(&mut quiet_watch, &mut buf) {
        Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => Ok(()),
        other => anyhow::bail!("the quiet watch was ended by the idle deadline: {other:?}"),
    }
}
