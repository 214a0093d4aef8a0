use std::{convert::Infallible, time::Duration};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt as _, Full};
use hyper::{body::Incoming, service::service_fn};
use hyper_util::rt::{TokioExecutor, TokioIo};
use proptest::prelude::*;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::*;

const MAX: usize = 16 * 1024;

/// The refusal's parts.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: serde_json::Value,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

fn parse_answer(bytes: &[u8]) -> Answer {
    let text = std::str::from_utf8(bytes).expect("utf-8 answer");
    let (head, body) = text.split_once("\r\n\r\n").expect("a head");
    let mut lines = head.split("\r\n");
    let status_line = lines.next().expect("a status line");
    let status = status_line
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .expect("a status");
    let headers: Vec<(String, String)> = lines
        .map(|line| {
            let (name, value) = line.split_once(": ").expect("name: value");
            (name.to_owned(), value.to_owned())
        })
        .collect();
    let answer = Answer {
        status,
        headers,
        body: serde_json::from_str(body).expect("a JSON body"),
    };
    assert_eq!(
        answer.header("content-length"),
        Some(body.len().to_string().as_str()),
        "content-length frames the body"
    );
    answer
}

/// Asserts a complete refusal with `status` and `description`.
fn assert_refused(answer: &[u8], status: u16, description: &str) {
    let answer = parse_answer(answer);
    assert_eq!(answer.status, status, "{answer:?}");
    assert_eq!(answer.header("content-type"), Some("application/json"));
    assert_eq!(answer.header("connection"), Some("close"));
    let id = answer.header("x-request-id").expect("x-request-id");
    let uuid = uuid::Uuid::parse_str(id).expect("a uuid");
    assert_eq!(uuid.get_version_num(), 7, "a v7 request id");
    assert_eq!(answer.body["error"], "invalid_token");
    assert_eq!(answer.body["error_description"], description);
    assert_eq!(answer.body["requestId"], id);
}

/// Every way of splitting `input`: one read, one-byte reads, two reads at every boundary,
/// and a few uneven patterns; each with a roomy and a tiny reader buffer.
fn splits(input: &[u8]) -> Vec<(Vec<usize>, usize)> {
    let mut out = vec![
        (vec![], 8192),
        (vec![1], 8192),
        (vec![1], 3),
        (vec![2, 5, 1, 13], 24),
        (vec![3], 64),
    ];
    for k in 1..input.len() {
        out.push((vec![k, input.len()], 8192));
    }
    out
}

/// `input` is refused with `status`/`description` at every split; the reader gets at most
/// `max_delivered` bytes (the refused byte's index, or one more when it starts a head: a
/// lone first byte cannot complete a head).
fn assert_shape_refused(input: &[u8], max_delivered: usize, status: u16, description: &str) {
    for (sizes, capacity) in splits(input) {
        let replay = replay(input, &sizes, capacity, MAX, false);
        assert!(
            !replay.answer.is_empty(),
            "refused with sizes {sizes:?}: {:?}",
            String::from_utf8_lossy(input)
        );
        assert_refused(&replay.answer, status, description);
        assert!(replay.shut_down, "shut down");
        assert!(input.starts_with(&replay.delivered));
        assert!(
            replay.delivered.len() <= max_delivered,
            "sizes {sizes:?}: delivered {} bytes of {:?}, at most {max_delivered}",
            replay.delivered.len(),
            String::from_utf8_lossy(input)
        );
    }
}

/// `input` passes untouched at every split.
fn assert_passes(input: &[u8]) {
    for (sizes, capacity) in splits(input) {
        let replay = replay(input, &sizes, capacity, MAX, false);
        assert!(
            replay.answer.is_empty(),
            "sizes {sizes:?}: {:?} answered {:?}",
            String::from_utf8_lossy(input),
            String::from_utf8_lossy(&replay.answer)
        );
        assert_eq!(replay.delivered, input, "sizes {sizes:?}");
        assert!(!replay.shut_down);
    }
}

/// Where `needle` starts in `input`.
fn at(input: &[u8], needle: &str) -> usize {
    input
        .windows(needle.len())
        .position(|w| w == needle.as_bytes())
        .expect("needle")
}

const FRAMING: &str = "malformed request framing";

#[test]
fn content_length_with_transfer_encoding_is_refused_in_either_order() {
    let cl_te = b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
    assert_shape_refused(cl_te, at(cl_te, "\r\n\r\n0"), 400, FRAMING);
    let te_cl = b"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\ncontent-length: 6\r\n\r\n0\r\n\r\n";
    assert_shape_refused(te_cl, at(te_cl, "\r\n\r\n0"), 400, FRAMING);
}

#[test]
fn a_second_content_length_is_refused_even_when_equal() {
    for request in [
        &b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello"[..],
        b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nCONTENT-LENGTH: 6\r\n\r\nhello!",
        b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5, 5\r\n\r\nhello",
    ] {
        assert_shape_refused(request, at(request, "\r\n\r\nhello"), 400, FRAMING);
    }
}

#[test]
fn a_content_length_that_is_not_a_number_is_refused() {
    for value in [
        "",
        "+5",
        "-1",
        "5a",
        "0x10",
        "99999999999999999999999",
        "5 5",
    ] {
        let request = format!("POST /a HTTP/1.1\r\nContent-Length: {value}\r\n\r\n");
        let bytes = request.as_bytes();
        assert_shape_refused(bytes, at(bytes, "\r\n\r\n"), 400, FRAMING);
    }
    // Blanks around the digits are fine.
    assert_passes(b"POST /a HTTP/1.1\r\nContent-Length: \t5 \r\n\r\nhello");
}

#[test]
fn a_transfer_encoding_not_ending_in_one_chunked_is_refused() {
    for value in [
        "gzip",
        "chunked, gzip",
        "chunked, chunked",
        "chunked,",
        "chunkedx",
        "chun ked",
        "",
    ] {
        let request = format!("POST /a HTTP/1.1\r\nTransfer-Encoding: {value}\r\n\r\n0\r\n\r\n");
        let bytes = request.as_bytes();
        assert_shape_refused(bytes, at(bytes, "\r\n\r\n0"), 400, FRAMING);
    }
    let twice = b"POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
    assert_shape_refused(twice, at(twice, "\r\n\r\n0"), 400, FRAMING);
    // Case and blanks do not matter; an earlier coding does not either.
    assert_passes(b"POST /a HTTP/1.1\r\ntransfer-encoding:  gzip , CHUNKED \r\n\r\n0\r\n\r\n");
}

#[test]
fn bare_line_feeds_are_refused_anywhere_in_a_head() {
    let in_request_line = b"GET /items HTTP/1.1\nHost: x\n\n";
    assert_shape_refused(in_request_line, at(in_request_line, "\nHost"), 400, FRAMING);
    let in_a_header = b"GET /items HTTP/1.1\r\nHost: x\nAccept: */*\r\n\r\n";
    assert_shape_refused(in_a_header, at(in_a_header, "\nAccept"), 400, FRAMING);
    let at_the_end = b"GET /items HTTP/1.1\r\nHost: x\r\n\n";
    assert_shape_refused(at_the_end, at_the_end.len() - 1, 400, FRAMING);
    let in_a_name = b"GET /items HTTP/1.1\r\nHo\nst: x\r\n\r\n";
    assert_shape_refused(in_a_name, at(in_a_name, "\nst"), 400, FRAMING);
    let in_a_length = b"POST /items HTTP/1.1\r\nContent-Length: 1\n\r\n\r\nx";
    assert_shape_refused(in_a_length, at(in_a_length, "\n\r\n\r\nx"), 400, FRAMING);
    let leading = b"\nGET /items HTTP/1.1\r\n\r\n";
    assert_shape_refused(leading, 1, 400, FRAMING);
}

#[test]
fn bare_carriage_returns_are_refused_in_a_head() {
    let in_a_value = b"GET /items HTTP/1.1\r\nX-A: a\rb\r\n\r\n";
    assert_shape_refused(in_a_value, at(in_a_value, "b\r\n\r\n"), 400, FRAMING);
    let at_a_line_start = b"GET /items HTTP/1.1\r\n\rX: a\r\n\r\n";
    assert_shape_refused(at_a_line_start, at(at_a_line_start, "X:"), 400, FRAMING);
}

#[test]
fn obsolete_line_folding_is_refused() {
    for fold in [" b", "\tb"] {
        let request = format!("GET /items HTTP/1.1\r\nHost: x\r\nX-Folded: a\r\n{fold}\r\n\r\n");
        let bytes = request.as_bytes();
        assert_shape_refused(bytes, at(bytes, fold), 400, FRAMING);
    }
}

#[test]
fn bad_chunk_framing_is_refused() {
    let head = "POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n";
    // The body, and the index of its refused byte.
    for (body, refused) in [
        ("zz\r\nhello\r\n0\r\n\r\n", 0),
        ("-5\r\nhello\r\n0\r\n\r\n", 0),
        (" 5\r\nhello\r\n0\r\n\r\n", 0),
        ("5x\r\nhello\r\n0\r\n\r\n", 1),
        ("5 x\r\nhello\r\n0\r\n\r\n", 2),
        ("5\nhello\r\n0\r\n\r\n", 1),
        ("5\r\rhello\r\n0\r\n\r\n", 2),
        ("5;ext\nhello\r\n0\r\n\r\n", 5),
        ("5\r\nhelloX\r\n0\r\n\r\n", 8),
        ("5\r\nhello\rX0\r\n\r\n", 9),
        ("5\r\nhello\n0\r\n\r\n", 8),
        ("0\r\nX-T: a\nb\r\n\r\n", 9),
        ("0\r\n X-T: a\r\n\r\n", 3),
        ("0\r\n\n", 3),
        ("0\r\n\rX", 4),
        ("10000000000000000\r\n", 16),
    ] {
        let request = format!("{head}{body}");
        assert_shape_refused(request.as_bytes(), head.len() + refused, 400, FRAMING);
    }
}

#[test]
fn chunk_extensions_over_the_limit_are_refused() {
    let head = "POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n";
    let long = "e".repeat(CHUNK_EXTENSIONS_LIMIT);
    let request = format!("{head}1;{long}\r\nx\r\n0\r\n\r\n");
    let replay = replay(request.as_bytes(), &[], 4096, MAX, false);
    assert_refused(&replay.answer, 400, FRAMING);
    let fits = "e".repeat(CHUNK_EXTENSIONS_LIMIT - 1);
    let request = format!("{head}1;{fits}\r\nx\r\n0\r\n\r\n");
    let replay = super::replay(request.as_bytes(), &[], 4096, MAX, false);
    assert!(replay.answer.is_empty());
}

#[test]
fn a_valid_chunked_body_with_extensions_and_trailers_passes() {
    assert_passes(
        b"POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n\
          5;name=value\r\nhello\r\n\
          A ; a=\"b;c\"\r\n0123456789\r\n\
          0;last\r\nX-Checksum: abc\r\nX-Other: d\r\n\r\n",
    );
}

#[test]
fn keep_alive_requests_are_framed_one_after_another() {
    assert_passes(
        b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\nhel\nlo\r\n\r\n\n\
          POST /b HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n\n\r\n\r\n0\r\n\r\n\
          \r\nGET /c HTTP/1.1\r\nHost: x\r\n\r\n\
          GET /d HTTP/1.0\r\nContent-Length: 0\r\n\r\n\
          GET /e HTTP/1.1\r\nConnection: close\r\n\r\n",
    );
}

#[test]
fn a_bad_head_after_a_length_body_is_refused() {
    let first = "POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 13\r\n\r\nGET / HTTP/1\n";
    let input = format!(
        "{first}POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello"
    );
    let bytes = input.as_bytes();
    assert_shape_refused(bytes, at(bytes, "\r\n\r\nhello"), 400, FRAMING);
    for (sizes, capacity) in splits(bytes) {
        let replay = replay(bytes, &sizes, capacity, MAX, false);
        assert!(
            replay.delivered.starts_with(first.as_bytes()),
            "the body's LF is data, not a line end ({sizes:?})"
        );
    }
}

#[test]
fn a_bad_head_after_a_chunked_body_is_refused() {
    let first = "POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n4;x=y\r\nab\n\r\r\n0\r\nT: v\r\n\r\n";
    let input = format!("{first}GET /b HTTP/1.1\r\nHost: x\r\nX: a\r\n b\r\n\r\n");
    let bytes = input.as_bytes();
    assert_shape_refused(bytes, at(bytes, " b\r\n\r\n"), 400, FRAMING);
    for (sizes, capacity) in splits(bytes) {
        let replay = replay(bytes, &sizes, capacity, MAX, false);
        assert!(replay.delivered.starts_with(first.as_bytes()), "{sizes:?}");
    }
}

#[test]
fn the_http2_preface_passes_untouched() {
    let mut input = H2_PREFACE.to_vec();
    // Frames are binary: LFs, CRs and blanks anywhere.
    input.extend_from_slice(b"\x00\x00\x06\x04\x00\x00\x00\x00\x00\n\x00 \r\x00\x00\x00\x00\n\n\t");
    assert_passes(&input);
    // The preface's own head shape is not refused while it is still a prefix.
    assert_passes(&H2_PREFACE[..18]);
}

#[test]
fn only_the_first_bytes_are_sniffed_for_the_preface() {
    let mut input = b"GET / HTTP/1.1\r\n\r\n".to_vec();
    input.extend_from_slice(H2_PREFACE);
    input.extend_from_slice(b"\n\n");
    let refused_at = input.len() - 2;
    assert_shape_refused(&input, refused_at + 1, 400, FRAMING);
    // A near miss is HTTP/1.x.
    let near = b"PRI * HTTP/1.1\r\nX: a\nb\r\n\r\n";
    assert_shape_refused(near, at(near, "\nb"), 400, FRAMING);
}

#[test]
fn tls_h2_passes_untouched() {
    let junk = b"GET / HTTP/1.1\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n\x00\n";
    let replay = replay(junk, &[1], 8192, MAX, true);
    assert!(replay.answer.is_empty());
    assert_eq!(replay.delivered, junk);
}

#[test]
fn a_head_over_the_bound_is_431() {
    let head = |len: usize| {
        let prefix = "GET /items HTTP/1.1\r\nX-Big: ";
        let filler = len - prefix.len() - 4;
        format!("{prefix}{}\r\n\r\n", "a".repeat(filler))
    };
    let exact = head(MAX);
    assert_eq!(exact.len(), MAX);
    let replay_exact = replay(exact.as_bytes(), &[1000], 8192, MAX, false);
    assert!(
        replay_exact.answer.is_empty(),
        "a head of exactly the bound passes"
    );
    let over = head(MAX + 1);
    for (sizes, capacity) in [
        (vec![], 8192),
        (vec![1000], 8192),
        (vec![1], 100),
        (vec![MAX - 1, 5], 8192),
    ] {
        let replay = replay(over.as_bytes(), &sizes, capacity, MAX, false);
        assert_refused(&replay.answer, 431, "request header block too large");
        assert!(replay.shut_down);
        assert!(
            replay.delivered.len() < MAX,
            "hyper never holds a full buffer of an incomplete head ({sizes:?})"
        );
    }
    // Leading empty lines count: hyper keeps them in its buffer too.
    let padded = format!("\r\n\r\n{exact}");
    let replay = replay(padded.as_bytes(), &[], 8192, MAX, false);
    assert_refused(&replay.answer, 431, "request header block too large");
}

#[test]
fn every_refusal_carries_its_own_request_id() {
    let a = replay(b"GET / HTTP/1.1\n\n", &[], 64, MAX, false);
    let b = replay(b"GET / HTTP/1.1\n\n", &[], 64, MAX, false);
    let id = |r: &Replay| parse_answer(&r.answer).body["requestId"].clone();
    assert_ne!(id(&a), id(&b));
}

#[test]
fn the_fuzz_entry_holds_on_examples() {
    for data in [
        &b""[..],
        b"\x03GET / HTTP/1.1\r\n\r\n",
        b"\x01POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        b"\x02\nGET",
        b"\x00PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\n\n\n",
    ] {
        assert_eq!(exercise(data), Ok(()), "{data:?}");
    }
}

/// A request of the valid kinds, for the property tests.
fn valid_request() -> impl Strategy<Value = Vec<u8>> {
    let body = proptest::collection::vec(any::<u8>(), 0..40);
    let chunks = proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..20), 0..4);
    prop_oneof![
        Just(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()),
        body.prop_map(|body| {
            let mut out = format!(
                "POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
                body.len()
            )
            .into_bytes();
            out.extend_from_slice(&body);
            out
        }),
        (chunks, any::<bool>()).prop_map(|(chunks, trailers)| {
            let mut out = b"POST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
            for chunk in chunks {
                out.extend_from_slice(format!("{:x};k=v\r\n", chunk.len()).as_bytes());
                out.extend_from_slice(&chunk);
                out.extend_from_slice(b"\r\n");
            }
            out.extend_from_slice(b"0\r\n");
            if trailers {
                out.extend_from_slice(b"X-T: 1\r\n");
            }
            out.extend_from_slice(b"\r\n");
            out
        }),
    ]
}

proptest! {
    #[test]
    fn valid_keep_alive_sequences_pass_at_any_split(
        requests in proptest::collection::vec(valid_request(), 1..5),
        sizes in proptest::collection::vec(1_usize..50, 1..6),
        capacity in 1_usize..128,
    ) {
        let input = requests.concat();
        let replay = replay(&input, &sizes, capacity, MAX, false);
        prop_assert!(replay.answer.is_empty());
        prop_assert_eq!(replay.delivered, input);
    }

    #[test]
    fn arbitrary_bytes_keep_the_guard_properties(data in proptest::collection::vec(any::<u8>(), 0..300)) {
        prop_assert_eq!(exercise(&data), Ok(()));
    }

    #[test]
    fn token_soup_keeps_the_guard_properties(
        tokens in proptest::collection::vec(
            prop_oneof![
                Just("POST / HTTP/1.1\r\n"), Just("\r\n"), Just("\n"), Just("\r"), Just(" "),
                Just("\t"), Just(":"), Just(","), Just(";"), Just("Content-Length"),
                Just("transfer-encoding"), Just("chunked"), Just("gzip"), Just("0"), Just("5"),
                Just("a"), Just("hello"), Just("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
            ],
            0..60,
        ),
        first in any::<u8>(),
    ) {
        let mut data = vec![first];
        data.extend(tokens.concat().into_bytes());
        prop_assert_eq!(exercise(&data), Ok(()));
    }

    #[test]
    fn heads_with_random_line_endings_are_refused_unless_crlf(
        endings in proptest::collection::vec(prop_oneof![Just("\r\n"), Just("\n"), Just("\r")], 3),
    ) {
        // The `Z` after the last ending shows a bare CR there; with CRLF it starts a new head.
        let input = format!("GET / HTTP/1.1{}Host: x{}{}Z", endings[0], endings[1], endings[2]);
        let replay = replay(input.as_bytes(), &[2], 16, MAX, false);
let bytes = input.as_bytes();
        let bare = bytes.iter().enumerate().any(|(i, &b)| {
            (b == b'\n' && (i == 0 || bytes[i - 1] != b'\r'))
                || (b == b'\r' && bytes.get(i + 1) != Some(&b'\n'))
        });
        prop_assert_eq!(replay.answer.is_empty(), !bare);
    }
}

// hyper behind the guard, over an in-memory connection, as the listener runs it.

/// Serves one connection with the auto builder. `/echo` streams the request body back as
/// it arrives; any other path answers `{path} {body length} {x-delay-ms times x}` after
/// reading the whole body and waiting `x-delay-ms`.
fn serve(server: tokio::io::DuplexStream) -> tokio::task::JoinHandle<()> {
    type Body = http_body_util::combinators::BoxBody<Bytes, hyper::Error>;
    tokio::spawn(async move {
        let service = service_fn(|req: Request<Incoming>| async move {
            if req.uri().path() == "/echo" {
                return Ok::<_, Infallible>(Response::new(req.into_body().boxed()));
            }
            let delay: usize = req
                .headers()
                .get("x-delay-ms")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let path = req.uri().path().to_owned();
            let body = match req.into_body().collect().await {
                Ok(collected) => collected.to_bytes(),
                Err(_) => Bytes::from_static(b"body error"),
            };
            tokio::time::sleep(Duration::from_millis(delay as u64)).await;
            let text = format!("{path} {} {}", body.len(), "x".repeat(delay));
            let body: Body = Full::new(Bytes::from(text))
                .map_err(|never| match never {})
                .boxed();
            Ok(Response::new(body))
        });
        let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        let io = TokioIo::new(FramingGuard::new(server, MAX, false));
        let _served = builder.serve_connection(io, service).await;
    })
}

/// Writes `input` and reads until the server closes.
async fn exchange(input: &[u8]) -> String {
    let (mut client, server) = tokio::io::duplex(64 * 1024);
    let task = serve(server);
    client.write_all(input).await.expect("write");
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), client.read_to_end(&mut out))
        .await
        .expect("the server closes")
        .expect("read");
    task.await.expect("served");
    String::from_utf8_lossy(&out).into_owned()
}

/// The status lines of `text`, in order (bodies here never contain `HTTP/1.1 `).
fn statuses(text: &str) -> Vec<&str> {
    text.match_indices("HTTP/1.1 ")
        .filter_map(|(at, _)| text[at..].split("\r\n").next())
        .collect()
}

#[tokio::test]
async fn hyper_answers_good_requests_then_the_guard_refuses_the_bad_one() {
    let text = exchange(
        b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello\
          POST /b HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3;e\r\nabc\r\n0\r\nT: 1\r\n\r\n\
          GET /c HTTP/1.1\r\nHost: x\nX: y\r\n\r\n",
    )
    .await;
    assert_eq!(
        statuses(&text),
        [
            "HTTP/1.1 200 OK",
            "HTTP/1.1 200 OK",
            "HTTP/1.1 400 Bad Request"
        ],
        "{text}"
    );
    assert!(text.contains("/a 5"), "{text}");
    assert!(text.contains("/b 3"), "{text}");
    assert!(!text.contains("/c"), "{text}");
    let refusal = text.find("HTTP/1.1 400").expect("a refusal");
    assert_refused(&text.as_bytes()[refusal..], 400, FRAMING);
}

#[tokio::test]
async fn a_pipelined_bad_head_is_answered_after_a_slow_response_completes() {
    let text = exchange(
        b"GET /slow HTTP/1.1\r\nHost: x\r\nX-Delay-Ms: 300\r\n\r\n\
          POST /b HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nz",
    )
    .await;
    assert_eq!(
        statuses(&text),
        ["HTTP/1.1 200 OK", "HTTP/1.1 400 Bad Request"],
        "{text}"
    );
    let refusal = text.find("HTTP/1.1 400").expect("a refusal");
    let first = &text[..refusal];
    assert!(
        first.ends_with(&format!("/slow 0 {}", "x".repeat(300))),
        "the first response is complete before the refusal: {first}"
    );
    assert_refused(&text.as_bytes()[refusal..], 400, FRAMING);
}

#[tokio::test]
async fn hyper_never_sees_a_content_length_hidden_behind_transfer_encoding() {
    let text = exchange(
        b"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 30\r\n\r\n\
          0\r\n\r\nGET /smuggled HTTP/1.1\r\n\r\n",
    )
    .await;
    assert_eq!(statuses(&text), ["HTTP/1.1 400 Bad Request"], "{text}");
    assert!(!text.contains("smuggled"), "{text}");
}

#[tokio::test]
async fn a_bad_chunk_size_is_answered_by_the_guard() {
    let text = exchange(
        b"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n",
    )
    .await;
    assert_eq!(statuses(&text), ["HTTP/1.1 400 Bad Request"], "{text}");
    assert_refused(text.as_bytes(), 400, FRAMING);
}

#[tokio::test]
async fn a_bad_chunk_after_hyper_began_its_response_closes_without_an_answer() {
    let (mut client, server) = tokio::io::duplex(64 * 1024);
    let task = serve(server);
    client
        .write_all(
            b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
        )
        .await
        .expect("write");
    let mut out = Vec::new();
    let mut buf = [0_u8; 1024];
    while !String::from_utf8_lossy(&out).contains("hello") {
        let n = tokio::time::timeout(Duration::from_secs(5), client.read(&mut buf))
            .await
            .expect("the echo streams")
            .expect("read");
        assert!(n > 0, "closed early: {:?}", String::from_utf8_lossy(&out));
        out.extend_from_slice(&buf[..n]);
    }
    client.write_all(b"zz\r\n").await.expect("write");
    tokio::time::timeout(Duration::from_secs(5), client.read_to_end(&mut out))
        .await
        .expect("the server closes")
        .expect("read");
    task.await.expect("served");
    let text = String::from_utf8_lossy(&out);
    assert_eq!(statuses(&text), ["HTTP/1.1 200 OK"], "{text}");
    assert!(
        !text.contains("malformed"),
        "nothing of ours inside hyper's response: {text}"
    );
}

#[tokio::test]
async fn an_oversized_head_is_answered_431_by_the_guard() {
    let input = format!(
        "GET /a HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(17 * 1024)
    );
    let text = exchange(input.as_bytes()).await;
    assert_refused(text.as_bytes(), 431, "request header block too large");
}

#[tokio::test]
async fn h2c_prior_knowledge_reaches_hyper() {
    let (client, server) = tokio::io::duplex(64 * 1024);
    let task = serve(server);
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(client))
            .await
            .expect("h2 handshake");
    let _driver = tokio::spawn(connection);
    let response = sender
        .send_request(
            Request::post("http://x/h2")
                .body(Full::new(Bytes::from_static(b"a\nb\r\n")))
                .expect("request"),
        )
        .await
        .expect("an h2 response");
    assert_eq!(response.status(), 200);
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    assert_eq!(&body[..], b"/h2 5 ");
    drop(sender);
    task.abort();
}

/// A connection whose writes stay pending until `open`.
#[derive(Debug, Default)]
struct GatedIo {
    input: Vec<u8>,
    open: bool,
    written: Vec<u8>,
}

impl AsyncRead for GatedIo {
    fn poll_read(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let n = this.input.len().min(buf.remaining());
        buf.put_slice(&this.input[..n]);
        this.input.drain(..n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for GatedIo {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if !this.open {
            return Poll::Pending;
        }
        this.written.extend_from_slice(data);
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.open {
            Poll::Ready(Ok(()))
        } else {
            Poll::Pending
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Counts wake-ups.
#[derive(Debug, Default)]
struct CountingWaker(std::sync::atomic::AtomicUsize);

impl std::task::Wake for CountingWaker {
    fn wake(self: std::sync::Arc<Self>) {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

#[test]
fn a_refusal_waits_for_the_readers_unflushed_response() {
    let io = GatedIo {
        input: b"GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\nX: y\r\n\r\n".to_vec(),
        ..GatedIo::default()
    };
    let mut guard = FramingGuard::new(io, MAX, false);
    let counter = std::sync::Arc::new(CountingWaker::default());
    let waker = Waker::from(std::sync::Arc::clone(&counter));
    let mut cx = Context::from_waker(&waker);
    let mut storage = [0_u8; 256];

    // The first read hands on request a and the clean start of b.
    let mut buf = ReadBuf::new(&mut storage);
    assert!(Pin::new(&mut guard).poll_read(&mut cx, &mut buf).is_ready());
    assert_eq!(buf.filled(), b"GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1");

    // The reader's answer to a cannot be written yet.
    let response = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
    assert!(
        Pin::new(&mut guard)
            .poll_write(&mut cx, response)
            .is_pending()
    );

    // Parsing b, the reader asks for more: the refusal must wait for that answer.
    let mut buf = ReadBuf::new(&mut storage);
    assert!(
        Pin::new(&mut guard)
            .poll_read(&mut cx, &mut buf)
            .is_pending()
    );
    assert!(guard.io.written.is_empty());

    // The answer goes out and is flushed: the waiting read is woken.
    guard.io.open = true;
    assert!(matches!(
        Pin::new(&mut guard).poll_write(&mut cx, response),
        Poll::Ready(Ok(n)) if n == response.len()
    ));
    assert_eq!(counter.0.load(std::sync::atomic::Ordering::SeqCst), 0);
    assert!(matches!(
        Pin::new(&mut guard).poll_flush(&mut cx),
        Poll::Ready(Ok(()))
    ));
    assert_eq!(counter.0.load(std::sync::atomic::Ordering::SeqCst), 1);

    // Now the refusal follows the complete answer, and the reader sees end of file.
    let mut buf = ReadBuf::new(&mut storage);
    assert!(matches!(
        Pin::new(&mut guard).poll_read(&mut cx, &mut buf),
        Poll::Ready(Ok(()))
    ));
    assert!(buf.filled().is_empty());
    let written = guard.io.written.clone();
    assert!(written.starts_with(response));
    assert_refused(&written[response.len()..], 400, FRAMING);
    // Whatever the reader writes next fails.
    assert!(matches!(
        Pin::new(&mut guard).poll_write(&mut cx, b"late"),
        Poll::Ready(Err(_))
    ));
}
