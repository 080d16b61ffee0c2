//! The HTTP/2 tunnel over an in-memory pipe: the framing's stream semantics, per-stream flow
//! control, closing with a reason, and dead-peer detection.

use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;

use super::*;
use crate::transport::{next_chunk, write_chunk};
use crate::wire::reset;
use tokio_util::sync::CancellationToken;

type Pipe = tokio::io::DuplexStream;

/// A relay side and an agent side joined by a pipe; the agent's streams come out of the channel,
/// and the agent's serve loop's last word out of the join handle.
struct Tunnel {
    relay: H2Tunnel,
    streams: mpsc::Receiver<(H2Send, H2Recv)>,
    retire: CancellationToken,
    moving: CancellationToken,
    agent: tokio::task::JoinHandle<String>,
    relay_ended: tokio::task::JoinHandle<String>,
}

async fn tunnel(config: TunnelConfig) -> Tunnel {
    let (relay_io, agent_io) = tokio::io::duplex(256 * 1024);
    let agent_config = config.clone();
    let (tx, streams) = mpsc::channel(16);
    let retire = CancellationToken::new();
    let retiring = retire.clone();
    let moving = CancellationToken::new();
    let moved = moving.clone();
    let agent = tokio::spawn(async move {
        let side: AgentSide<Pipe> = agent_side(agent_io, &agent_config).await.unwrap();
        side.serve(
            move |send, recv| {
                tx.try_send((send, recv)).unwrap();
            },
            retiring,
            CancellationToken::new(),
            moved,
        )
        .await
    });
    let addr = "127.0.0.1:1".parse().unwrap();
    let (relay, run) = relay_side(relay_io, addr, &config).await.unwrap();
    let relay_ended = tokio::spawn(run);
    Tunnel {
        relay,
        streams,
        retire,
        moving,
        agent,
        relay_ended,
    }
}

async fn read_all<R: RecvHalf>(recv: &mut R) -> Result<Vec<u8>, StreamError> {
    let mut all = Vec::new();
    while let Some(chunk) = next_chunk(recv).await? {
        all.extend_from_slice(&chunk);
    }
    Ok(all)
}

#[tokio::test]
async fn chunks_finishes_and_resets_cross_as_they_do_on_quic() {
    let mut t = tunnel(TunnelConfig::default()).await;
    let (mut send, mut recv) = t.relay.open().await.unwrap();
    send.send_chunks(&mut [Bytes::from_static(b"hello "), Bytes::from_static(b"agent")])
        .await
        .unwrap();
    send.end();
    let (mut agent_send, mut agent_recv) = t.streams.recv().await.unwrap();
    assert_eq!(read_all(&mut agent_recv).await.unwrap(), b"hello agent");
    write_chunk(&mut agent_send, Bytes::from_static(b"partial"))
        .await
        .unwrap();
    let first = next_chunk(&mut recv).await.unwrap();
    assert_eq!(first.as_deref(), Some(&b"partial"[..]));
    // As on QUIC, a reset may discard what was not read yet: the framing fails the body either way.
    agent_send.cut(reset::SOURCE_FAILED);
    assert_eq!(
        next_chunk(&mut recv).await,
        Err(StreamError::Reset(u64::from(reset::SOURCE_FAILED))),
        "the framing's reset code arrives as sent"
    );
}

#[tokio::test]
async fn a_reader_that_stops_stops_its_sender_with_the_code() {
    let mut t = tunnel(TunnelConfig::default()).await;
    let (mut send, _recv) = t.relay.open().await.unwrap();
    write_chunk(&mut send, Bytes::from_static(b"head")).await.unwrap();
    let (_agent_send, mut agent_recv) = t.streams.recv().await.unwrap();
    assert_eq!(
        next_chunk(&mut agent_recv).await.unwrap().as_deref(),
        Some(&b"head"[..])
    );
    agent_recv.stop_reading(reset::BAD_HEAD);
    tokio::time::timeout(Duration::from_secs(5), send.stopped())
        .await
        .expect("the sender learns that its reader stopped");
    let more = write_chunk(&mut send, Bytes::from_static(b"more")).await;
    assert_eq!(more, Err(StreamError::Stopped(u64::from(reset::BAD_HEAD))));
}

#[tokio::test]
async fn a_dropped_stream_stops_its_peer_with_code_zero() {
    let mut t = tunnel(TunnelConfig::default()).await;
    let (mut send, recv) = t.relay.open().await.unwrap();
    write_chunk(&mut send, Bytes::from_static(b"head")).await.unwrap();
    send.end();
    let (agent_send, _agent_recv) = t.streams.recv().await.unwrap();
    // The caller went away: the relay drops its side of the exchange.
    drop(recv);
    drop(send);
    tokio::time::timeout(Duration::from_secs(5), agent_send.stopped())
        .await
        .expect("the agent learns that nobody reads its answer");
}

#[tokio::test]
async fn a_stalled_reader_stalls_only_its_own_stream() {
    let config = TunnelConfig {
        stream_receive_window: 64 * 1024,
        ..TunnelConfig::default()
    };
    let mut t = tunnel(config).await;
    let (mut stalled, _stalled_recv) = t.relay.open().await.unwrap();
    write_chunk(&mut stalled, Bytes::from_static(b"x")).await.unwrap();
    let (_a_send, _never_read) = t.streams.recv().await.unwrap();
    let blocked = tokio::spawn(async move {
        let big = Bytes::from(vec![7u8; 4 * 1024 * 1024]);
        write_chunk(&mut stalled, big).await
    });
    let (mut moving, _moving_recv) = t.relay.open().await.unwrap();
    let total = 32 * 1024 * 1024;
    let writer = tokio::spawn(async move {
        for _ in 0..total / (1024 * 1024) {
            write_chunk(&mut moving, Bytes::from(vec![1u8; 1024 * 1024]))
                .await
                .unwrap();
        }
        moving.end();
    });
    let (_b_send, mut b_recv) = t.streams.recv().await.unwrap();
    let read = tokio::time::timeout(Duration::from_secs(30), read_all(&mut b_recv))
        .await
        .expect("the other stream is not held up")
        .unwrap();
    assert_eq!(read.len(), total);
    writer.await.unwrap();
    assert!(
        !blocked.is_finished(),
        "the stalled stream's sender waits for its window, buffering nothing unbounded"
    );
}

#[tokio::test]
async fn a_move_notice_reaches_the_agent_and_the_tunnel_stays_up() {
    let mut t = tunnel(TunnelConfig::default()).await;
    t.relay.notify(Notice::Move {
        reason: "draining".into(),
    });
    tokio::time::timeout(Duration::from_secs(5), t.moving.cancelled())
        .await
        .expect("the agent heard the notice");
    let (mut send, _recv) = t.relay.open().await.unwrap();
    write_chunk(&mut send, Bytes::from_static(b"still up")).await.unwrap();
    let (_s, mut agent_recv) = t.streams.recv().await.unwrap();
    assert_eq!(next_chunk(&mut agent_recv).await.unwrap().unwrap(), "still up");
    t.relay.close(3, b"bye");
    let why = tokio::time::timeout(Duration::from_secs(5), t.agent)
        .await
        .unwrap()
        .unwrap();
    assert!(
        why.contains("(3): bye"),
        "the closing after a notice is still read: {why}"
    );
}

#[tokio::test]
async fn closing_tells_the_agent_why() {
    let t = tunnel(TunnelConfig::default()).await;
    t.relay.close(5, b"agent token revoked");
    let said = tokio::time::timeout(Duration::from_secs(5), t.agent)
        .await
        .expect("the agent's serve loop ends")
        .unwrap();
    assert_eq!(said, "the relay closed the tunnel (5): agent token revoked");
    let relay = tokio::time::timeout(Duration::from_secs(5), t.relay_ended)
        .await
        .unwrap()
        .unwrap();
    assert!(relay.starts_with("closed (5)"), "{relay}");
}

#[tokio::test(start_paused = true)]
async fn a_peer_that_stops_answering_is_given_up_within_the_idle_timeout() {
    let config = TunnelConfig {
        keep_alive_secs: 2,
        idle_timeout_secs: 7,
        ..TunnelConfig::default()
    };
    // An agent that accepted the connection and then hung: the pipe stays open, nothing answers.
    let (relay_io, _agent_io) = tokio::io::duplex(256 * 1024);
    let (_tunnel, run) = relay_side(relay_io, "127.0.0.1:1".parse().unwrap(), &config)
        .await
        .unwrap();
    let started = tokio::time::Instant::now();
    let said = run.await;
    assert_eq!(said, "the agent stopped answering pings");
    let waited = started.elapsed();
    assert!(
        waited <= Duration::from_secs(7) && waited >= Duration::from_secs(5),
        "noticed after {waited:?}"
    );
}

#[tokio::test]
async fn an_open_waits_at_the_agents_stream_limit() {
    // The control stream takes one of the three.
    let config = TunnelConfig {
        max_streams_per_tunnel: 3,
        ..TunnelConfig::default()
    };
    let mut t = tunnel(config).await;
    let (mut first, _first_recv) = t.relay.open().await.unwrap();
    write_chunk(&mut first, Bytes::from_static(b"1")).await.unwrap();
    // A round trip: the agent's settings (its limit) have reached the relay.
    let (first_agent_send, first_agent_recv) = t.streams.recv().await.unwrap();
    let (mut second, _second_recv) = t.relay.open().await.unwrap();
    write_chunk(&mut second, Bytes::from_static(b"2")).await.unwrap();
    let _second_agent = t.streams.recv().await.unwrap();
    let relay = t.relay.clone();
    let mut third = tokio::spawn(async move { relay.open().await.map(|_| ()) });
    assert!(
        tokio::time::timeout(Duration::from_millis(300), &mut third)
            .await
            .is_err(),
        "a third open waits while two streams are open"
    );
    // The first exchange ends both ways: its slot frees.
    first.end();
    drop((first_agent_send, first_agent_recv));
    drop(first);
    drop(_first_recv);
    tokio::time::timeout(Duration::from_secs(5), third)
        .await
        .expect("the open goes through once a stream ends")
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn a_retired_tunnel_takes_no_new_streams_and_ends_with_its_last_one() {
    let mut t = tunnel(TunnelConfig::default()).await;
    let (mut send, mut recv) = t.relay.open().await.unwrap();
    write_chunk(&mut send, Bytes::from_static(b"watch")).await.unwrap();
    let (mut agent_send, mut agent_recv) = t.streams.recv().await.unwrap();
    assert_eq!(
        next_chunk(&mut agent_recv).await.unwrap().as_deref(),
        Some(&b"watch"[..])
    );
    t.retire.cancel();
    tokio::time::timeout(Duration::from_secs(5), t.relay.retired())
        .await
        .expect("the relay hears that the agent retires the tunnel");
    assert!(t.relay.open().await.is_err(), "no new stream on a retired tunnel");
    // The exchange in flight goes on.
    write_chunk(&mut agent_send, Bytes::from_static(b"event"))
        .await
        .unwrap();
    assert_eq!(next_chunk(&mut recv).await.unwrap().as_deref(), Some(&b"event"[..]));
    assert!(
        !t.agent.is_finished(),
        "the tunnel lives while an exchange is in flight"
    );
    agent_send.end();
    send.end();
    assert_eq!(next_chunk(&mut recv).await, Ok(None));
    assert_eq!(next_chunk(&mut agent_recv).await, Ok(None));
    drop((send, recv, agent_send, agent_recv));
    let said = tokio::time::timeout(Duration::from_secs(5), t.agent)
        .await
        .expect("the retired tunnel ends with its last exchange")
        .unwrap();
    assert_eq!(said, "retired: its streams are done");
    tokio::time::timeout(Duration::from_secs(5), t.relay_ended)
        .await
        .expect("the relay's side ends too")
        .unwrap();
}
