//! Loopback helpers: free ports and a TCP echo server.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::Duration;

use anyhow::{Context, Result, bail};

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A port that was free a moment ago on 127.0.0.1 for TCP and UDP alike, as a relay or a cloud
/// balancer serves both on one port.
pub fn free_tcp_and_udp_port() -> Result<u16> {
    for _ in 0..100 {
        let tcp = TcpListener::bind("127.0.0.1:0")?;
        let port = tcp.local_addr()?.port();
        if UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    bail!("no port of 100 tried was free for both TCP and UDP on 127.0.0.1")
}

/// Runs `start` again, three times in all at most, while it fails because a port picked free was
/// taken before it was bound: outgoing connections take ports from the same ephemeral range.
pub fn retry_if_port_taken<T>(what: &str, mut start: impl FnMut() -> Result<T>) -> Result<T> {
    let mut attempt = 1;
    loop {
        match start() {
            Err(e) if attempt < 3 && format!("{e:#}").to_lowercase().contains("address already in use") => {
                eprintln!("{what}: a picked port was taken before it was bound; starting again");
                attempt += 1;
            }
            started => return started,
        }
    }
}

/// Status code and body of a plain HTTP request to 127.0.0.1:`port` (`body` as JSON). HTTP/1.0, so
/// the answer is never chunked and ends when the server closes.
pub fn http(port: u16, method: &str, path: &str, body: &str) -> Result<(u16, String)> {
    let mut conn = TcpStream::connect(("127.0.0.1", port)).with_context(|| format!("connecting to port {port}"))?;
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        conn,
        "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut response = String::new();
    conn.read_to_string(&mut response)?;
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("no HTTP status line in {response:?}"))?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// A TCP server on 127.0.0.1 that echoes every connection's bytes back.
/// It lives as long as the test process; each connection has its own thread.
pub fn echo_server() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            thread::spawn(move || echo(conn));
        }
    });
    Ok(port)
}

fn echo(mut conn: TcpStream) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if conn.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = conn.shutdown(Shutdown::Both);
}

/// A TCP server on 127.0.0.1 that writes to every connection as fast as it
/// is read, forever; the counter says how many bytes it has written.
pub fn firehose_server() -> Result<(u16, Arc<AtomicU64>)> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    let written = Arc::new(AtomicU64::new(0));
    let counter = written.clone();
    thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let counter = counter.clone();
            thread::spawn(move || {
                let chunk = vec![0x5au8; 64 * 1024];
                while let Ok(n) = conn.write(&chunk) {
                    counter.fetch_add(n as u64, Ordering::Relaxed);
                }
            });
        }
    });
    Ok((port, written))
}

/// A UDP forwarder on 127.0.0.1 that drops every datagram until it is opened to a target: a
/// network where UDP is blocked, and then is not. Each client address gets its own upstream
/// socket, so the target tells clients apart by source port as it would without the gate. It
/// lives as long as the test process.
pub struct UdpGate {
    /// Where clients send.
    pub addr: std::net::SocketAddr,
    open: Arc<std::sync::atomic::AtomicBool>,
    target: Arc<std::sync::Mutex<Option<std::net::SocketAddr>>>,
}

impl UdpGate {
    /// A closed gate.
    pub fn new() -> Result<Self> {
        use std::collections::HashMap;
        use std::net::UdpSocket;
        let front = Arc::new(UdpSocket::bind("127.0.0.1:0")?);
        let addr = front.local_addr()?;
        let open = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let target = Arc::new(std::sync::Mutex::new(None));
        let (gate, listen, to) = (open.clone(), front.clone(), target.clone());
        thread::spawn(move || {
            let mut upstreams: HashMap<std::net::SocketAddr, Arc<UdpSocket>> = HashMap::new();
            let mut buf = vec![0u8; 65536];
            while let Ok((n, client)) = listen.recv_from(&mut buf) {
                let target = *to.lock().unwrap();
                let (true, Some(target)) = (gate.load(Ordering::SeqCst), target) else {
                    continue;
                };
                let upstream = match upstreams.get(&client) {
                    Some(upstream) => upstream.clone(),
                    None => {
                        let Ok(socket) = UdpSocket::bind("127.0.0.1:0") else {
                            continue;
                        };
                        if socket.connect(target).is_err() {
                            continue;
                        }
                        let socket = Arc::new(socket);
                        let (back, front, gate) = (socket.clone(), listen.clone(), gate.clone());
                        thread::spawn(move || {
                            let mut buf = vec![0u8; 65536];
                            while let Ok(n) = back.recv(&mut buf) {
                                if gate.load(Ordering::SeqCst) {
                                    let _ = front.send_to(&buf[..n], client);
                                }
                            }
                        });
                        upstreams.insert(client, socket.clone());
                        socket
                    }
                };
                let _ = upstream.send(&buf[..n]);
            }
        });
        Ok(Self { addr, open, target })
    }

    /// Lets datagrams through to `target` from now on.
    pub fn open_to(&self, target: std::net::SocketAddr) {
        *self.target.lock().unwrap() = Some(target);
        self.open.store(true, Ordering::SeqCst);
    }
}
