//! Callers that never read their responses (slow read): a connection whose responses wait on the
//! caller for `response_stall_timeout_secs` is closed, over HTTP/2 (window 0) and HTTP/1.1 (a full
//! TCP window), unauthenticated requests included; an admitted watch the caller does not read
//! keeps its connection.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::h2flood::{h2_tls, runtime};
use crate::routes::Deployment;
use crate::support::hawser::{CLUSTER, Extra, Hawser};
use crate::support::{Testbed, https};

/// The relay's bound in these tests, in seconds.
const STALL_SECS: u64 = 2;
/// How long the relay may take to close a stalled connection before the test fails.
const DEADLINE: Duration = Duration::from_secs(20);

fn start(tb: &Testbed) -> Result<Hawser> {
    let relay = format!("[limits]\nresponse_stall_timeout_secs = {STALL_SECS}\n");
    Hawser::start_with(
        tb,
        &Extra {
            relay: &relay,
            ..Extra::default()
        },
    )
}

/// An HTTP/2 client whose streams have a receive window of 0: it takes response heads, never a
/// byte of a body. Returns the client and the task driving its connection, which ends when the
/// relay closes it.
async fn window_zero_client(
    hawser: &Hawser,
) -> Result<(
    h2::client::SendRequest<bytes::Bytes>,
    tokio::task::JoinHandle<Result<(), h2::Error>>,
)> {
    let tls = h2_tls(hawser).await?;
    let (client, connection) = h2::client::Builder::new().initial_window_size(0).handshake(tls).await?;
    Ok((client, tokio::spawn(connection)))
}

/// HTTP/2 slow read: many unauthenticated requests (401, then 429 once the source's failure budget
/// is spent) on a connection whose window is 0. The relay closes it soon after the bound. A watch
/// the caller was admitted to, on another window-0 connection, is read at the caller's pace and
/// outlives the bound several times over.
pub fn h2_caller_that_reads_nothing_is_disconnected(tb: &Testbed, _: &Deployment) -> Result<()> {
    let hawser = start(tb)?;
    let user = "stall-h2";
    let token = hawser.issue_token(user, &["dev"])?;
    let ns = tb.namespace("stall")?;
    tb.bind_role(&ns, "cluster-admin", user)?;
    // Something for the watch to send at once, so its body holds bytes the caller does not take.
    tb.set_value(&ns, "first", "1")?;
    let (status, _) = https::get(&format!("{}/healthz", hawser.relay_url), &hawser.relay_ca, &[])?;
    ensure!(status == 200, "the relay is not serving: {status}");

    runtime()?.block_on(async {
        let (watch_client, watch_conn) = window_zero_client(&hawser).await?;
        let mut watch_client = watch_client.ready().await?;
        let watch = http::Request::get(format!(
            "{}/clusters/{CLUSTER}/api/v1/namespaces/{ns}/configmaps?watch=true",
            hawser.relay_url
        ))
        .header("authorization", format!("Bearer {token}"))
        .body(())?;
        let (watch_response, _) = watch_client.send_request(watch, true)?;
        let watch_response = tokio::time::timeout(DEADLINE, watch_response)
            .await
            .context("no answer to the watch")??;
        ensure!(
            watch_response.status() == 200,
            "the watch got {}",
            watch_response.status()
        );
        let watch_started = Instant::now();

        let (mut client, conn) = window_zero_client(&hawser).await?;
        let started = Instant::now();
        let mut responses = Vec::new();
        for _ in 0..100 {
            client = client.ready().await?;
            let request = http::Request::get(format!("{}/clusters/{CLUSTER}/api", hawser.relay_url)).body(())?;
            responses.push(client.send_request(request, true)?.0);
        }
        // Kept, not dropped: dropping one would reset its stream, and the relay would drop its body.
        let mut heads = Vec::new();
        for response in responses {
            heads.push(
                tokio::time::timeout(DEADLINE, response)
                    .await
                    .context("a response head never came")??,
            );
        }
        let statuses: Vec<u16> = heads.iter().map(|head| head.status().as_u16()).collect();
        ensure!(
            statuses.first() == Some(&401) && statuses.iter().all(|s| [401, 429].contains(s)),
            "expected 401 then 429 answers, got {statuses:?}"
        );
        tokio::time::timeout(DEADLINE, conn)
            .await
            .with_context(|| format!("the relay kept a connection holding 100 unread answers open for {DEADLINE:?}"))?
            .context("the connection task")?
            .ok();
        let held = started.elapsed();
        drop(heads);
        ensure!(
            held >= Duration::from_secs(STALL_SECS) * 3 / 4,
            "closed after {held:?}, before the {STALL_SECS} s bound: not the stall rule"
        );
        eprintln!("h2: a connection with 100 unread answers was closed after {held:?}");

        // Asserting that something does not happen takes a wait: the watch, unread as long as
        // the bound and more, must still be open.
        tokio::time::sleep_until((watch_started + Duration::from_secs(3 * STALL_SECS)).into()).await;
        ensure!(
            !watch_conn.is_finished(),
            "the relay closed an admitted watch because its caller read nothing: {:?}",
            watch_conn.await
        );
        drop((watch_response, watch_client));
        anyhow::Ok(())
    })?;
    let (status, _) = https::get(&format!("{}/healthz", hawser.relay_url), &hawser.relay_ca, &[])?;
    ensure!(status == 200, "the relay stopped serving others: {status}");
    Ok(())
}

/// An HTTP/1.1 TLS connection to the relay whose TCP receive buffer is a few KiB, so the relay's
/// writes block soon after the caller stops reading.
async fn small_window_tls(hawser: &Hawser) -> Result<TlsStream<TcpStream>> {
    let authority = hawser.relay_url.strip_prefix("https://").context("relay URL")?;
    let socket = TcpSocket::new_v4()?;
    // Set before connecting, so the window the relay is offered stays small.
    socket.set_recv_buffer_size(4096)?;
    let tcp = socket.connect(authority.parse()?).await?;
    let roots = hawser::tls::root_store(&hawser.relay_ca)?;
    let config = hawser::tls::client_config(roots, &[b"http/1.1"])?;
    let name = rustls::pki_types::ServerName::try_from("localhost")?.to_owned();
    Ok(TlsConnector::from(Arc::new(config)).connect(name, tcp).await?)
}

/// HTTP/1.1 slow read: a caller with a small receive buffer pipelines unauthenticated requests and
/// never reads, so the relay's writes block. The relay closes the connection, which the caller sees
/// as a failed write. An admitted watch whose caller reads only its head, with events far larger
/// than the buffers on the way, keeps its connection: the socket is that watch's alone.
pub fn h1_caller_that_reads_nothing_is_disconnected(tb: &Testbed, _: &Deployment) -> Result<()> {
    let hawser = start(tb)?;
    let user = "stall-h1";
    let token = hawser.issue_token(user, &["dev"])?;
    let ns = tb.namespace("stall")?;
    tb.bind_role(&ns, "cluster-admin", user)?;
    // The watch's first events (8 × 900 kB) outgrow every buffer between relay and caller (the
    // relay's socket buffer grows to 4 MiB here), so the relay's socket fills with them.
    let items: Vec<_> = (0..8)
        .map(|i| {
            serde_json::json!({
                "apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": format!("big-{i}"), "namespace": ns},
                "data": {"v": "x".repeat(900_000)},
            })
        })
        .collect();
    let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items});
    tb.admin()
        .ok_with_stdin(&["create", "-f", "-"], list.to_string().as_bytes())?;
    let authority = hawser
        .relay_url
        .strip_prefix("https://")
        .context("relay URL")?
        .to_owned();
    let request = format!("GET /clusters/{CLUSTER}/api HTTP/1.1\r\nHost: {authority}\r\n\r\n").repeat(64);
    runtime()?.block_on(async {
        let mut watch = small_window_tls(&hawser).await?;
        let get = format!(
            "GET /clusters/{CLUSTER}/api/v1/namespaces/{ns}/configmaps?watch=true HTTP/1.1\r\n\
             Host: {authority}\r\nAuthorization: Bearer {token}\r\n\r\n"
        );
        watch.write_all(get.as_bytes()).await?;
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            head.push(
                tokio::time::timeout(DEADLINE, watch.read_u8())
                    .await
                    .context("no watch head")??,
            );
        }
        let head = String::from_utf8_lossy(&head);
        ensure!(head.starts_with("HTTP/1.1 200"), "the watch got {head}");
        let watch_started = Instant::now();

        let mut tls = small_window_tls(&hawser).await?;
        let started = Instant::now();
        let mut sent = 0usize;
        // Writes go on until the relay closes the connection: it stops reading once it cannot write.
        let failed = tokio::time::timeout(DEADLINE, async {
            loop {
                if let Err(e) = tls.write_all(request.as_bytes()).await {
                    return e;
                }
                if let Err(e) = tls.flush().await {
                    return e;
                }
                sent += 64;
            }
        })
        .await
        .map_err(|_| {
            anyhow::anyhow!("after writing {sent} requests, the relay kept the unread connection open for {DEADLINE:?}")
        })?;
        eprintln!(
            "h1: closed after {:?}, {sent} requests written ({failed})",
            started.elapsed()
        );

        // Asserting that something does not happen takes a wait: the watch, unread as long as the
        // bound and more, must still be open. Reading it now drains the event and then waits for
        // the next, where a closed connection would end.
        tokio::time::sleep_until((watch_started + Duration::from_secs(3 * STALL_SECS)).into()).await;
        let (mut read, mut buf) = (0usize, vec![0u8; 64 * 1024]);
        loop {
            match tokio::time::timeout(Duration::from_secs(2), watch.read(&mut buf)).await {
                Err(_) => break,
                Ok(Ok(0)) | Ok(Err(_)) => {
                    bail!("the relay closed an admitted HTTP/1.1 watch its caller left unread, after {read} bytes")
                }
                Ok(Ok(n)) => read += n,
            }
        }
        ensure!(
            read > 7_200_000,
            "the watch sent only {read} bytes: its events are missing"
        );
        anyhow::Ok(())
    })?;
    let (status, _) = https::get(&format!("{}/healthz", hawser.relay_url), &hawser.relay_ca, &[])?;
    ensure!(status == 200, "the relay stopped serving others: {status}");
    Ok(())
}
