//! Wire behaviour over raw TCP (wire-contract §4.7, §4.8): request-smuggling shapes, the
//! header-block and body limits, the header-read timeout, response filtering, upstream
//! timeout and unreachability, and a `Content-Length` response cut by a revocation.

use std::{net::SocketAddr, time::Duration};

use serde_json::Value;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
};

use super::gateway::{RESOURCE, Scenario, ZONE, assert_denied};

/// What came back on one connection.
struct Raw {
    bytes: Vec<u8>,
    /// The server closed (or reset) the connection within the wait.
    closed: bool,
    /// When the connection closed, from the end of the write.
    after: Duration,
}

impl Raw {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }

    /// The status of the first response.
    fn status(&self) -> Option<u16> {
        let text = self.text();
        let line = text.lines().next()?;
        line.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
    }

    /// The value of the first response's header `name` (case-insensitive).
    fn header(&self, name: &str) -> Option<String> {
        let text = self.text();
        let (head, _) = text.split_once("\r\n\r\n")?;
        head.split("\r\n").skip(1).find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
        })
    }

    /// The last response on the connection (the one after the last `HTTP/1.1 `).
    fn last_response(&self) -> Raw {
        let at = self
            .bytes
            .windows(9)
            .rposition(|w| w == b"HTTP/1.1 ")
            .unwrap_or(0);
        Raw {
            bytes: self.bytes[at..].to_vec(),
            closed: self.closed,
            after: self.after,
        }
    }

    /// The first response's JSON body (the gateway's catalog body), if any.
    fn json(&self) -> Value {
        let text = self.text();
        text.split_once("\r\n\r\n")
            .and_then(|(_, body)| serde_json::from_str(body.trim()).ok())
            .unwrap_or(Value::Null)
    }
}

/// Writes `request` on a fresh connection, then reads until the server closes it or `wait`
/// passes.
async fn raw(addr: SocketAddr, request: &[u8], wait: Duration) -> Raw {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(request).await.expect("write");
    let started = tokio::time::Instant::now();
    let deadline = started + wait;
    let mut bytes = Vec::new();
    let mut buf = vec![0_u8; 16 * 1024];
    let closed = loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_elapsed) => break false,
            Ok(Ok(0) | Err(_)) => break true,
            Ok(Ok(n)) => bytes.extend_from_slice(&buf[..n]),
        }
    };
    Raw {
        bytes,
        closed,
        after: started.elapsed(),
    }
}

/// A request head with the scenario's bearer and routing header.
fn governed_head(s: &Scenario, line: &str, extra: &str) -> String {
    format!(
        "{line}\r\nHost: {}\r\nAuthorization: Bearer {}\r\nX-Caracal-Resource: {RESOURCE}\r\n{extra}\r\n",
        s.gateway.addr,
        s.mandate()
    )
}

#[tokio::test]
async fn request_smuggling_shapes() -> anyhow::Result<()> {
    let s = Scenario::start().await?;
    let addr = s.gateway.addr;
    let host = addr.to_string();
    let wait = Duration::from_secs(3);

    // Refused on the wire, before hyper parses the head (gateway-proxy `framing`): 400
    // with the catalog body and the connection closed.
    let refused = [
        (
            "duplicate Content-Length with different values",
            format!(
                "POST /items HTTP/1.1\r\nHost: {host}\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!"
            ),
        ),
        (
            "duplicate equal Content-Length",
            format!(
                "POST /items HTTP/1.1\r\nHost: {host}\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello"
            ),
        ),
        (
            "Content-Length with Transfer-Encoding",
            format!(
                "POST /items HTTP/1.1\r\nHost: {host}\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
            ),
        ),
        (
            "Transfer-Encoding with Content-Length",
            format!(
                "POST /items HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\nContent-Length: 6\r\n\r\n0\r\n\r\n"
            ),
        ),
        (
            "obsolete line folding",
            format!("GET /items HTTP/1.1\r\nHost: {host}\r\nX-Folded: a\r\n b\r\n\r\n"),
        ),
        (
            "bare LF line endings",
            format!("GET /items HTTP/1.1\nHost: {host}\n\n"),
        ),
        (
            "Transfer-Encoding not ending in chunked",
            format!(
                "POST /items HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n"
            ),
        ),
        (
            "a bad second head on a keep-alive connection",
            format!(
                "GET /health HTTP/1.1\r\nHost: {host}\r\n\r\nGET /items HTTP/1.1\r\nHost: {host}\nX: y\r\n\r\n"
            ),
        ),
    ];
    for (shape, request) in &refused {
        let answer = raw(addr, request.as_bytes(), wait).await;
        let refusal = answer.last_response();
        assert_eq!(refusal.status(), Some(400), "{shape}: {:?}", answer.text());
        assert_framing_refusal(&refusal, shape, "malformed request framing");
        assert!(answer.closed, "{shape}: the connection is closed");
    }
    assert!(
        s.upstream.requests().is_empty(),
        "no refused request reached the upstream"
    );

    // A bad chunk size in a governed request: the head is good and the request runs; the
    // refusal comes when its body is read.
    let request = format!(
        "{}zz\r\nhello\r\n0\r\n\r\n",
        governed_head(&s, "POST /items HTTP/1.1", "Transfer-Encoding: chunked\r\n")
    );
    let answer = raw(addr, request.as_bytes(), wait).await;
    assert_eq!(
        answer.status(),
        Some(400),
        "bad chunk size: {:?}",
        answer.text()
    );
    assert_framing_refusal(&answer, "bad chunk size", "malformed request framing");
    assert!(answer.closed, "bad chunk size: the connection is closed");
    assert!(
        s.upstream.requests().iter().all(|r| r.body.is_empty()),
        "no body reached the upstream"
    );
    s.stop().await;
    Ok(())
}

/// A refusal written by the framing guard: the catalog body, `X-Request-Id` equal to its
/// `requestId`, `Connection: close`.
fn assert_framing_refusal(answer: &Raw, shape: &str, description: &str) {
    let body = answer.json();
    assert_eq!(body["error"], "invalid_token", "{shape}: {body}");
    assert_eq!(body["error_description"], description, "{shape}: {body}");
    let id = answer.header("x-request-id");
    assert!(id.is_some(), "{shape}: x-request-id");
    assert_eq!(body["requestId"].as_str(), id.as_deref(), "{shape}: {body}");
    assert_eq!(
        answer.header("connection").as_deref(),
        Some("close"),
        "{shape}"
    );
}

#[tokio::test]
async fn an_oversized_header_block_is_431() -> anyhow::Result<()> {
    let s = Scenario::start().await?;
    let request = format!(
        "GET /items HTTP/1.1\r\nHost: {}\r\nX-Big: {}\r\n\r\n",
        s.gateway.addr,
        "a".repeat(17 * 1024)
    );
    let answer = raw(s.gateway.addr, request.as_bytes(), Duration::from_secs(3)).await;
    assert_eq!(answer.status(), Some(431), "{:?}", answer.text());
    assert_framing_refusal(&answer, "431", "request header block too large");
    assert!(answer.closed);
    assert!(s.upstream.requests().is_empty());
    s.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_body_over_max_request_bytes_is_413() -> anyhow::Result<()> {
    let s = Scenario::start_with(&[("MAX_REQUEST_BYTES", "1024")], |_| {}).await?;
    // Declared.
    let request = format!(
        "{}{}",
        governed_head(&s, "POST /items HTTP/1.1", "Content-Length: 2048\r\n"),
        "b".repeat(2048)
    );
    let answer = raw(s.gateway.addr, request.as_bytes(), Duration::from_secs(3)).await;
    assert_eq!(answer.status(), Some(413), "declared: {:?}", answer.text());
    let body = answer.json();
    assert_eq!(body["error"], "payload_too_large", "{body}");
    assert_eq!(body["error_description"], "request too large", "{body}");
    assert!(
        s.upstream.requests().is_empty(),
        "a declared length is refused before dispatch"
    );
    // Chunked, crossing the limit on the third chunk.
    let chunk = format!("200\r\n{}\r\n", "c".repeat(512));
    let request = format!(
        "{}{chunk}{chunk}{chunk}{chunk}0\r\n\r\n",
        governed_head(&s, "POST /items HTTP/1.1", "Transfer-Encoding: chunked\r\n")
    );
    let answer = raw(s.gateway.addr, request.as_bytes(), Duration::from_secs(3)).await;
    assert_eq!(answer.status(), Some(413), "chunked: {:?}", answer.text());
    let body = answer.json();
    assert_eq!(body["error"], "payload_too_large", "{body}");
    assert_eq!(body["error_description"], "request too large", "{body}");
    assert!(
        s.upstream.requests().iter().all(|r| r.body.len() <= 1024),
        "no more than the limit reached the upstream"
    );
    s.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_slow_header_block_is_cut_at_the_read_header_timeout() -> anyhow::Result<()> {
    let s = Scenario::start_with(&[("READ_HEADER_TIMEOUT", "1")], |_| {}).await?;
    let half = format!(
        "GET /items HTTP/1.1\r\nHost: {}\r\nX-Slow: ",
        s.gateway.addr
    );
    let answer = raw(s.gateway.addr, half.as_bytes(), Duration::from_secs(4)).await;
    assert!(answer.closed, "closed: {:?}", answer.text());
    assert!(
        answer.after >= Duration::from_millis(800) && answer.after <= Duration::from_millis(2500),
        "closed after {:?}",
        answer.after
    );
    assert!(s.upstream.requests().is_empty());
    s.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_redirect_is_returned_with_its_headers_filtered() -> anyhow::Result<()> {
    let s = Scenario::start_with(&[], |sql| {
        sql.push("UPDATE resources SET operation_enforcement = 'transport_uniform' WHERE id = 'res-echo'".into());
    })
    .await?;
    let resp = s.call("GET", "/redirect", &s.mandate(), &[]).await;
    assert_eq!(resp.status, 302, "{resp:?}");
    for removed in [
        "location",
        "content-location",
        "server",
        "x-powered-by",
        "refresh",
        "x-caracal-identity",
    ] {
        assert!(
            resp.headers.get(removed).is_none(),
            "{removed} removed: {resp:?}"
        );
    }
    assert_eq!(resp.header("x-kept").as_deref(), Some("yes"));
    assert_eq!(resp.header("trailer").as_deref(), Some("X-Caracal-Revoked"));
    assert!(resp.header("x-request-id").is_some());
    assert_eq!(
        s.upstream.requests().len(),
        1,
        "the redirect was not followed"
    );
    s.stop().await;
    Ok(())
}

#[tokio::test]
async fn an_upstream_slower_than_upstream_timeout_is_504() -> anyhow::Result<()> {
    let s = Scenario::start_with(&[("UPSTREAM_TIMEOUT", "1")], |sql| {
        sql.push("UPDATE resources SET operation_enforcement = 'transport_uniform' WHERE id = 'res-echo'".into());
    })
    .await?;
    let started = tokio::time::Instant::now();
    let resp = s
        .call("GET", "/slow?delay_ms=3000", &s.mandate(), &[])
        .await;
    assert_denied(&resp, 504, "internal_error", "upstream timeout");
    assert!(
        started.elapsed() < Duration::from_millis(2500),
        "{:?}",
        started.elapsed()
    );
    s.stop().await;
    Ok(())
}

#[tokio::test]
async fn an_unreachable_upstream_is_502() -> anyhow::Result<()> {
    let closed = {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        listener.local_addr()?
    };
    let s = Scenario::start_with(&[], |sql| {
        sql.push(format!(
            "UPDATE resources SET upstream_url = 'http://{closed}/base' WHERE id = 'res-echo'"
        ));
    })
    .await?;
    let resp = s.call("GET", "/items", &s.mandate(), &[]).await;
    assert_denied(&resp, 502, "internal_error", "upstream unreachable");
    s.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_length_framed_response_revoked_mid_body_is_cut_short() -> anyhow::Result<()> {
    let s = Scenario::start_with(&[], |sql| {
        sql.push("UPDATE resources SET operation_enforcement = 'transport_uniform' WHERE id = 'res-echo'".into());
    })
    .await?;
    let mut conn = super::gateway_faults::redis().await?;
    let from = super::gateway_faults::stream_tip(&mut conn).await?;
    let request_id = format!("gw-cut-{}", uuid::Uuid::now_v7().simple());
    let request = governed_head(
        &s,
        "GET /length?bytes=200000&interval_ms=20 HTTP/1.1",
        &format!("X-Request-Id: {request_id}\r\n"),
    );
    let addr = s.gateway.addr;
    let call =
        tokio::spawn(async move { raw(addr, request.as_bytes(), Duration::from_secs(8)).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    tests_harness::gateway::publish(
        control_events::streams::SESSIONS_REVOKE,
        &[
            ("zone_id", ZONE),
            ("session_id", s.ids.record.as_str()),
            ("reason", "requested"),
        ],
    )
    .await?;
    let answer = call.await?;
    assert_eq!(
        answer.status(),
        Some(200),
        "{:?}",
        &answer.text()[..answer.text().len().min(400)]
    );
    assert!(answer.closed, "the connection was closed");
    let text = answer.text();
    let (head, body) = text.split_once("\r\n\r\n").expect("a head");
    assert!(
        head.to_ascii_lowercase().contains("content-length: 200000"),
        "{head}"
    );
    assert!(
        body.len() < 200_000 && !body.is_empty(),
        "a short body: {} bytes, closed after {:?}",
        body.len(),
        answer.after
    );
    assert!(
        answer.after < Duration::from_secs(3),
        "cut, not drained: {:?}",
        answer.after
    );
    // wire-contract §4.4: the audit event says so.
    let ids = std::collections::HashSet::from([request_id]);
    let events =
        super::gateway_faults::wait_for_events(&from, &ids, 2, Duration::from_secs(5)).await?;
    let event = events
        .iter()
        .find(|e| e["event_type"] == "gateway_resource_request")
        .expect("the request's event");
    let m = &event["metadata_json"];
    assert_eq!(m["revocation_interrupted"], true, "{m}");
    assert_eq!(m["gateway_status"], 200, "{m}");
    assert!(
        m["response_bytes"].as_u64().is_some_and(|n| n < 200_000),
        "{m}"
    );
    s.stop().await;
    Ok(())
}

#[tokio::test]
async fn the_path_and_query_join_the_upstream_url() -> anyhow::Result<()> {
    let s = Scenario::start_with(&[], |sql| {
        sql.push("UPDATE resources SET upstream_url = '{upstream}/base/?v=2&q=fixed' WHERE id = 'res-echo'".into());
    })
    .await?;
    let resp = s.call("GET", "/items?q=1&z=3", &s.mandate(), &[]).await;
    assert_eq!(resp.status, 200, "{:?}", resp.json());
    let seen = s.upstream.last().expect("the upstream saw the call");
    assert_eq!(seen.path, "/base/items", "one / at the join");
    let query = seen.query.clone().unwrap_or_default();
    let mut pairs: Vec<&str> = query.split('&').collect();
    pairs.sort_unstable();
    assert_eq!(
        pairs,
        ["q=fixed", "v=2", "z=3"],
        "the upstream URL's keys win: {query}"
    );
    s.stop().await;
    Ok(())
}

/// Keep-alive: an idle connection outlives the header deadline (which starts at a head's
/// first byte), and is closed at `IDLE_TIMEOUT`.
#[tokio::test]
async fn an_idle_keep_alive_connection_lasts_until_the_idle_timeout() -> anyhow::Result<()> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let s = Scenario::start_with(
        &[("READ_HEADER_TIMEOUT", "1"), ("IDLE_TIMEOUT", "3")],
        |_| {},
    )
    .await?;
    let mut stream = tokio::net::TcpStream::connect(s.gateway.addr).await?;
    let health = format!("GET /health HTTP/1.1\r\nHost: {}\r\n\r\n", s.gateway.addr);
    let mut buf = vec![0_u8; 4096];
    for pause in [Duration::ZERO, Duration::from_millis(2000)] {
        tokio::time::sleep(pause).await;
        stream.write_all(health.as_bytes()).await?;
        let n = tokio::time::timeout(Duration::from_secs(2), stream.read(&mut buf)).await??;
        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
        assert!(
            text.starts_with("HTTP/1.1 200"),
            "after {pause:?} idle: {text}"
        );
    }
    let started = tokio::time::Instant::now();
    let n = tokio::time::timeout(Duration::from_secs(6), stream.read(&mut buf)).await??;
    assert_eq!(n, 0, "closed by the gateway");
    let after = started.elapsed();
    assert!(
        after >= Duration::from_millis(2500) && after <= Duration::from_millis(4500),
        "closed after {after:?}"
    );
    s.stop().await;
    Ok(())
}
