//! Closes connections that hold no request for too long: the callers' and the admin listener's.
//!
//! hyper's `header_read_timeout` guards an HTTP/1.1 request head once its first bytes have
//! arrived. It does not guard the bytes before that (a TLS connection that then sends nothing
//! while hyper-util sniffs the protocol), and HTTP/2 has no such timer at all: a caller can open a
//! connection and trickle a HEADERS block that never ends. Both hold a connection without any
//! request reaching the service, which is what [`Activity`] watches: a connection with no request
//! in flight is closed after `first` until its first request, and after `idle` between requests.
//! A request is in flight from the moment hyper hands it over until its response body is done
//! or dropped, so a watch or `logs -f` keeps its connection however quiet it is.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

/// Requests in flight on one caller connection, and since when it has had none.
#[derive(Debug)]
pub struct Activity {
    state: Mutex<State>,
    changed: Notify,
}

#[derive(Debug, Clone, Copy)]
struct State {
    in_flight: usize,
    idle_since: Instant,
    served: u64,
}

/// One request in flight; dropping it ends the request for [`Activity`].
#[derive(Debug)]
pub struct Busy(Arc<Activity>);

impl Activity {
    /// A connection that has just been accepted and has served nothing.
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(State {
                in_flight: 0,
                idle_since: Instant::now(),
                served: 0,
            }),
            changed: Notify::new(),
        })
    }

    /// Marks a request as started; it ends when the returned guard drops.
    pub fn begin(self: &Arc<Self>) -> Busy {
        self.update(|s| {
            s.in_flight += 1;
            s.served += 1;
        });
        Busy(self.clone())
    }

    /// Completes once the connection has had no request in flight for `first` (before its first
    /// request) or `idle` (after one); never completes while a request is in flight.
    pub async fn expired(&self, first: Duration, idle: Duration) {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            // Registered before the snapshot, so no change between the two is missed.
            notified.as_mut().enable();
            let state = self.snapshot();
            if state.in_flight > 0 {
                notified.await;
                continue;
            }
            let limit = if state.served == 0 { first } else { idle };
            tokio::select! {
                biased;
                () = &mut notified => continue,
                () = tokio::time::sleep_until(state.idle_since + limit) => return,
            }
        }
    }

    /// Completes once the connection has had its first request (at once if it has had one).
    pub async fn first_request(&self) {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.snapshot().served > 0 {
                return;
            }
            notified.await;
        }
    }

    fn snapshot(&self) -> State {
        *self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn update(&self, change: impl FnOnce(&mut State)) {
        change(&mut self.state.lock().unwrap_or_else(|e| e.into_inner()));
        self.changed.notify_waiters();
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.update(|s| {
            s.in_flight -= 1;
            if s.in_flight == 0 {
                s.idle_since = Instant::now();
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIRST: Duration = Duration::from_secs(30);
    const IDLE: Duration = Duration::from_secs(120);

    /// Whether `expired` completes within `after` of (paused) time.
    async fn expires_within(activity: &Activity, after: Duration) -> bool {
        tokio::time::timeout(after, activity.expired(FIRST, IDLE)).await.is_ok()
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_that_never_sends_a_request_expires_after_first() {
        let activity = Activity::new();
        assert!(!expires_within(&activity, FIRST - Duration::from_millis(10)).await);
        assert!(expires_within(&activity, Duration::from_millis(20)).await);
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_in_flight_holds_the_connection_however_long() {
        let activity = Activity::new();
        let busy = activity.begin();
        assert!(!expires_within(&activity, Duration::from_secs(3600)).await);
        drop(busy);
        assert!(!expires_within(&activity, IDLE - Duration::from_millis(10)).await);
        assert!(expires_within(&activity, Duration::from_millis(20)).await);
    }

    #[tokio::test(start_paused = true)]
    async fn first_request_waits_for_one_then_completes_at_once() {
        let activity = Activity::new();
        let waiter = {
            let activity = activity.clone();
            tokio::spawn(async move { activity.first_request().await })
        };
        tokio::time::sleep(Duration::from_secs(3600)).await;
        assert!(!waiter.is_finished(), "no request yet");
        drop(activity.begin());
        tokio::time::timeout(Duration::from_millis(10), waiter)
            .await
            .expect("the first request ends the wait")
            .expect("the waiter ran");
        let again = tokio::time::timeout(Duration::from_millis(10), activity.first_request()).await;
        assert!(again.is_ok(), "a connection that has had a request waits for nothing");
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_started_while_waiting_resets_the_clock() {
        let activity = Activity::new();
        let waiter = {
            let activity = activity.clone();
            tokio::spawn(async move { activity.expired(FIRST, IDLE).await })
        };
        tokio::time::sleep(FIRST - Duration::from_secs(1)).await;
        drop(activity.begin());
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(
            !waiter.is_finished(),
            "the first deadline no longer applies once a request was served"
        );
        tokio::time::sleep(IDLE).await;
        assert!(waiter.is_finished());
    }
}
