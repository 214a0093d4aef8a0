//! The upstream side of step 32: the client (guarded resolver, rustls), the inbound body
//! as it is forwarded (size and time bounded), and the governed response body that
//! re-checks revocation before every 4 KiB it reads from the upstream.

use std::{
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll, ready},
    time::Duration,
};

use bytes::{Buf as _, Bytes};
use gateway_state::{Anchors, AuthorityView};
use http::{HeaderMap, HeaderValue};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};

use crate::{
    guard::GuardedResolver,
    pipeline::{BoxError, RequestCtx},
};

/// The trust anchors for upstreams and token endpoints: the webpki roots, plus the PEM
/// certificates of `UPSTREAM_CA_FILE` when set.
pub(crate) fn trust_roots(
    extra: Option<&std::path::Path>,
) -> Result<rustls::RootCertStore, String> {
    use rustls_pki_types::{CertificateDer, pem::PemObject as _};
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = extra {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
            .map_err(|e| format!("UPSTREAM_CA_FILE {}: {e}", path.display()))?
            .collect::<Result<_, _>>()
            .map_err(|e| format!("UPSTREAM_CA_FILE {}: {e}", path.display()))?;
        if certs.is_empty() {
            return Err(format!(
                "UPSTREAM_CA_FILE {}: no certificate",
                path.display()
            ));
        }
        for cert in certs {
            roots
                .add(cert)
                .map_err(|e| format!("UPSTREAM_CA_FILE {}: {e}", path.display()))?;
        }
    }
    Ok(roots)
}

/// The largest slice read from the upstream between two revocation re-checks.
const RECHECK_BYTES: usize = 4096;

type Connector = hyper_rustls::HttpsConnector<HttpConnector<GuardedResolver>>;

/// The pooled upstream client.
#[derive(Clone)]
pub(crate) struct UpstreamClient {
    client: Client<Connector, InboundBody>,
}

impl UpstreamClient {
    /// HTTP/1.1 over TCP or TLS (`roots`: the webpki roots plus `UPSTREAM_CA_FILE`),
    /// resolution through the upstream guard.
    pub(crate) fn new(
        connect_timeout: Duration,
        idle: Duration,
        roots: rustls::RootCertStore,
    ) -> Self {
        let mut http = HttpConnector::new_with_resolver(GuardedResolver);
        http.enforce_http(false);
        http.set_connect_timeout(Some(connect_timeout));
        http.set_nodelay(true);
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map(|b| b.with_root_certificates(roots).with_no_client_auth());
        let https = match tls {
            Ok(config) => hyper_rustls::HttpsConnectorBuilder::new()
                .with_tls_config(config)
                .https_or_http()
                .enable_http1()
                .wrap_connector(http),
            Err(_unsupported) => hyper_rustls::HttpsConnectorBuilder::new()
                .with_webpki_roots()
                .https_or_http()
                .enable_http1()
                .wrap_connector(http),
        };
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(idle)
            .pool_max_idle_per_host(256)
            .build(https);
        Self { client }
    }

    /// Sends the request; the response arrives with its headers.
    pub(crate) async fn send(
        &self,
        req: http::Request<InboundBody>,
    ) -> Result<http::Response<Incoming>, hyper_util::client::legacy::Error> {
        self.client.request(req).await
    }
}

/// Why the inbound body stopped early.
#[derive(Debug, Default)]
pub(crate) struct InboundFlags {
    /// It crossed `MAX_REQUEST_BYTES`.
    pub(crate) too_large: AtomicBool,
    /// It did not arrive within `READ_TIMEOUT`.
    pub(crate) timed_out: AtomicBool,
    /// The client's connection failed while it was read.
    pub(crate) broken: AtomicBool,
}

/// The caller's body: still arriving, or read whole before the plugins ran (a plugin asked
/// for its digest).
pub(crate) enum CallerBody {
    /// Streams through as it arrives.
    Streaming(Incoming),
    /// Read already; sent in one frame.
    Buffered(Option<Bytes>),
}

impl Body for CallerBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match &mut *self {
            CallerBody::Streaming(inner) => Pin::new(inner).poll_frame(cx),
            CallerBody::Buffered(bytes) => Poll::Ready(
                bytes
                    .take()
                    .filter(|b| !b.is_empty())
                    .map(|b| Ok(Frame::data(b))),
            ),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            CallerBody::Streaming(inner) => inner.is_end_stream(),
            CallerBody::Buffered(bytes) => bytes.as_ref().is_none_or(Bytes::is_empty),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            CallerBody::Streaming(inner) => inner.size_hint(),
            CallerBody::Buffered(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
        }
    }
}

/// The caller's body as it is forwarded: cut at the size limit and at the read deadline.
pub(crate) struct InboundBody {
    inner: CallerBody,
    read: u64,
    limit: u64,
    deadline: Pin<Box<tokio::time::Sleep>>,
    flags: Arc<InboundFlags>,
}

impl InboundBody {
    pub(crate) fn new(
        inner: CallerBody,
        limit: u64,
        read_timeout: Duration,
        flags: Arc<InboundFlags>,
    ) -> Self {
        Self {
            inner,
            read: 0,
            limit,
            deadline: Box::pin(tokio::time::sleep(read_timeout)),
            flags,
        }
    }
}

/// A body stopped by a limit.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Stopped(&'static str);

impl Body for InboundBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.read = this.read.saturating_add(data.len() as u64);
                    if this.read > this.limit {
                        this.flags.too_large.store(true, Ordering::Release);
                        return Poll::Ready(Some(Err(Box::new(Stopped("request too large")))));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(error))) => {
                this.flags.broken.store(true, Ordering::Release);
                Poll::Ready(Some(Err(Box::new(error))))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                if this.deadline.as_mut().poll(cx).is_ready() {
                    this.flags.timed_out.store(true, Ordering::Release);
                    return Poll::Ready(Some(Err(Box::new(Stopped("request body read timeout")))));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The upstream's response body as the client receives it: revocation re-checked before
/// every read of at most 4 KiB; on a hit the body ends with the trailer
/// `X-Caracal-Revoked: true` (or, when the upstream framed it by length, with an error that
/// closes the connection). Owns the request's context and finishes it when it ends.
pub(crate) struct GovernedBody {
    inner: Incoming,
    pending: Bytes,
    view: Arc<AuthorityView>,
    anchors: Anchors,
    framed_by_length: bool,
    idle_timeout: Duration,
    idle: Pin<Box<tokio::time::Sleep>>,
    bytes: u64,
    done: bool,
    ctx: Option<RequestCtx>,
    on_revoked: Option<Arc<dyn Fn() + Send + Sync>>,
}

impl GovernedBody {
    pub(crate) fn new(
        inner: Incoming,
        view: Arc<AuthorityView>,
        anchors: Anchors,
        framed_by_length: bool,
        idle_timeout: Duration,
        ctx: RequestCtx,
        on_revoked: Arc<dyn Fn() + Send + Sync>,
    ) -> Self {
        Self {
            inner,
            pending: Bytes::new(),
            view,
            anchors,
            framed_by_length,
            idle_timeout,
            idle: Box::pin(tokio::time::sleep(idle_timeout)),
            bytes: 0,
            done: false,
            ctx: Some(ctx),
            on_revoked: Some(on_revoked),
        }
    }

    fn finish(&mut self, error_kind: Option<&str>, revoked: bool) {
        self.done = true;
        if let Some(mut ctx) = self.ctx.take() {
            ctx.audit.set("response_bytes", self.bytes);
            ctx.audit.set("revocation_interrupted", revoked);
            if let Some(kind) = error_kind {
                ctx.audit.set("error_kind", kind);
            }
            let status = ctx.status;
            ctx.finish(status);
        }
    }

    fn slice(&mut self) -> Frame<Bytes> {
        let take = self.pending.len().min(RECHECK_BYTES);
        let chunk = self.pending.split_to(take);
        self.bytes = self.bytes.saturating_add(chunk.len() as u64);
        Frame::data(chunk)
    }
}

impl Body for GovernedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        // Before every read (and before the first byte): the anchors, live.
        if this.view.anchors_revoked(&this.anchors) {
            if let Some(hook) = this.on_revoked.take() {
                hook();
            }
            this.finish(None, true);
            if this.framed_by_length {
                return Poll::Ready(Some(Err(Box::new(Stopped("revoked while streaming")))));
            }
            let mut trailers = HeaderMap::new();
            trailers.insert("x-caracal-revoked", HeaderValue::from_static("true"));
            return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
        }
        if this.pending.has_remaining() {
            return Poll::Ready(Some(Ok(this.slice())));
        }
        loop {
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    let deadline = tokio::time::Instant::now() + this.idle_timeout;
                    this.idle.as_mut().reset(deadline);
                    match frame.into_data() {
                        Ok(data) if data.is_empty() => continue,
                        Ok(data) => {
                            this.pending = data;
                            return Poll::Ready(Some(Ok(this.slice())));
                        }
                        // Upstream trailers are not forwarded: the gateway owns the trailer
                        // block of a governed response.
                        Err(_trailers) => continue,
                    }
                }
                Poll::Ready(Some(Err(error))) => {
                    this.finish(Some("response_copy_failed"), false);
                    return Poll::Ready(Some(Err(Box::new(error))));
                }
                Poll::Ready(None) => {
                    this.finish(None, false);
                    return Poll::Ready(None);
                }
                Poll::Pending => {
                    ready!(this.idle.as_mut().poll(cx));
                    this.finish(Some("stream_idle_timeout"), false);
                    return Poll::Ready(Some(Err(Box::new(Stopped("upstream idle timeout")))));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }
}

impl Drop for GovernedBody {
    fn drop(&mut self) {
        if !self.done {
            if self.pending.is_empty() && self.inner.is_end_stream() {
                // Everything was delivered: hyper stops polling a length-framed body once its
                // last byte is written, so the end is seen here rather than in `poll_frame`.
                self.finish(None, false);
            } else {
                // The client went away mid-body.
                self.finish(Some("client_cancelled"), false);
            }
        }
    }
}
