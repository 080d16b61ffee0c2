//! Fuzzes the stream head decoder (`hawser::wire`): what opens every exchange on a tunnel stream.
//!
//! The input is a payload for `RequestHead::decode` and `ResponseHead::decode`, and, as a whole
//! stream split into two chunks at a point the input chooses, for `wire::read_head`.
//!
//! Properties:
//! - the decoders return `Ok` or `Err`, never panic; a payload decodes as at most one kind;
//! - a decoded head re-encodes (never too large for `MAX_HEAD`), the encoding decodes to an equal
//!   head, and encoding that again gives the same bytes;
//! - `read_head` never waits on a finished stream, and agrees with the length prefix: a declared
//!   length over the limit is `TooLarge`, a stream shorter than prefix and payload is `Ended`,
//!   otherwise the payload is exactly the declared bytes and the rest is handed back untouched.

#![no_main]

use std::pin::pin;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use hawser::transport::memory;
use hawser::transport::{SendHalf, write_chunk};
use hawser::wire::{HeadError, MAX_HEAD, RequestHead, ResponseHead, read_head};
use libfuzzer_sys::fuzz_target;

/// A smaller limit than `MAX_HEAD`, so the fuzzer can reach it.
const LIMIT: usize = 4096;

fuzz_target!(|data: &[u8]| {
    let request = RequestHead::decode(data).ok();
    let response = ResponseHead::decode(data).ok();
    assert!(
        request.is_none() || response.is_none(),
        "a payload decoded as both kinds"
    );
    if let Some(head) = request {
        let wire = head.encode(MAX_HEAD).expect("a decoded request head re-encodes");
        let back = RequestHead::decode(&wire[4..]).expect("a re-encoded request head decodes");
        assert_eq!(back, head, "decode(encode(h)) != h");
        assert_eq!(back.encode(MAX_HEAD).unwrap(), wire, "encoding is not canonical");
    }
    if let Some(head) = response {
        let wire = head.encode(MAX_HEAD).expect("a decoded response head re-encodes");
        let back = ResponseHead::decode(&wire[4..]).expect("a re-encoded response head decodes");
        assert_eq!(back, head, "decode(encode(h)) != h");
        assert_eq!(back.encode(MAX_HEAD).unwrap(), wire, "encoding is not canonical");
    }
    check_read_head(data);
});

fn check_read_head(data: &[u8]) {
    let Some((&split, stream)) = data.split_first() else {
        return;
    };
    let cut = usize::from(split).min(stream.len());
    let (mut send, mut recv) = memory::stream(4);
    for part in [&stream[..cut], &stream[cut..]] {
        if !part.is_empty() {
            now(write_chunk(&mut send, Bytes::copy_from_slice(part))).expect("an in-memory write");
        }
    }
    send.end();
    let result = now(read_head(&mut recv, LIMIT));
    let declared = (stream.len() >= 4).then(|| u32::from_be_bytes(stream[..4].try_into().unwrap()) as usize);
    match (declared, result) {
        (Some(n), Err(HeadError::TooLarge(m))) => assert!(n > LIMIT && m == n),
        (None, Err(HeadError::Ended)) => {}
        (Some(n), Err(HeadError::Ended)) => assert!(n <= LIMIT && stream.len() < 4 + n),
        (Some(n), Ok((payload, rest))) => {
            assert!(n <= LIMIT && stream.len() >= 4 + n);
            assert_eq!(&payload[..], &stream[4..4 + n], "not the declared payload");
            let mut after = rest.to_vec();
            while let Some(chunk) = now(hawser::transport::next_chunk(&mut recv)).expect("in memory") {
                after.extend_from_slice(&chunk);
            }
            assert_eq!(&after[..], &stream[4 + n..], "the bytes after the head changed");
        }
        (declared, other) => panic!("read_head gave {other:?} for a declared length {declared:?}"),
    }
}

/// Runs a future to completion in one poll: the in-memory stream holds everything already.
fn now<F: Future>(future: F) -> F::Output {
    match pin!(future).poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(out) => out,
        Poll::Pending => panic!("an in-memory stream returned Pending"),
    }
}
