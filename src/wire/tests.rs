use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode};
use http_body_util::BodyExt;

use super::body::{GATHER, PumpError, RecvBody, send_body};
use super::*;
use crate::proto::Credential;
use crate::transport::memory;
use crate::transport::{SendHalf, write_chunk};

fn request() -> RequestHead {
    let mut headers = HeaderMap::new();
    headers.insert("accept", "application/json".parse().unwrap());
    headers.append("x-many", "one".parse().unwrap());
    headers.append("x-many", "two".parse().unwrap());
    RequestHead {
        request_id: "relay-0-abc-1".into(),
        credential: Credential::Assertion("a.b.c".into()),
        method: Method::PATCH,
        target: "/api/v1/namespaces/default/pods/x?fieldManager=kubectl"
            .parse()
            .unwrap(),
        traceparent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into(),
        headers,
        body: true,
    }
}

fn payload(encoded: &Bytes) -> &[u8] {
    let len = u32::from_be_bytes(encoded[..4].try_into().unwrap()) as usize;
    assert_eq!(encoded.len(), 4 + len, "the prefix gives the payload's length");
    &encoded[4..]
}

#[test]
fn heads_round_trip() {
    let head = request();
    let encoded = head.encode(MAX_HEAD).unwrap();
    assert_eq!(RequestHead::decode(payload(&encoded)).unwrap(), head);
    let caller = RequestHead {
        credential: Credential::CallerToken("t0ken".into()),
        traceparent: String::new(),
        body: false,
        ..head
    };
    let encoded = caller.encode(MAX_HEAD).unwrap();
    assert_eq!(RequestHead::decode(payload(&encoded)).unwrap(), caller);

    let mut headers = HeaderMap::new();
    headers.insert("content-length", "2".parse().unwrap());
    let response = ResponseHead {
        status: StatusCode::SWITCHING_PROTOCOLS,
        headers,
        body: false,
    };
    let encoded = response.encode(MAX_HEAD).unwrap();
    assert_eq!(ResponseHead::decode(payload(&encoded)).unwrap(), response);
    assert!(matches!(
        RequestHead::decode(payload(&encoded)),
        Err(HeadError::WrongKind("request"))
    ));
}

#[test]
fn every_field_is_checked() {
    let good = request().encode(MAX_HEAD).unwrap();
    let good = payload(&good).to_vec();
    // Every strict prefix is truncated; one byte more is trailing.
    for cut in 0..good.len() {
        assert!(
            matches!(RequestHead::decode(&good[..cut]), Err(HeadError::Truncated)),
            "a head cut at {cut} bytes"
        );
    }
    let mut long = good.clone();
    long.push(0);
    assert!(matches!(RequestHead::decode(&long), Err(HeadError::Trailing(1))));

    let bad = |edit: &dyn Fn(&mut RequestHead)| {
        let mut head = request();
        edit(&mut head);
        head
    };
    // Values the `http` types would take but that must not pass: each is refused by name.
    for (what, head) in [
        ("request id", bad(&|h| h.request_id = "a b".into())),
        ("request id", bad(&|h| h.request_id = String::new())),
        (
            "credential",
            bad(&|h| h.credential = Credential::Assertion("a\nb".into())),
        ),
        ("traceparent", bad(&|h| h.traceparent = "x y".into())),
    ] {
        let encoded = head.encode(MAX_HEAD).unwrap();
        match RequestHead::decode(payload(&encoded)) {
            Err(HeadError::Bad(field)) => assert_eq!(field, what),
            other => panic!("{what}: {other:?}"),
        }
    }
    // The relay's ids carry its instance name (up to 253 characters) with a random part and a counter.
    let long_id = bad(&|h| h.request_id = format!("{}-{:016x}-{}", "r".repeat(253), u64::MAX, u64::MAX));
    let encoded = long_id.encode(MAX_HEAD).unwrap();
    assert_eq!(RequestHead::decode(payload(&encoded)).unwrap(), long_id);
    // A target with a scheme and authority, where only a path and query may stand.
    let relative = RequestHead {
        target: "/abcdefghijklmnop".parse().unwrap(),
        ..request()
    };
    let encoded = relative.encode(MAX_HEAD).unwrap();
    let mut absolute = payload(&encoded).to_vec();
    let at = absolute.windows(17).position(|w| w == b"/abcdefghijklmnop").unwrap();
    absolute[at..at + 17].copy_from_slice(b"http://h/abcdefgh");
    assert!(matches!(RequestHead::decode(&absolute), Err(HeadError::Bad("target"))));
    // Flags, credential kinds and header bytes out of range.
    let mut flags = good.clone();
    flags[1] = 2;
    assert!(matches!(RequestHead::decode(&flags), Err(HeadError::Bad("flags"))));
    let id_len = usize::from(u16::from_be_bytes([good[2], good[3]]));
    let mut kind = good.clone();
    kind[4 + id_len] = 9;
    assert!(matches!(
        RequestHead::decode(&kind),
        Err(HeadError::Bad("credential kind"))
    ));
    let mut value = good.clone();
    let at = value.len() - 1;
    value[at] = b'\n';
    assert!(matches!(
        RequestHead::decode(&value),
        Err(HeadError::Bad("header value"))
    ));
    // A header count larger than the payload could hold allocates nothing and fails.
    let mut count = good.clone();
    // The header count is the last field before the headers.
    let without_headers = RequestHead {
        headers: HeaderMap::new(),
        ..request()
    };
    let headers_at = without_headers.encode(MAX_HEAD).unwrap().len() - 4 - 2;
    count[headers_at..headers_at + 2].copy_from_slice(&4096u16.to_be_bytes());
    assert!(matches!(RequestHead::decode(&count), Err(HeadError::Truncated)));
    count[headers_at..headers_at + 2].copy_from_slice(&4097u16.to_be_bytes());
    assert!(matches!(
        RequestHead::decode(&count),
        Err(HeadError::Bad("header count"))
    ));
}

#[test]
fn a_head_larger_than_allowed_is_not_encoded() {
    let mut head = request();
    head.headers.insert("x-big", "v".repeat(1000).parse().unwrap());
    assert!(matches!(head.encode(500), Err(HeadError::TooLarge(_))));
}

#[tokio::test]
async fn a_head_split_anywhere_is_read_whole_and_the_rest_is_body() {
    let encoded = request().encode(MAX_HEAD).unwrap();
    let mut wire = encoded.to_vec();
    wire.extend_from_slice(b"body");
    for cut in 1..wire.len() {
        let mut recv = memory::sent(vec![
            Bytes::copy_from_slice(&wire[..cut]),
            Bytes::copy_from_slice(&wire[cut..]),
        ]);
        let (payload, first) = read_head(&mut recv, MAX_HEAD).await.unwrap();
        assert_eq!(RequestHead::decode(&payload).unwrap(), request(), "cut at {cut}");
        let body = RecvBody::new(first, recv, None).collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"body", "cut at {cut}");
    }
}

#[tokio::test]
async fn a_head_that_never_completes_is_an_error_not_a_wait() {
    let mut recv = memory::sent(vec![Bytes::from_static(&[0, 0, 0, 9, 1])]);
    assert!(matches!(read_head(&mut recv, MAX_HEAD).await, Err(HeadError::Ended)));
    let mut recv = memory::sent(vec![Bytes::from_static(&[0, 0x10, 0, 0])]);
    assert!(matches!(
        read_head(&mut recv, 4096).await,
        Err(HeadError::TooLarge(0x0010_0000))
    ));
    let (mut send, mut recv) = memory::stream(4);
    send.cut(reset::SHUTDOWN);
    assert!(matches!(
        read_head(&mut recv, MAX_HEAD).await,
        Err(HeadError::Stream(StreamError::Reset(3)))
    ));
}

#[tokio::test]
async fn body_chunks_cross_without_a_copy() {
    let (mut send, recv) = memory::stream(8);
    // Pieces of at least half a gathered frame go on as they came.
    let chunks: Vec<Bytes> = (0..5u8).map(|i| Bytes::from(vec![i; GATHER / 2])).collect();
    let pointers: Vec<*const u8> = chunks.iter().map(|c| c.as_ptr()).collect();
    let body = crate::body::boxed(http_body_util::StreamBody::new(futures_util::stream::iter(
        chunks
            .into_iter()
            .map(|c| Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(c))),
    )));
    let sent = send_body(body, &mut send).await.unwrap();
    send.end();
    let total = 5 * GATHER as u64 / 2;
    assert_eq!(sent, total);
    let mut received = RecvBody::new(Bytes::new(), recv, Some(total));
    assert_eq!(hyper::body::Body::size_hint(&received).exact(), Some(total));
    let mut seen = Vec::new();
    while let Some(frame) = received.frame().await {
        seen.push(frame.unwrap().into_data().unwrap().as_ptr());
    }
    assert_eq!(seen, pointers, "the same buffers arrive, in order");
}

#[tokio::test]
async fn a_cut_body_is_an_error_not_an_end() {
    let (mut send, recv) = memory::stream(8);
    write_chunk(&mut send, Bytes::from_static(b"part")).await.unwrap();
    send.cut(reset::SOURCE_FAILED);
    let result = RecvBody::new(Bytes::new(), recv, None).collect().await;
    let Err(error) = result else {
        panic!("a reset body must fail");
    };
    let error = error.to_string();
    assert!(error.contains("code 2"), "{error}");
}

#[tokio::test]
async fn a_reader_that_goes_away_stops_the_sender() {
    let (mut send, recv) = memory::stream(1);
    drop(recv);
    let body = crate::body::full("data");
    assert!(matches!(
        send_body(body, &mut send).await,
        Err(PumpError::Sink(StreamError::Stopped(0)))
    ));
}

#[tokio::test]
async fn a_quiet_body_ends_when_the_reader_goes_away() {
    let (mut send, recv) = memory::stream(1);
    // A watch with nothing to say: its body never yields.
    let quiet = crate::body::boxed(http_body_util::StreamBody::new(futures_util::stream::pending::<
        Result<hyper::body::Frame<Bytes>, std::convert::Infallible>,
    >()));
    let pump = tokio::spawn(async move { send_body(quiet, &mut send).await });
    drop(recv);
    let ended = tokio::time::timeout(std::time::Duration::from_secs(5), pump)
        .await
        .expect("the sender noticed the reader left")
        .unwrap();
    assert!(matches!(ended, Err(PumpError::Sink(StreamError::Stopped(_)))));
}

#[tokio::test]
async fn small_pieces_already_waiting_become_one_frame() {
    let (mut send, recv) = memory::stream(64);
    // Packet-sized pieces, all waiting: 50 × 1200 bytes, then a failure.
    let pieces: Vec<Bytes> = (0..50u8).map(|i| Bytes::from(vec![i; 1200])).collect();
    let expected: Vec<u8> = pieces.iter().flat_map(|p| p.to_vec()).collect();
    send.send_chunks(&mut pieces.clone()).await.unwrap();
    send.cut(reset::SOURCE_FAILED);
    let mut body = RecvBody::new(Bytes::new(), recv, None);
    let mut frames = Vec::new();
    let failure = loop {
        match body.frame().await {
            Some(Ok(frame)) => frames.push(frame.into_data().unwrap()),
            Some(Err(e)) => break e.to_string(),
            None => panic!("a cut body must fail, after its bytes"),
        }
    };
    assert_eq!(frames.len(), 1, "waiting pieces are gathered: {} frames", frames.len());
    assert_eq!(frames.concat(), expected, "every byte, in order");
    assert!(failure.contains("code 2"), "{failure}");

    // A gathered frame stops at GATHER bytes; the rest of a piece comes next, whole.
    let (mut send, recv) = memory::stream(64);
    let mut pieces = vec![Bytes::from(vec![1u8; 1000]), Bytes::from(vec![2u8; GATHER])];
    send.send_chunks(&mut pieces).await.unwrap();
    send.end();
    let frames: Vec<Bytes> = {
        let mut body = RecvBody::new(Bytes::new(), recv, None);
        let mut frames = Vec::new();
        while let Some(frame) = body.frame().await {
            frames.push(frame.unwrap().into_data().unwrap());
        }
        frames
    };
    assert_eq!(frames.iter().map(Bytes::len).collect::<Vec<_>>(), vec![GATHER, 1000]);
}
