//! `passthrough`: the gateway's proxy stack without any governance, for the benchmark's
//! ablation (proxy cost versus governance cost).
//!
//! ```text
//! passthrough --listen 127.0.0.1:18483 --upstream http://127.0.0.1:18481
//! ```
//!
//! The same building blocks, configured as the gateway configures them:
//!
//! - the listener of `gateway/proxy/src/server.rs`: `TCP_NODELAY`, a connection cap of
//!   10,000 that sheds, hyper-util's `auto` builder (HTTP/1.1 and HTTP/2) with hyper's own
//!   header-read timer off (the gateway's does not use it either: it closed idle keep-alive
//!   connections), a 16 KiB header buffer and keep-alive, HTTP/2 keep-alive pings every
//!   60 s;
//! - the upstream client of `gateway/proxy/src/upstream.rs`: hyper-util's legacy pooled
//!   client over `HttpConnector` (`TCP_NODELAY`, 5 s connect timeout) wrapped by
//!   hyper-rustls (`https_or_http`, HTTP/1.1), idle connections kept 120 s, at most 256 per
//!   host, and the 30 s `UPSTREAM_TIMEOUT` around each request.
//!
//! Per request it only rewrites the URI to `<upstream><path>?<query>`, sets `Host` to the
//! upstream, drops the hop-by-hop headers both ways and streams both bodies. No mandate,
//! no Redis, no policy, no audit, no header sanitising beyond hop-by-hop: everything the
//! gateway does on top of this is governance. A failed upstream call answers 502.
//!
//! Not here either: the gateway's wire-level framing guard (`gateway/proxy/src/framing.rs`,
//! crate-private), which checks every request head before hyper parses it and owns the head
//! (5 s) and idle (120 s) deadlines. Its cost therefore lands on the governed side of the
//! ablation, and idle connections here are never closed by the server.
//!
//! The runtime is tokio's default multi-thread runtime, sized like the gateway's (the CPU
//! affinity mask, or `TOKIO_WORKER_THREADS`). SIGTERM or SIGINT stops it.

use std::{convert::Infallible, net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context as _;
use bytes::Bytes;
use clap::Parser;
use http::{HeaderMap, HeaderValue, Request, Response, Uri, header};
use http_body_util::{BodyExt as _, Full, combinators::UnsyncBoxBody};
use hyper::{body::Incoming, service::service_fn};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::{TokioExecutor, TokioIo, TokioTimer},
};
use tokio::{net::TcpListener, sync::Semaphore};

/// The gateway's defaults (`gateway/proxy/src/config.rs`, `Limits`).
const IDLE_TIMEOUT: Duration = Duration::from_secs(120);
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_HEADER_BYTES: usize = 16 * 1024;
const MAX_CONNECTIONS: usize = 10_000;

/// Headers that describe one hop, never forwarded (RFC 9110 §7.6.1).
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "upgrade",
];

#[derive(Debug, Parser)]
#[command(about = "A plain reverse proxy with the gateway's hyper settings (benchmark baseline)")]
struct Args {
    /// Listen address.
    #[arg(long, default_value = "127.0.0.1:18483")]
    listen: SocketAddr,
    /// Upstream base URL (`http://host:port`, optionally with a base path).
    #[arg(long)]
    upstream: String,
}

type Connector = hyper_rustls::HttpsConnector<HttpConnector>;
type ProxyBody = UnsyncBoxBody<Bytes, hyper::Error>;

struct Proxy {
    client: Client<Connector, Incoming>,
    /// Scheme and authority of the upstream.
    origin: String,
    /// Base path without a trailing slash.
    base: String,
    host: HeaderValue,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let upstream: Uri = args.upstream.parse().context("--upstream")?;
    let (Some(scheme), Some(authority)) = (upstream.scheme_str(), upstream.authority()) else {
        anyhow::bail!("--upstream must be an absolute URL");
    };
    let origin = format!("{scheme}://{authority}");
    let base = upstream.path().trim_end_matches('/').to_owned();
    let host = HeaderValue::from_str(authority.as_str())?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let proxy = Arc::new(Proxy {
            client: client(),
            origin,
            base,
            host,
        });
        let listener = TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("binding {}", args.listen))?;
        eprintln!("passthrough: listening on {}", args.listen);
        tokio::select! {
            () = serve(proxy, listener) => {}
            () = shutdown() => {}
        }
        Ok(())
    })
}

/// The gateway's upstream client (`UpstreamClient::new`), minus the guarded resolver (an IP
/// literal upstream never reaches a resolver).
fn client() -> Client<Connector, Incoming> {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(CONNECT_TIMEOUT));
    http.set_nodelay(true);
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_webpki_roots()
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(IDLE_TIMEOUT)
        .pool_max_idle_per_host(256)
        .build(https)
}

async fn shutdown() {
    let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
    else {
        let _interrupted = tokio::signal::ctrl_c().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

/// The gateway's accept loop (`server::serve`) without TLS and graceful drain.
async fn serve(proxy: Arc<Proxy>, listener: TcpListener) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _peer)) => stream,
            Err(error) => {
                eprintln!("passthrough: accept failed: {error}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
            continue;
        };
        let _nodelay = stream.set_nodelay(true);
        let proxy = Arc::clone(&proxy);
        let service = service_fn(move |req: Request<Incoming>| {
            let proxy = Arc::clone(&proxy);
            async move { Ok::<_, Infallible>(proxy.forward(req).await) }
        });
        let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(None)
            .max_buf_size(MAX_HEADER_BYTES.max(8192))
            .keep_alive(true);
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(MAX_HEADER_BYTES).unwrap_or(16_384))
            .keep_alive_interval(Some(IDLE_TIMEOUT / 2));
        tokio::spawn(async move {
            let _permit = permit;
            let _served = builder
                .serve_connection(TokioIo::new(stream), service)
                .into_owned()
                .await;
        });
    }
}

impl Proxy {
    async fn forward(&self, req: Request<Incoming>) -> Response<ProxyBody> {
        let (mut parts, body) = req.into_parts();
        let path = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
        let Ok(uri) = format!("{}{}{path}", self.origin, self.base).parse::<Uri>() else {
            return status(400);
        };
        parts.uri = uri;
        parts.version = http::Version::HTTP_11;
        strip_hop_by_hop(&mut parts.headers);
        parts.headers.insert(header::HOST, self.host.clone());
        let request = Request::from_parts(parts, body);
        match tokio::time::timeout(UPSTREAM_TIMEOUT, self.client.request(request)).await {
            Ok(Ok(response)) => {
                let (mut parts, body) = response.into_parts();
                strip_hop_by_hop(&mut parts.headers);
                Response::from_parts(parts, body.boxed_unsync())
            }
            Ok(Err(_failed)) => status(502),
            Err(_elapsed) => status(504),
        }
    }
}

/// Removes the hop-by-hop headers and every header the `Connection` header names.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<String> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|name| name.trim().to_ascii_lowercase())
        .filter(|name| !name.is_empty())
        .collect();
    for name in HOP_BY_HOP
        .iter()
        .copied()
        .chain(named.iter().map(String::as_str))
    {
        headers.remove(name);
    }
}

fn status(code: u16) -> Response<ProxyBody> {
    let mut response = Response::new(
        Full::new(Bytes::new())
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *response.status_mut() =
        http::StatusCode::from_u16(code).unwrap_or(http::StatusCode::BAD_GATEWAY);
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_and_the_ones_connection_names_are_dropped() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONNECTION,
            HeaderValue::from_static("close, X-Drop"),
        );
        headers.insert("x-drop", HeaderValue::from_static("1"));
        headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        headers.insert("x-keep", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut headers);
        assert!(headers.get("x-drop").is_none());
        assert!(headers.get(header::CONNECTION).is_none());
        assert!(headers.get("keep-alive").is_none());
        assert!(headers.get("x-keep").is_some());
    }
}
