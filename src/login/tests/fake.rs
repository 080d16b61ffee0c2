//! A fake OAuth2 provider for unit tests: a hyper server on a loopback port whose answers a
//! test scripts, recording every request's path and form.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

/// A request the fake received: its path and form fields.
pub(crate) type Seen = (String, HashMap<String, String>);

/// A running fake provider; stops when dropped.
pub(crate) struct Fake {
    /// `http://127.0.0.1:PORT`.
    pub(crate) url: String,
    /// Every request so far.
    pub(crate) seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Fake {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Fake {
    /// How many requests went to `path`.
    pub(crate) fn count(&self, path: &str) -> usize {
        self.seen.lock().unwrap().iter().filter(|(p, _)| p == path).count()
    }
}

/// How a fake answers: `answer(path, form)` gives a response's status and JSON body.
pub(crate) trait Answer: Fn(&str, &HashMap<String, String>) -> (u16, String) + Send + Sync + 'static {}
impl<T: Fn(&str, &HashMap<String, String>) -> (u16, String) + Send + Sync + 'static> Answer for T {}

/// Starts a fake on plain http (allowed on loopback).
pub(crate) async fn start(answer: impl Answer) -> Fake {
    serve(answer, None).await
}

/// Starts a fake on https with a self-signed certificate written to `dir/cert.pem` (the CA file
/// to trust), for the endpoints the oauth2 crate wants on https.
pub(crate) async fn start_tls(answer: impl Answer, dir: &std::path::Path) -> Fake {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    crate::tls::ensure_self_signed(&cert, &key, &["127.0.0.1".to_owned()]).unwrap();
    let config = crate::tls::server_config(&cert, &key, &[b"http/1.1"]).unwrap();
    serve(answer, Some(tokio_rustls::TlsAcceptor::from(Arc::new(config)))).await
}

async fn serve(answer: impl Answer, tls: Option<tokio_rustls::TlsAcceptor>) -> Fake {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let scheme = if tls.is_some() { "https" } else { "http" };
    let url = format!("{scheme}://{}", listener.local_addr().unwrap());
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let answer = Arc::new(answer);
    let recorded = seen.clone();
    let task = tokio::spawn(async move {
        let mut connections = tokio::task::JoinSet::new();
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let (answer, recorded, tls) = (answer.clone(), recorded.clone(), tls.clone());
            connections.spawn(async move {
                let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let (answer, recorded) = (answer.clone(), recorded.clone());
                    async move {
                        let path = req.uri().path().to_owned();
                        let query = req.uri().query().unwrap_or_default().to_owned();
                        let body = req.into_body().collect().await?.to_bytes();
                        // The form, and the query's fields beside it.
                        let form: HashMap<String, String> = oauth2::url::form_urlencoded::parse(&body)
                            .chain(oauth2::url::form_urlencoded::parse(query.as_bytes()))
                            .map(|(k, v)| (k.into_owned(), v.into_owned()))
                            .collect();
                        let (status, json) = answer(&path, &form);
                        recorded.lock().unwrap().push((path, form));
                        Ok::<_, hyper::Error>(
                            http::Response::builder()
                                .status(status)
                                .header("content-type", "application/json")
                                .body(Full::new(bytes::Bytes::from(json)))
                                .unwrap(),
                        )
                    }
                });
                let http = hyper::server::conn::http1::Builder::new();
                let _ = match tls {
                    Some(tls) => match tls.accept(tcp).await {
                        Ok(stream) => http.serve_connection(TokioIo::new(stream), service).await,
                        Err(_) => return,
                    },
                    None => http.serve_connection(TokioIo::new(tcp), service).await,
                };
            });
        }
    });
    Fake { url, seen, task }
}

/// A token endpoint's answer carrying `id_token` and, if given, a refresh token.
pub(crate) fn tokens(id_token: &str, refresh: Option<&str>) -> (u16, String) {
    let mut body =
        serde_json::json!({"access_token": "at", "token_type": "Bearer", "expires_in": 3600, "id_token": id_token});
    if let Some(r) = refresh {
        body["refresh_token"] = r.into();
    }
    (200, body.to_string())
}

/// An OAuth2 error answer.
pub(crate) fn oauth_error(status: u16, error: &str, description: &str) -> (u16, String) {
    (
        status,
        serde_json::json!({"error": error, "error_description": description}).to_string(),
    )
}
