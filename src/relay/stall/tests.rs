use std::collections::VecDeque;
use std::task::Waker;

use bytes::Bytes;
use tokio::io::AsyncReadExt;

use super::*;

const BOUND: Duration = Duration::from_secs(60);
const TICK: Duration = Duration::from_millis(10);
const HOUR: Duration = Duration::from_secs(3600);

/// What one poll of a body returns.
type Polled<D, E> = Poll<Option<Result<Frame<D>, E>>>;

/// A body that answers each poll with the next scripted result, then `Pending` for ever.
struct Script(VecDeque<Polled<Bytes, std::io::Error>>);

impl Script {
    fn frames(n: usize) -> Self {
        Self(
            (0..n)
                .map(|_| Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"x"))))))
                .collect(),
        )
    }

    fn then(mut self, next: Polled<Bytes, std::io::Error>) -> Self {
        self.0.push_back(next);
        self
    }
}

impl Body for Script {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Polled<Bytes, std::io::Error> {
        self.0.pop_front().unwrap_or(Poll::Pending)
    }
}

fn noop() -> Context<'static> {
    Context::from_waker(Waker::noop())
}

/// Polls `body` once, as hyper would.
fn poll<B: Body + Unpin>(body: &mut B) -> Polled<B::Data, B::Error> {
    Pin::new(body).poll_frame(&mut noop())
}

/// Whether `stalled` completes within `after` of (paused) time.
async fn stalls_within(stalls: &Stalls, after: Duration) -> Option<Stall> {
    tokio::time::timeout(after, stalls.stalled(BOUND)).await.ok()
}

#[tokio::test(start_paused = true)]
async fn a_response_body_never_polled_is_abandoned_after_the_bound() {
    let stalls = Stalls::new();
    tokio::time::sleep(HOUR).await;
    // The handler took an hour (a slow upstream); the clock starts when the response is handed over.
    let _body = stalls.watch(Script::frames(1), Delivery::Bounded, Version::HTTP_2);
    assert_eq!(stalls_within(&stalls, BOUND - TICK).await, None);
    let stall = stalls_within(&stalls, 2 * TICK).await.expect("stalled at the bound");
    assert_eq!((stall.waiting, stall.watched, stall.socket), (1, 1, false));
    assert!(stall.waited >= BOUND);
}

#[tokio::test(start_paused = true)]
async fn a_body_whose_last_poll_was_pending_is_never_abandoned() {
    let stalls = Stalls::new();
    let mut body = stalls.watch(Script::frames(1), Delivery::Bounded, Version::HTTP_2);
    assert!(poll(&mut body).is_ready());
    assert!(poll(&mut body).is_pending(), "the upstream has nothing yet");
    assert_eq!(stalls_within(&stalls, HOUR).await, None);
}

#[tokio::test(start_paused = true)]
async fn progress_resets_the_clock() {
    let stalls = Stalls::new();
    let mut body = stalls.watch(Script::frames(3), Delivery::Bounded, Version::HTTP_2);
    let waiter = {
        let stalls = stalls.clone();
        tokio::spawn(async move { stalls.stalled(BOUND).await })
    };
    for _ in 0..2 {
        tokio::time::sleep(BOUND - Duration::from_secs(1)).await;
        assert!(poll(&mut body).is_ready(), "hyper took a frame: the caller is reading");
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!waiter.is_finished(), "each frame taken restarts the bound");
    tokio::time::sleep(BOUND).await;
    assert!(waiter.is_finished(), "no frame taken for the bound");
}

#[tokio::test(start_paused = true)]
async fn an_unbounded_body_is_never_abandoned() {
    let stalls = Stalls::new();
    let mut body = stalls.watch(Script::frames(1), Delivery::Unbounded, Version::HTTP_2);
    assert!(poll(&mut body).is_ready());
    // hyper never polls it again (the caller's window is 0), however long.
    assert_eq!(stalls_within(&stalls, HOUR).await, None);
}

#[tokio::test(start_paused = true)]
async fn a_finished_failed_or_dropped_body_is_no_longer_watched() {
    let stalls = Stalls::new();
    let mut done = stalls.watch(
        Script::frames(1).then(Poll::Ready(None)),
        Delivery::Bounded,
        Version::HTTP_2,
    );
    let (_, _) = (poll(&mut done), poll(&mut done));
    let failed = Script(VecDeque::from([Poll::Ready(Some(Err(std::io::Error::other("reset"))))]));
    let mut failed = stalls.watch(failed, Delivery::Bounded, Version::HTTP_2);
    let _ = poll(&mut failed);
    drop(stalls.watch(Script::frames(1), Delivery::Bounded, Version::HTTP_2));
    assert_eq!(stalls_within(&stalls, HOUR).await, None);
    // hyper still holds `done` and `failed`; only the live one is watched.
    let _live = stalls.watch(Script::frames(1), Delivery::Bounded, Version::HTTP_2);
    let stall = stalls_within(&stalls, BOUND + TICK).await.expect("the live one stalls");
    assert_eq!((stall.waiting, stall.watched), (1, 1));
}

#[tokio::test(start_paused = true)]
async fn one_stalled_response_among_busy_ones_is_enough() {
    let stalls = Stalls::new();
    let mut reading = stalls.watch(Script::frames(100), Delivery::Bounded, Version::HTTP_2);
    let _stuck = stalls.watch(Script::frames(1), Delivery::Bounded, Version::HTTP_2);
    let waiter = {
        let stalls = stalls.clone();
        tokio::spawn(async move { stalls.stalled(BOUND).await })
    };
    for _ in 0..9 {
        tokio::time::sleep(BOUND / 10).await;
        let _ = poll(&mut reading);
    }
    let stall = tokio::time::timeout(BOUND / 10 + TICK, waiter)
        .await
        .expect("stalled at the bound")
        .expect("the waiter");
    assert_eq!((stall.waiting, stall.watched), (2, 2));
}

/// A transport whose peer reads nothing until told: 16 bytes fill it.
fn socket(stalls: &Arc<Stalls>) -> (Socket<tokio::io::DuplexStream>, tokio::io::DuplexStream) {
    let (ours, theirs) = tokio::io::duplex(16);
    (stalls.socket(ours), theirs)
}

fn write(socket: &mut Socket<tokio::io::DuplexStream>, data: &[u8]) -> Poll<std::io::Result<usize>> {
    Pin::new(socket).poll_write(&mut noop(), data)
}

#[tokio::test(start_paused = true)]
async fn a_socket_that_takes_no_write_is_abandoned_after_the_bound() {
    let stalls = Stalls::new();
    let (mut ours, mut peer) = socket(&stalls);
    assert!(matches!(write(&mut ours, &[0; 16]), Poll::Ready(Ok(16))));
    assert_eq!(
        stalls_within(&stalls, HOUR).await,
        None,
        "a socket that took every write"
    );
    assert!(write(&mut ours, b"x").is_pending(), "the peer's window is full");
    let waiter = {
        let stalls = stalls.clone();
        tokio::spawn(async move { stalls.stalled(BOUND).await })
    };
    tokio::time::sleep(BOUND - Duration::from_secs(1)).await;
    // The peer reads a little: the next write goes through and the clock starts again.
    let mut buf = [0; 8];
    peer.read_exact(&mut buf).await.unwrap();
    assert!(write(&mut ours, &[0; 16]).is_ready());
    assert!(write(&mut ours, b"x").is_pending());
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!waiter.is_finished(), "a write taken restarts the bound");
    tokio::time::sleep(BOUND).await;
    let stall = tokio::time::timeout(TICK, waiter)
        .await
        .expect("stalled")
        .expect("the waiter");
    assert!(stall.socket && stall.waited >= BOUND, "{stall:?}");
}

#[tokio::test(start_paused = true)]
async fn a_full_socket_under_an_unbounded_http1_response_is_not_abandoned() {
    let stalls = Stalls::new();
    let (mut ours, _peer) = socket(&stalls);
    let watch = stalls.watch(Script::frames(1), Delivery::Unbounded, Version::HTTP_11);
    assert!(write(&mut ours, &[0; 16]).is_ready());
    assert!(write(&mut ours, b"x").is_pending());
    // The caller leaves its own watch unread, and the socket is the watch's alone: its right.
    assert_eq!(stalls_within(&stalls, HOUR).await, None);
    // Once the watch is over, bytes the caller does not take are a stall again.
    drop(watch);
    assert!(stalls_within(&stalls, TICK).await.is_some_and(|stall| stall.socket));
}

#[tokio::test(start_paused = true)]
async fn a_full_socket_is_abandoned_whatever_http2_streams_it_carries() {
    let stalls = Stalls::new();
    let (mut ours, _peer) = socket(&stalls);
    let _watch = stalls.watch(Script::frames(1), Delivery::Unbounded, Version::HTTP_2);
    assert!(write(&mut ours, &[0; 16]).is_ready());
    assert!(write(&mut ours, b"x").is_pending());
    // An HTTP/2 caller leaves a stream unread with its window; one that reads nothing at all would
    // otherwise park every other answer behind its watch.
    assert_eq!(stalls_within(&stalls, BOUND - TICK).await, None);
    assert!(stalls_within(&stalls, 2 * TICK).await.is_some_and(|stall| stall.socket));
}

#[test]
fn the_registry_stays_near_the_bodies_live() {
    let stalls = Stalls::new();
    let held: Vec<_> = (0..10)
        .map(|_| stalls.watch((), Delivery::Bounded, Version::HTTP_11))
        .collect();
    for _ in 0..100_000 {
        drop(stalls.watch((), Delivery::Bounded, Version::HTTP_11));
    }
    let len = stalls.watches.lock().unwrap().len();
    assert!(len <= 2 * held.len(), "{len} entries for {} live bodies", held.len());
}

#[test]
fn only_an_accepted_long_running_stream_is_unbounded() {
    use Delivery::{Bounded, Unbounded};
    use Exchange::{Plain, Stream, Upgrade};
    let cases = [
        (Stream, StatusCode::OK, false, Unbounded),
        (Upgrade, StatusCode::SWITCHING_PROTOCOLS, false, Unbounded),
        (Stream, StatusCode::UNAUTHORIZED, false, Bounded),
        (Stream, StatusCode::FORBIDDEN, false, Bounded),
        (Stream, StatusCode::TOO_MANY_REQUESTS, false, Bounded),
        (Stream, StatusCode::INTERNAL_SERVER_ERROR, false, Bounded),
        // A "watch" the apiserver answered with a finished body is not a stream.
        (Stream, StatusCode::OK, true, Bounded),
        // Upgrade headers on a request the apiserver answered as a plain one.
        (Upgrade, StatusCode::OK, false, Bounded),
        (Plain, StatusCode::OK, false, Bounded),
        (Plain, StatusCode::SWITCHING_PROTOCOLS, false, Bounded),
    ];
    for (exchange, status, has_length, expected) in cases {
        assert_eq!(
            Delivery::of_forwarded(exchange, status, has_length),
            expected,
            "{exchange:?} {status} {has_length}"
        );
    }
}
