use anyhow::Context as _;

use super::*;

#[derive(Debug, thiserror::Error)]
enum Outer {
    /// A message that holds its source, as `#[from]` variants often do.
    #[error("peers: {0}")]
    Wraps(#[from] Inner),
}

#[derive(Debug, thiserror::Error)]
#[error("udp socket: {0}")]
struct Inner(#[from] std::io::Error);

#[test]
fn an_error_line_says_each_cause_once() {
    let in_use = || std::io::Error::new(std::io::ErrorKind::AddrInUse, "Address already in use (os error 98)");
    let nested = anyhow::Error::from(Outer::from(Inner::from(in_use())));
    assert_eq!(
        format!("{nested:#}"),
        "peers: udp socket: Address already in use (os error 98): udp socket: Address already in use (os error 98): \
         Address already in use (os error 98)",
        "what the binary printed before"
    );
    assert_eq!(
        error_line(&nested),
        "peers: udp socket: Address already in use (os error 98)"
    );
    // Context that does not say its cause is followed by it.
    let context = Err::<(), _>(in_use()).context("reading relay.toml").unwrap_err();
    assert_eq!(
        error_line(&context),
        "reading relay.toml: Address already in use (os error 98)"
    );
}
