//! The HTTP frame every Caracal role shares.
//!
//! - [`serve`]: the accept loop. A connection cap that sheds (closes at once) rather than
//!   queues, a header-read timeout, HTTP/1.1 and HTTP/2 through hyper-util's auto builder,
//!   and a graceful drain of open connections for up to 10 s on shutdown.
//! - [`respond`]: JSON and empty responses, the `X-Request-Id` header.
//! - [`request_id`]: the inbound request id kept or a UUIDv7 generated (wire-contract §1.3).
//! - [`read_body`]: a request body collected under a byte limit.
//! - [`problem::Problem`]: the refusal body of the admin API and the Coordinator.
//! - [`jwks`]: public key sets, parsed and fetched.
//! - [`strict`]: JSON bodies read strictly, keyset pages and their cursors.
//!
//! Nothing here decides a status or an error code: each role maps its own outcomes in one
//! place and hands this crate a finished response.

use std::{convert::Infallible, net::SocketAddr, sync::Arc, time::Duration};

use bytes::Bytes;
use control_model::RequestId;
use http::{Request, Response, header};
use http_body_util::{BodyExt, Limited};
use hyper::{body::Incoming, service::service_fn};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::{net::TcpListener, sync::watch};

pub mod jwks;
pub mod problem;
pub mod respond;
pub mod strict;

pub use respond::Body;

/// A running role: its bound address, and the tasks that stop when it is told to.
#[derive(Debug)]
pub struct RoleHandle {
    /// The bound address (the real port when the configuration asked for port 0).
    pub addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl RoleHandle {
    /// A handle over `tasks`, which all watch `shutdown`.
    #[must_use]
    pub fn new(
        addr: SocketAddr,
        shutdown: watch::Sender<bool>,
        tasks: Vec<tokio::task::JoinHandle<()>>,
    ) -> Self {
        Self {
            addr,
            shutdown,
            tasks,
        }
    }

    /// Signals shutdown and waits for every task (the server drains its connections, the
    /// role's background tasks finish their round and flush what they hold).
    pub async fn stop(self) {
        let _sent = self.shutdown.send(true);
        for task in self.tasks {
            let _joined = task.await;
        }
    }
}

/// The remote address of the connection a request arrived on (a request extension).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer(pub SocketAddr);

/// Accept-loop settings.
#[derive(Debug, Clone, Copy)]
pub struct ServeConfig {
    /// Open connections beyond this are closed at once.
    pub max_connections: usize,
    /// Deadline for a request's header block.
    pub header_read_timeout: Duration,
    /// hyper's HTTP/1 read buffer cap (bounds the header block).
    pub max_buf_size: usize,
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self {
            max_connections: 4096,
            header_read_timeout: Duration::from_secs(5),
            max_buf_size: 64 * 1024,
        }
    }
}

/// Serves `handler` until `shutdown` turns true, then drains open connections for up to
/// 10 s.
pub async fn serve<H, Fut>(
    listener: TcpListener,
    config: ServeConfig,
    mut shutdown: watch::Receiver<bool>,
    handler: H,
) where
    H: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    let permits = Arc::new(tokio::sync::Semaphore::new(config.max_connections));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.changed() => break,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(error) => {
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // Over the connection cap the connection is closed at once (shed, not queued).
        let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
            continue;
        };
        let handler = handler.clone();
        let service = service_fn(move |mut req: Request<Incoming>| {
            req.extensions_mut().insert(Peer(peer));
            let handler = handler.clone();
            async move { Ok::<_, Infallible>(handler(req).await) }
        });
        let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(config.header_read_timeout)
            .max_buf_size(config.max_buf_size);
        let connection = builder
            .serve_connection(TokioIo::new(stream), service)
            .into_owned();
        let watched = graceful.watch(connection);
        tokio::spawn(async move {
            let _permit = permit;
            let _served = watched.await;
        });
    }
    if tokio::time::timeout(Duration::from_secs(10), graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after 10 s; closing");
    }
}

/// The request's id: the inbound `X-Request-Id` when it is acceptable, else a new UUIDv7.
pub fn request_id<B>(req: &Request<B>) -> RequestId {
    req.headers()
        .get(respond::REQUEST_ID)
        .and_then(|v| RequestId::from_inbound(v.as_bytes()))
        .unwrap_or_else(|| RequestId::generated(uuid::Uuid::now_v7().to_string()))
}

/// Why a body could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyError {
    /// Longer than the limit (declared or actual).
    TooLarge,
    /// The connection failed while the body was read.
    Broken,
}

/// Collects a request body of at most `limit` bytes. A declared `Content-Length` over the
/// limit is refused before anything is read.
pub async fn read_body(req: Request<Incoming>, limit: usize) -> Result<Bytes, BodyError> {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(BodyError::TooLarge);
    }
    match Limited::new(req.into_body(), limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) if error.is::<http_body_util::LengthLimitError>() => Err(BodyError::TooLarge),
        Err(_broken) => Err(BodyError::Broken),
    }
}

/// The address a listener actually bound (port 0 in tests).
pub fn local_addr(listener: &TcpListener) -> std::io::Result<SocketAddr> {
    listener.local_addr()
}
