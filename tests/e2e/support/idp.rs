//! A real OpenID provider for the login and CI-federation tests: `hawser-test-idp`
//! (tests/testbed/idp, zitadel/oidc v3's example provider) over TLS on a port it picks, its
//! certificate from a CA of its own. The test plays the person at the browser: it submits the
//! provider's login form and approves device codes with a plain HTTPS client.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::sync::mpsc::sync_channel;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use tempfile::TempDir;

use super::binaries::binaries;
use super::certs::Pki;
use super::https::{self, Answer};
use super::process::Supervised;

/// The public client every test logs in with.
pub const CLIENT_ID: &str = "hawser";
/// The bearer token a "CI job" shows the provider's CI token endpoint.
const CI_REQUEST_TOKEN: &str = "ci-job-request-token";

/// A user of the provider: name, password, groups.
pub struct User(pub &'static str, pub &'static str, pub &'static [&'static str]);

/// How the provider is started.
pub struct IdpOptions<'a> {
    /// Users who can log in.
    pub users: &'a [User],
    /// Lifetime of ID tokens, such as `1h` or `20s`.
    pub id_token_lifetime: &'a str,
    /// Refresh tokens expire this long after the login (rotation keeps the login's time).
    pub refresh_token_lifetime: &'a str,
}

impl Default for IdpOptions<'_> {
    fn default() -> Self {
        Self {
            users: &[],
            id_token_lifetime: "1h",
            refresh_token_lifetime: "5h",
        }
    }
}

/// A running provider; dropping it stops it.
pub struct Idp {
    process: Option<Supervised>,
    /// The issuer, `https://127.0.0.1:PORT/` (with its trailing slash, as the provider says it).
    pub issuer: String,
    /// The CA that signed the provider's certificate (its certificate names 127.0.0.1).
    pub ca: PathBuf,
    /// Holds the provider's certificates and log until it is dropped.
    _dir: TempDir,
}

impl Idp {
    /// Starts a provider and waits until it serves.
    pub fn start(options: &IdpOptions) -> Result<Self> {
        let bins = binaries()?;
        let dir = tempfile::Builder::new()
            .prefix("hawser-idp-")
            .disable_cleanup(std::env::var_os("HAWSER_E2E_KEEP").is_some())
            .tempdir()?;
        let pki = Pki::generate(&dir.path().join("pki"))?;
        let mut args = vec![
            "-tls-cert".to_owned(),
            pki.serving_cert.display().to_string(),
            "-tls-key".to_owned(),
            pki.serving_key.display().to_string(),
            "-client".to_owned(),
            CLIENT_ID.to_owned(),
            "-ci-request-token".to_owned(),
            CI_REQUEST_TOKEN.to_owned(),
            "-id-token-lifetime".to_owned(),
            options.id_token_lifetime.to_owned(),
            "-refresh-token-lifetime".to_owned(),
            options.refresh_token_lifetime.to_owned(),
        ];
        for User(name, password, groups) in options.users {
            args.push("-user".to_owned());
            args.push(format!("{name}:{password}:{}", groups.join(",")));
        }
        let log = dir.path().join("idp.log");
        let mut process = Supervised::spawn(&bins.reaper, "the OpenID provider", &bins.idp, &args, &log, true)?;
        let stdout = process.take_stdout().context("the provider's stdout")?;
        let (tx, rx) = sync_channel(1);
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx.recv_timeout(Duration::from_secs(30)).map_err(|_| {
            anyhow::anyhow!(
                "the provider printed no issuer line within 30 s:\n{}",
                process.log_tail(20)
            )
        })?;
        let issuer = line
            .trim()
            .strip_prefix("issuer ")
            .with_context(|| {
                format!(
                    "the provider's first line is not `issuer URL`: {line:?}\n{}",
                    process.log_tail(20)
                )
            })?
            .to_owned();
        Ok(Self {
            process: Some(process),
            issuer,
            ca: pki.ca_cert,
            _dir: dir,
        })
    }

    /// Stops the provider (an outage); it does not come back.
    pub fn stop(&mut self) {
        self.process.take();
    }

    /// Makes the provider sign with a new key (the old ones stay published), returns its `kid`.
    pub fn rotate_key(&self) -> Result<String> {
        let answer = self.request("POST", &self.url("test/rotate"), &[], "")?;
        ensure!(
            answer.status == 200,
            "rotating the key: {} {}",
            answer.status,
            answer.body
        );
        Ok(answer.body.trim().to_owned())
    }

    /// A CI job's ID token for `audience` with `claims`, from the provider's endpoint shaped like
    /// GitHub Actions' `ACTIONS_ID_TOKEN_REQUEST_URL`.
    pub fn ci_token(&self, audience: &str, claims: &[(&str, &str)]) -> Result<String> {
        let mut url = self.url(&format!("ci/token?audience={}", encode(audience)));
        for (k, v) in claims {
            url.push_str(&format!("&{}={}", encode(k), encode(v)));
        }
        let bearer = format!("Bearer {CI_REQUEST_TOKEN}");
        let answer = self.request("GET", &url, &[("Authorization", &bearer)], "")?;
        ensure!(
            answer.status == 200,
            "the CI token endpoint: {} {}",
            answer.status,
            answer.body
        );
        let value: serde_json::Value = serde_json::from_str(&answer.body)?;
        Ok(value["value"]
            .as_str()
            .context("no value in the CI token answer")?
            .to_owned())
    }

    /// Plays the browser for `hawser login`: opens `auth_url`, submits the login form as
    /// `user`/`password`, follows the redirects back to the loopback callback, and returns the
    /// callback page's status and body.
    pub fn log_in_browser(&self, auth_url: &str, user: &str, password: &str) -> Result<(u16, String)> {
        let answer = self.request("GET", auth_url, &[], "")?;
        let login = redirect(&answer).context("the authorization endpoint did not redirect to its login page")?;
        let request_id = query_param(&login, "authRequestID")
            .with_context(|| format!("no authRequestID in the login redirect {login}"))?;
        let form = format!(
            "id={}&username={}&password={}",
            encode(&request_id),
            encode(user),
            encode(password)
        );
        let answer = self.request("POST", &self.url("login/username"), &[], &form)?;
        let mut next = redirect(&answer)
            .with_context(|| format!("the login form was refused ({}): {}", answer.status, answer.body))?;
        // The provider's own callback, then the loopback one.
        for _ in 0..5 {
            if next.starts_with("http://") {
                return plain_get(&next);
            }
            let answer = self.request("GET", &self.absolute(&next), &[], "")?;
            next = redirect(&answer)
                .with_context(|| format!("the provider stopped redirecting ({}): {}", answer.status, answer.body))?;
        }
        bail!("too many redirects after the login form")
    }

    /// Approves a device code as `user`, as a person would at the verification page.
    pub fn approve_device(&self, user_code: &str, user: &str, password: &str) -> Result<()> {
        let form = format!(
            "user_code={}&username={}&password={}",
            encode(user_code),
            encode(user),
            encode(password)
        );
        let answer = self.request("POST", &self.url("device/login"), &[], &form)?;
        let cookie = answer
            .headers
            .get("set-cookie")
            .and_then(|c| c.split(';').next())
            .with_context(|| format!("the device login was refused ({}): {}", answer.status, answer.body))?
            .to_owned();
        let answer = self.request(
            "POST",
            &self.url("device/confirm"),
            &[("Cookie", &cookie)],
            "action=allowed",
        )?;
        ensure!(
            answer.body.contains("allowed"),
            "approving the device code: {} {}",
            answer.status,
            answer.body
        );
        Ok(())
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.issuer)
    }

    fn absolute(&self, location: &str) -> String {
        match location.strip_prefix('/') {
            Some(path) => self.url(path),
            None => location.to_owned(),
        }
    }

    /// One HTTPS request to the provider, trusting its CA.
    fn request(&self, method: &str, url: &str, headers: &[(&str, &str)], body: &str) -> Result<Answer> {
        https::request(method, url, &self.ca, headers, body)
    }
}

/// A GET to the loopback callback (plain HTTP): status and body.
fn plain_get(url: &str) -> Result<(u16, String)> {
    let rest = url.strip_prefix("http://").context("not an http URL")?;
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let mut tcp = TcpStream::connect(authority).with_context(|| format!("connecting to {authority}"))?;
    tcp.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(
        tcp,
        "GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    let _ = tcp.read_to_end(&mut raw);
    let answer = https::Answer::parse(&raw)?;
    Ok((answer.status, answer.body))
}

/// Where a 3xx answer sends the browser.
fn redirect(answer: &Answer) -> Option<String> {
    (300..400)
        .contains(&answer.status)
        .then(|| answer.headers.get("location").cloned())
        .flatten()
}

fn query_param(url: &str, name: &str) -> Option<String> {
    let query = url.split_once('?')?.1;
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == name).then(|| percent_encoding::percent_decode_str(v).decode_utf8_lossy().into_owned())
    })
}

fn encode(value: &str) -> String {
    utf8_percent_encode(value, NON_ALPHANUMERIC).to_string()
}

/// Part `index` of a compact JWT (0: header, 1: claims) as JSON, read without any check.
pub fn jwt_part(token: &str, index: usize) -> Result<serde_json::Value> {
    use base64::Engine;
    let part = token.split('.').nth(index).context("not a JWT")?;
    Ok(serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(part)?,
    )?)
}
