//! A real upstream on `127.0.0.1:<free port>` for gateway tests. It records every request
//! it receives and answers by path.
//!
//! Routed by the last path segment:
//!
//! - `…/sse?events=N&interval_ms=M`: `text/event-stream`, chunked, N events M ms apart;
//! - `…/length?bytes=N&interval_ms=M`: a `Content-Length` body sent in 1 KiB pieces M ms apart;
//! - `…/slow?delay_ms=M`: answers after M ms;
//! - `…/redirect`: 302 with an absolute `Location` and headers the gateway must strip;
//! - anything else: 200 JSON echo `{method, path, query, headers, body}`.

use std::{
    collections::HashMap,
    convert::Infallible,
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::{Body, Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Map, Value, json};
use tokio::sync::mpsc;

/// One received request.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// Method.
    pub method: String,
    /// Path.
    pub path: String,
    /// Raw query.
    pub query: Option<String>,
    /// Headers as received.
    pub headers: HeaderMap,
    /// Body.
    pub body: Bytes,
}

/// A running upstream.
pub struct Upstream {
    /// Listen address.
    pub addr: SocketAddr,
    recorded: Arc<Mutex<Vec<Recorded>>>,
    task: tokio::task::JoinHandle<()>,
}

type Reply = BoxBody<Bytes, Infallible>;

/// A body fed by a channel.
struct Channel(mpsc::Receiver<Bytes>);

impl Body for Channel {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0
            .poll_recv(cx)
            .map(|chunk| chunk.map(|c| Ok(Frame::data(c))))
    }
}

impl Upstream {
    /// Starts the upstream.
    pub async fn start() -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let recorded = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&recorded);
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _peer)) = listener.accept().await else {
                    continue;
                };
                let sink = Arc::clone(&sink);
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let sink = Arc::clone(&sink);
                        async move { Ok::<_, Infallible>(answer(req, sink).await) }
                    });
                    let _served =
                        hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                });
            }
        });
        Ok(Self {
            addr,
            recorded,
            task,
        })
    }

    /// `http://127.0.0.1:<port>` plus `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Every request received so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.recorded.lock().map(|r| r.clone()).unwrap_or_default()
    }

    /// The last request received.
    pub fn last(&self) -> Option<Recorded> {
        self.requests().pop()
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn params(query: Option<&str>) -> HashMap<String, u64> {
    query
        .unwrap_or_default()
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .filter_map(|(k, v)| v.parse().ok().map(|v| (k.to_owned(), v)))
        .collect()
}

fn full(body: impl Into<Bytes>) -> Reply {
    Full::new(body.into()).boxed()
}

async fn answer(req: Request<Incoming>, sink: Arc<Mutex<Vec<Recorded>>>) -> Response<Reply> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let path = parts.uri.path().to_owned();
    let query = parts.uri.query().map(str::to_owned);
    if let Ok(mut sink) = sink.lock() {
        sink.push(Recorded {
            method: parts.method.to_string(),
            path: path.clone(),
            query: query.clone(),
            headers: parts.headers.clone(),
            body: body.clone(),
        });
    }
    let p = params(query.as_deref());
    let number = |k: &str, default: u64| p.get(k).copied().unwrap_or(default);
    // Routed by the last path segment, so a resource's base path does not matter.
    match path.rsplit('/').next().unwrap_or_default() {
        "sse" => {
            let (tx, rx) = mpsc::channel(4);
            let (events, interval) = (number("events", 5), number("interval_ms", 50));
            tokio::spawn(async move {
                for i in 0..events {
                    if tx
                        .send(Bytes::from(format!("data: {i}\n\n")))
                        .await
                        .is_err()
                    {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(interval)).await;
                }
            });
            Response::builder()
                .header("content-type", "text/event-stream")
                .body(Channel(rx).boxed())
                .unwrap_or_else(|_| Response::new(full("")))
        }
        "length" => {
            let (tx, rx) = mpsc::channel(4);
            let (bytes, interval) = (number("bytes", 8192), number("interval_ms", 20));
            tokio::spawn(async move {
                let mut left = bytes;
                while left > 0 {
                    let n = left.min(1024);
                    if tx.send(Bytes::from(vec![b'x'; n as usize])).await.is_err() {
                        return;
                    }
                    left -= n;
                    tokio::time::sleep(Duration::from_millis(interval)).await;
                }
            });
            Response::builder()
                .header("content-length", bytes.to_string())
                .body(Channel(rx).boxed())
                .unwrap_or_else(|_| Response::new(full("")))
        }
        "slow" => {
            tokio::time::sleep(Duration::from_millis(number("delay_ms", 1000))).await;
            Response::new(full("slow"))
        }
        "redirect" => Response::builder()
            .status(302)
            .header("location", "http://elsewhere.example/next")
            .header("content-location", "//elsewhere.example/x")
            .header("server", "upstream/1.0")
            .header("x-powered-by", "php")
            .header("x-caracal-identity", "leaked")
            .header("refresh", "0; url=http://elsewhere.example")
            .header("x-kept", "yes")
            .body(full(""))
            .unwrap_or_else(|_| Response::new(full(""))),
        _ => {
            let mut headers = Map::new();
            for (name, value) in &parts.headers {
                headers.insert(
                    name.as_str().to_owned(),
                    Value::String(value.to_str().unwrap_or("<binary>").to_owned()),
                );
            }
            let echo = json!({
                "method": parts.method.as_str(),
                "path": path,
                "query": query,
                "headers": headers,
                "body": String::from_utf8_lossy(&body),
            });
            Response::builder()
                .header("content-type", "application/json")
                .body(full(echo.to_string()))
                .unwrap_or_else(|_| Response::new(full("")))
        }
    }
}
