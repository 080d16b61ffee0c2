//! Fuzzes the control stream's frame decoder, `hawser::proto::read_frame`, with arbitrary bytes.
//!
//! The input is read as a `Hello` (what an agent sends before it has proved anything) and as a
//! `Welcome`. Streams' heads have their own decoder and target (`stream_head`).
//!
//! Properties:
//! - the decoder returns `Ok` or `Err`, never panics, and never waits on an in-memory reader;
//! - the error matches the frame's 7-byte head: short input is an I/O error, then bad magic, then
//!   unsupported version, then a declared length over `MAX_FRAME`, then a truncated payload;
//! - `Ok` consumes exactly the head and the declared payload, nothing more;
//! - a decoded value re-encodes with `write_frame` (never too large), that frame decodes to an
//!   equal value, and encoding is canonical (encoding the value again gives the same bytes);
//! - a frame decodes as at most one of the two message types.

#![no_main]

use std::fmt::Debug;
use std::io::ErrorKind;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use hawser::proto::{Hello, MAX_FRAME, ProtoError, VERSION, Welcome, read_frame, write_frame};
use libfuzzer_sys::fuzz_target;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Length of a frame's head: magic, version, big-endian u16 length.
const HEAD: usize = 7;

fuzz_target!(|data: &[u8]| {
    let decoded = [check::<Hello>(data), check::<Welcome>(data)];
    assert!(
        decoded.iter().filter(|&&ok| ok).count() <= 1,
        "one frame decoded as more than one message type"
    );
});

/// Decodes `data` as a `T` frame and checks every property; returns whether it decoded.
fn check<T: Serialize + DeserializeOwned + PartialEq + Debug>(data: &[u8]) -> bool {
    let mut rest = data;
    let result = now(read_frame::<_, T>(&mut rest));

    let head_ok = data.len() >= HEAD && &data[..4] == b"HWSR" && data[4] == VERSION;
    let declared = (data.len() >= HEAD).then(|| usize::from(u16::from_be_bytes([data[5], data[6]])));
    match &result {
        Err(ProtoError::Io(e)) => {
            assert_eq!(e.kind(), ErrorKind::UnexpectedEof, "in-memory read failed with {e}");
            assert!(
                data.len() < HEAD || (head_ok && declared.is_some_and(|n| n <= MAX_FRAME && data.len() < HEAD + n)),
                "I/O error on a complete frame"
            );
        }
        Err(ProtoError::BadMagic) => assert!(data.len() >= HEAD && &data[..4] != b"HWSR"),
        Err(ProtoError::UnsupportedVersion(v)) => {
            assert!(data.len() >= HEAD && &data[..4] == b"HWSR" && data[4] == *v && *v != VERSION);
        }
        Err(ProtoError::TooLarge(n)) => assert!(head_ok && declared == Some(*n) && *n > MAX_FRAME),
        Err(ProtoError::Malformed(_)) | Ok(_) => {
            let n = declared.expect("a decoded frame has a head");
            assert!(head_ok && n <= MAX_FRAME && data.len() >= HEAD + n);
        }
    }
    let Ok(value) = result else {
        return false;
    };
    let consumed = data.len() - rest.len();
    assert_eq!(
        consumed,
        HEAD + declared.unwrap_or_default(),
        "read past or short of the frame"
    );

    let mut wire = Vec::new();
    now(write_frame(&mut wire, &value)).expect("a decoded value must re-encode");
    let mut reread = wire.as_slice();
    let back: T = now(read_frame(&mut reread)).expect("a re-encoded frame must decode");
    assert_eq!(back, value, "decode(encode(v)) != v");
    assert!(reread.is_empty(), "re-encoded frame not fully consumed");
    let mut again = Vec::new();
    now(write_frame(&mut again, &back)).expect("re-encodes");
    assert_eq!(again, wire, "encoding is not canonical");
    true
}

/// Runs a future to completion in one poll: reads from a slice and writes to a `Vec` never wait.
fn now<F: Future>(future: F) -> F::Output {
    match pin!(future).poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(out) => out,
        Poll::Pending => panic!("an in-memory frame read or write returned Pending"),
    }
}
