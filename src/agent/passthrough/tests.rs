use std::sync::atomic::AtomicUsize;

use futures_util::future::join_all;
use governor::clock::FakeRelativeClock;

use super::*;
use crate::status::AuthFailure;

/// A fake apiserver: counts TokenReviews and answers each after `delay`
/// (paused time: it elapses once every caller is waiting).
struct FakeApi {
    reviews: AtomicUsize,
    status: StatusCode,
    /// Tokens it accepts; any other is refused.
    valid: Vec<&'static str>,
    delay: Duration,
}

impl FakeApi {
    fn accepting(valid: &[&'static str]) -> Self {
        Self {
            reviews: AtomicUsize::new(0),
            status: StatusCode::CREATED,
            valid: valid.to_vec(),
            delay: Duration::from_millis(50),
        }
    }

    fn failing(status: StatusCode) -> Self {
        Self {
            status,
            ..Self::accepting(&[])
        }
    }

    fn reviews(&self) -> usize {
        self.reviews.load(Ordering::SeqCst)
    }
}

impl ReviewApi for FakeApi {
    async fn token_review(&self, review: &serde_json::Value) -> Result<(StatusCode, serde_json::Value), String> {
        self.reviews.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(self.delay).await;
        let token = review["spec"]["token"].as_str().unwrap_or_default();
        let status = if self.valid.contains(&token) {
            serde_json::json!({"authenticated": true, "user": {"username": format!("sa-{token}")}})
        } else {
            serde_json::json!({"authenticated": false, "error": "invalid bearer token"})
        };
        Ok((self.status, serde_json::json!({"status": status, "message": "fake"})))
    }
}

fn config(cache_secs: u64, per_minute: u32) -> PassthroughConfig {
    PassthroughConfig {
        audiences: vec![],
        cache_secs,
        reviews_per_caller_per_minute: per_minute,
    }
}

fn reviewer(audiences: &[&str]) -> TokenReviewer {
    TokenReviewer::new(&PassthroughConfig {
        audiences: audiences.iter().map(|a| a.to_string()).collect(),
        ..config(10, 60)
    })
}

fn headers(values: &[&str]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for v in values {
        h.append(CLUSTER_AUTHORIZATION, v.parse().unwrap());
    }
    h
}

/// A reviewer whose rate limiter runs on a clock the test moves.
fn on_fake_clock(per_minute: u32) -> (TokenReviewer<FakeRelativeClock>, FakeRelativeClock) {
    let clock = FakeRelativeClock::default();
    (TokenReviewer::with_clock(&config(10, per_minute), clock.clone()), clock)
}

/// `n` concurrent reviews of `token` by `caller`.
async fn concurrently<C: Clock>(
    r: &TokenReviewer<C>,
    api: &FakeApi,
    caller: &str,
    token: &str,
    n: usize,
) -> Vec<Answer> {
    join_all((0..n).map(|_| r.review(api, caller, token))).await
}

#[tokio::test(start_paused = true)]
async fn concurrent_reviews_of_one_token_make_one_tokenreview() {
    let r = TokenReviewer::new(&config(10, 0));
    let api = FakeApi::accepting(&["good"]);
    let answers = concurrently(&r, &api, "alice", "good", 100).await;
    assert_eq!(api.reviews(), 1, "one TokenReview for 100 concurrent reviews");
    assert!(answers.iter().all(|a| a.as_ref().unwrap().user == "sa-good"));

    let answers = concurrently(&r, &api, "alice", "bad", 100).await;
    assert_eq!(api.reviews(), 2, "refusals are single-flight too");
    assert!(
        answers
            .iter()
            .all(|a| a.as_ref().unwrap_err().status().code == StatusCode::UNAUTHORIZED)
    );

    // Then both answers come from the cache.
    r.review(&api, "bob", "good").await.unwrap();
    r.review(&api, "bob", "bad").await.unwrap_err();
    assert_eq!(api.reviews(), 2);
}

#[tokio::test(start_paused = true)]
async fn cannot_say_is_shared_by_waiters_and_never_remembered() {
    let r = TokenReviewer::new(&config(10, 0));
    let api = FakeApi::failing(StatusCode::INTERNAL_SERVER_ERROR);
    let answers = concurrently(&r, &api, "alice", "good", 20).await;
    assert_eq!(api.reviews(), 1);
    for a in answers {
        let e = a.unwrap_err();
        assert_eq!(e.status().code, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(e.status().auth_failed, None, "a 503 is not the caller's failure");
    }
    r.review(&api, "alice", "good").await.unwrap_err();
    assert_eq!(api.reviews(), 2, "a 503 is never reused");
}

#[tokio::test(start_paused = true)]
async fn zero_cache_secs_keeps_nothing_but_stays_single_flight() {
    let r = TokenReviewer::new(&config(0, 0));
    let api = FakeApi::accepting(&["good"]);
    concurrently(&r, &api, "alice", "good", 50).await;
    assert_eq!(api.reviews(), 1, "concurrent reviews share one TokenReview");
    r.review(&api, "alice", "good").await.unwrap();
    r.review(&api, "alice", "bad").await.unwrap_err();
    r.review(&api, "alice", "bad").await.unwrap_err();
    assert_eq!(api.reviews(), 4, "nothing kept: each later review asks again");
}

#[tokio::test(start_paused = true)]
async fn reviews_per_caller_are_limited_with_429() {
    let (r, clock) = on_fake_clock(3);
    let api = FakeApi::accepting(&["good"]);
    r.review(&api, "alice", "good").await.unwrap();
    for token in ["bad-1", "bad-2"] {
        r.review(&api, "alice", token).await.unwrap_err();
    }
    assert_eq!(api.reviews(), 3);
    let limited = r.review(&api, "alice", "bad-3").await.unwrap_err();
    assert_eq!(api.reviews(), 3, "over the limit: no TokenReview");
    assert_eq!(limited.status().code, StatusCode::TOO_MANY_REQUESTS);
    assert!(
        limited.status().message.contains("at most 3 per minute")
            && limited.status().message.contains("reviews_per_caller_per_minute"),
        "{}",
        limited.status().message
    );
    // One token per 20 s refills the bucket.
    assert_eq!(limited.status().retry_after_secs, Some(20));
    assert_eq!(
        limited.status().auth_failed,
        None,
        "a 429 is not a failed authentication"
    );

    // Cache hits are free, refusals included; another caller has its own bucket.
    assert_eq!(r.review(&api, "alice", "good").await.unwrap().user, "sa-good");
    assert_eq!(
        r.review(&api, "alice", "bad-1").await.unwrap_err().status().code,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        r.review(&api, "bob", "bad-3").await.unwrap_err().status().code,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(api.reviews(), 4);

    // Ten concurrent reviews of one token cost their caller one review of three.
    let answers = concurrently(&r, &api, "carol", "bad-4", 10).await;
    assert!(
        answers
            .iter()
            .all(|a| a.as_ref().unwrap_err().status().code == StatusCode::UNAUTHORIZED)
    );
    assert_eq!(api.reviews(), 5);
    for token in ["bad-5", "bad-6"] {
        assert_eq!(
            r.review(&api, "carol", token).await.unwrap_err().status().code,
            StatusCode::UNAUTHORIZED
        );
    }
    assert_eq!(
        r.review(&api, "carol", "bad-7").await.unwrap_err().status().code,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(api.reviews(), 7);

    // The bucket refills with time: one review per 20 s.
    clock.advance(Duration::from_secs(20));
    assert_eq!(
        r.review(&api, "alice", "bad-8").await.unwrap_err().status().code,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        r.review(&api, "alice", "bad-9").await.unwrap_err().status().code,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(api.reviews(), 8);
}

#[tokio::test(start_paused = true)]
async fn zero_reviews_per_minute_means_no_limit() {
    let r = TokenReviewer::new(&config(10, 0));
    let api = FakeApi::accepting(&[]);
    for i in 0..200 {
        let e = r.review(&api, "alice", &format!("bad-{i}")).await.unwrap_err();
        assert_eq!(e.status().code, StatusCode::UNAUTHORIZED);
    }
    assert_eq!(api.reviews(), 200);
}

#[tokio::test(start_paused = true)]
async fn limiter_forgets_callers_whose_bucket_is_full_again() {
    let (r, clock) = on_fake_clock(60);
    let api = FakeApi::accepting(&[]);
    for i in 0..SWEEP_EVERY - 1 {
        r.review(&api, &format!("caller-{i}"), &format!("bad-{i}"))
            .await
            .unwrap_err();
    }
    let limiter = r.limiter.as_ref().unwrap();
    assert_eq!(limiter.len() as u64, SWEEP_EVERY - 1);
    clock.advance(Duration::from_secs(2));
    // The next check sweeps: a caller that spent one of 60 is full again after a second.
    r.review(&api, "last", "bad-last").await.unwrap_err();
    assert!(limiter.len() <= 1, "{} callers kept", limiter.len());
}

#[tokio::test]
async fn a_refused_cluster_token_marks_the_response_as_a_failed_authentication() {
    let r = TokenReviewer::new(&config(10, 1));
    let api = FakeApi {
        delay: Duration::ZERO,
        ..FakeApi::accepting(&[])
    };
    let refused = r.review(&api, "alice", "bad").await.unwrap_err();
    assert_eq!(refused.status().code, StatusCode::UNAUTHORIZED);
    let resp = refused.status().into_response();
    assert_eq!(resp.headers()[crate::proto::AUTH_FAILED_HEADER], "cluster-token");
    // Remembered refusals carry it too: each repeat is another failure.
    assert_eq!(
        r.review(&api, "alice", "bad").await.unwrap_err().status(),
        refused.status()
    );
    let limited = r.review(&api, "alice", "other").await.unwrap_err();
    assert_eq!(limited.status().code, StatusCode::TOO_MANY_REQUESTS);
    assert!(
        !limited
            .status()
            .into_response()
            .headers()
            .contains_key(crate::proto::AUTH_FAILED_HEADER)
    );
    let unavailable = TokenReviewer::new(&config(10, 0))
        .review(&FakeApi::failing(StatusCode::FORBIDDEN), "alice", "bad")
        .await
        .unwrap_err();
    assert_eq!(unavailable.status().code, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        !unavailable
            .status()
            .into_response()
            .headers()
            .contains_key(crate::proto::AUTH_FAILED_HEADER)
    );
    // A malformed header is the caller's own 401, but it cost no review.
    let malformed = cluster_token(&headers(&["Basic abc"])).unwrap_err();
    assert_eq!(malformed.status().auth_failed, None);
}

#[test]
fn cache_is_bounded_and_expires() {
    // moka enforces both; what is ours is asking for them (filling 4096
    // entries in a debug build would take seconds).
    let policy = TokenReviewer::new(&config(10, 0)).cache.policy();
    assert_eq!(policy.max_capacity(), Some(CACHE_ENTRIES));
    assert_eq!(policy.time_to_live(), Some(Duration::from_secs(10)));
    let keeps_nothing = TokenReviewer::new(&config(0, 0)).cache.policy();
    assert_eq!(keeps_nothing.max_capacity(), Some(0));
}

#[test]
fn cluster_token_is_one_bearer_header() {
    assert_eq!(cluster_token(&headers(&[])).unwrap(), None);
    assert_eq!(
        cluster_token(&headers(&["Bearer abc"])).unwrap().as_deref(),
        Some("abc")
    );
    assert_eq!(
        cluster_token(&headers(&["Bearer a", "Bearer b"]))
            .unwrap_err()
            .status()
            .code
            .as_u16(),
        400
    );
    for bad in ["abc", "Basic abc", "Bearer ", "Bearer a b"] {
        assert_eq!(
            cluster_token(&headers(&[bad])).unwrap_err().status().code.as_u16(),
            401,
            "{bad}"
        );
    }
}

#[test]
fn judge_requires_authenticated_user_and_audience() {
    let r = reviewer(&["hawser"]);
    let ok = serde_json::json!({"authenticated": true, "audiences": ["hawser"],
        "user": {"username": "system:serviceaccount:ns:sa", "groups": ["system:serviceaccounts"]}});
    assert_eq!(r.judge(&ok).unwrap().user, "system:serviceaccount:ns:sa");
    let denied = serde_json::json!({"authenticated": false, "error": "token expired"});
    assert!(r.judge(&denied).unwrap_err().status().message.contains("token expired"));
    let wrong_aud = serde_json::json!({"authenticated": true, "audiences": ["other"], "user": {"username": "u"}});
    assert_eq!(r.judge(&wrong_aud).unwrap_err().status().code.as_u16(), 401);
    let no_user = serde_json::json!({"authenticated": true, "audiences": ["hawser"], "user": {}});
    assert_eq!(r.judge(&no_user).unwrap_err().status().code.as_u16(), 401);
    for refusal in [denied, wrong_aud, no_user] {
        assert_eq!(
            r.judge(&refusal).unwrap_err().status().auth_failed,
            Some(AuthFailure::ClusterToken)
        );
    }
    let any_aud = reviewer(&[]);
    let plain = serde_json::json!({"authenticated": true, "user": {"username": "u"}});
    assert_eq!(any_aud.judge(&plain).unwrap().groups, Vec::<String>::new());
}
