//! The browser flow: authorization code with PKCE (S256), a random state and nonce, and a
//! redirect to `http://127.0.0.1:PORT/callback` served here on a loopback listener.
//!
//! Threat model: another local user can reach the loopback port. A callback whose `state` is
//! not this login's is answered 400 and ignored (the login keeps waiting, so a stray or hostile
//! request can neither end it nor slip in a code); the code alone is useless without the PKCE
//! verifier, which never leaves this process.

use std::time::Duration;

use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use oauth2::{AuthUrl, AuthorizationCode, CsrfToken, PkceCodeChallenge, RedirectUrl, Scope};
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use super::discovery::Discovery;
use super::http::Http;
use super::oauth::{self, IdTokenResponse};
use super::{LoginError, Provider, provider_text};

/// The prefix of the line that carries the login URL (scripts and tests parse it).
pub const OPEN_PREFIX: &str = "Open this URL to log in: ";

/// How the browser flow runs.
#[derive(Debug, Clone)]
pub struct BrowserOptions {
    /// The loopback port of the redirect (0: a free one).
    pub callback_port: u16,
    /// Try `$BROWSER`, else `xdg-open`/`open`.
    pub open_browser: bool,
}

/// Runs the browser flow to a token response (the caller bounds it in time); `show` tells the
/// person the URL to open ([`print_url`]).
pub async fn authorize(
    http: &Http,
    provider: &Provider,
    discovery: &Discovery,
    scopes: &[String],
    options: &BrowserOptions,
    show: impl FnOnce(&str),
) -> Result<IdTokenResponse, LoginError> {
    let auth_endpoint = discovery.authorization_endpoint.as_deref().ok_or_else(|| {
        LoginError::Provider("the provider has no authorization_endpoint: log in with --device".into())
    })?;
    let listener = TcpListener::bind(("127.0.0.1", options.callback_port))
        .await
        .map_err(|e| LoginError::Usage(format!("cannot listen on 127.0.0.1:{}: {e}", options.callback_port)))?;
    let port = listener
        .local_addr()
        .map_err(|e| LoginError::Usage(e.to_string()))?
        .port();
    let bad_url = |e: oauth2::url::ParseError| LoginError::Provider(provider_text(&e.to_string()));
    let client = oauth::client(provider, &discovery.token_endpoint)?
        .set_auth_uri(AuthUrl::new(auth_endpoint.to_owned()).map_err(bad_url)?)
        .set_redirect_uri(RedirectUrl::new(format!("http://127.0.0.1:{port}/callback")).map_err(bad_url)?);
    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let nonce = CsrfToken::new_random();
    let (url, state) = client
        .authorize_url(CsrfToken::new_random)
        .add_scopes(scopes.iter().cloned().map(Scope::new))
        .set_pkce_challenge(challenge)
        .add_extra_param("nonce", nonce.secret())
        .url();
    show(url.as_str());
    if options.open_browser {
        open_browser(url.as_str());
    }
    let code = wait_for_code(listener, state.secret()).await?;
    let response = client
        .exchange_code(AuthorizationCode::new(code))
        .set_pkce_verifier(verifier)
        .request_async(http)
        .await
        .map_err(|e| match &e {
            oauth2::RequestTokenError::ServerResponse(answer) => LoginError::Flow(format!(
                "the provider refused the code exchange: {}",
                oauth::error_text(answer)
            )),
            _ => LoginError::Flow(format!("exchanging the code: {}", oauth::failure_text(&e))),
        })?;
    // The signature is the relay's to check; a wrong nonce here means the answer is not ours.
    let (_, claims) = oauth::id_token_of(&response)?;
    if claims.nonce.as_deref().is_some_and(|n| n != nonce.secret()) {
        return Err(LoginError::Provider("the ID token's nonce is not this login's".into()));
    }
    Ok(response)
}

/// Prints `Open this URL to log in: URL` on stderr.
pub fn print_url(url: &str) {
    eprintln!("{OPEN_PREFIX}{url}");
}

/// Tries `$BROWSER` (a `:`-separated list), else the desktop's opener; failing is not an error:
/// the URL is printed.
fn open_browser(url: &str) {
    let commands: Vec<String> = match std::env::var("BROWSER") {
        Ok(list) if !list.trim().is_empty() => list.split(':').map(str::to_owned).collect(),
        _ if cfg!(target_os = "macos") => vec!["open".into()],
        _ => vec!["xdg-open".into()],
    };
    for command in commands {
        // tokio reaps the child once it exits; nothing waits for the browser.
        let spawned = tokio::process::Command::new(&command)
            .arg(url)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn();
        if spawned.is_ok() {
            return;
        }
    }
}

/// Serves the loopback listener until a callback with this login's `state` arrives.
pub(crate) async fn wait_for_code(listener: TcpListener, state: &str) -> Result<String, LoginError> {
    let (tx, mut rx) = mpsc::channel::<Result<String, LoginError>>(1);
    let mut connections = tokio::task::JoinSet::new();
    let outcome = loop {
        tokio::select! {
            Some(outcome) = rx.recv() => break outcome,
            accepted = listener.accept() => {
                let Ok((tcp, _)) = accepted else {
                    // Out of file descriptors, typically: back off instead of spinning.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                };
                let (state, tx) = (state.to_owned(), tx.clone());
                connections.spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let (state, tx) = (state.clone(), tx.clone());
                        async move {
                            let (status, page, outcome) = callback(&req, &state);
                            if let Some(outcome) = outcome {
                                let _ = tx.try_send(outcome);
                            }
                            Response::builder()
                                .status(status)
                                .header(http::header::CONTENT_TYPE, "text/html; charset=utf-8")
                                .header(http::header::CACHE_CONTROL, "no-store")
                                .body(Full::new(bytes::Bytes::from(page)))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .keep_alive(false)
                        .serve_connection(TokioIo::new(tcp), service)
                        .await;
                });
            }
        }
    };
    drop(listener);
    // Let the page that ended the login reach the browser; a connection that lingers is cut.
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    outcome
}

/// The answer to one request on the loopback listener, and the login's outcome if it decides it.
pub(crate) fn callback<B>(
    req: &Request<B>,
    expected_state: &str,
) -> (StatusCode, String, Option<Result<String, LoginError>>) {
    if req.uri().path() != "/callback" {
        return (
            StatusCode::NOT_FOUND,
            page("Not found", "This is hawser login's callback."),
            None,
        );
    }
    let mut state = None;
    let (mut code, mut error, mut description) = (None, None, None);
    for (key, value) in oauth2::url::form_urlencoded::parse(req.uri().query().unwrap_or_default().as_bytes()) {
        match key.as_ref() {
            "state" => state = Some(value.into_owned()),
            "code" => code = Some(value.into_owned()),
            "error" => error = Some(value.into_owned()),
            "error_description" => description = Some(value.into_owned()),
            _ => {}
        }
    }
    let ours = state.is_some_and(|s| bool::from(s.as_bytes().ct_eq(expected_state.as_bytes())));
    if !ours {
        let text =
            "This answer does not belong to the login running in your terminal (state mismatch); it was ignored.";
        return (StatusCode::BAD_REQUEST, page("Login not completed", text), None);
    }
    if let Some(error) = error {
        let said = match description {
            Some(d) => format!("{}: {}", provider_text(&error), provider_text(&d)),
            None => provider_text(&error),
        };
        let text = format!("The identity provider refused the login: {said}");
        let outcome = Err(LoginError::Flow(format!("the provider refused the login: {said}")));
        return (StatusCode::OK, page("Login refused", &text), Some(outcome));
    }
    match code {
        Some(code) => (
            StatusCode::OK,
            page(
                "Logged in",
                "You are logged in. You can close this tab and go back to the terminal.",
            ),
            Some(Ok(code)),
        ),
        None => (
            StatusCode::BAD_REQUEST,
            page("Login not completed", "The answer has no code."),
            None,
        ),
    }
}

fn page(title: &str, text: &str) -> String {
    format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>hawser: {}</title></head>\
         <body><h1>{}</h1><p>{}</p></body></html>\n",
        html_escape(title),
        html_escape(title),
        html_escape(text)
    )
}

fn html_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}
