//! The listener: TCP or TLS (rustls, certificates from files, built once at start),
//! HTTP/1.1 and HTTP/2, a connection cap that sheds, the header-read timeout and the
//! header-block bound, request-smuggling shapes refused, and a graceful drain on shutdown.

use std::{
    convert::Infallible, future::Future, net::SocketAddr, path::Path, pin::Pin, sync::Arc,
    time::Duration,
};

use control_model::Denial;
use http::{HeaderValue, Request, Response, header};
use hyper::{body::Incoming, service::service_fn};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _};
use tokio::{net::TcpListener, sync::watch};
use tokio_rustls::TlsAcceptor;

use crate::{
    framing::FramingGuard,
    pipeline::{Gateway, ProxyBody, Refusal, render},
};

/// Builds the TLS acceptor from PEM files; one line naming the problem on failure.
pub(crate) fn tls_acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| format!("TLS_CERT_FILE {}: {e}", cert.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("TLS_CERT_FILE {}: {e}", cert.display()))?;
    if certs.is_empty() {
        return Err(format!("TLS_CERT_FILE {}: no certificate", cert.display()));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("TLS_KEY_FILE {}: {e}", key.display()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| format!("TLS: {e}"))?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .map_err(|e| format!("TLS_CERT_FILE/TLS_KEY_FILE: {e}"))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// The future of one request's answer.
type Answer = Pin<Box<dyn Future<Output = Result<Response<ProxyBody>, Infallible>> + Send>>;

/// Serves until `shutdown` turns true, then drains open connections for up to 30 s.
pub(crate) async fn serve(
    gateway: Arc<Gateway>,
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    mut shutdown: watch::Receiver<bool>,
) {
    let limits = gateway.config.limits;
    let permits = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
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
        let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
            continue;
        };
        let _nodelay = stream.set_nodelay(true);
        let gateway = Arc::clone(&gateway);
        let service = service_fn(move |req: Request<Incoming>| {
            let gateway = Arc::clone(&gateway);
            // Boxed per request: hyper keeps one slot for the service's future in every
            // HTTP/1 connection for as long as the connection lives, so the pipeline's
            // state machine inline would cost its full size on each idle keep-alive
            // connection (decision 0036).
            let answer: Answer = Box::pin(async move { Ok(entry(&gateway, req, peer).await) });
            answer
        });
        let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(None)
            .max_buf_size(limits.max_header_bytes.max(8192))
            .keep_alive(true);
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(16_384))
            .keep_alive_interval(Some(limits.idle_timeout / 2));
        match &tls {
            None => {
                let stream = FramingGuard::new(stream, limits.max_header_bytes, false)
                    .with_deadlines(limits.read_header_timeout, limits.idle_timeout);
                let connection = builder
                    .serve_connection(TokioIo::new(stream), service)
                    .into_owned();
                let watched = graceful.watch(connection);
                tokio::spawn(async move {
                    let _permit = permit;
                    let _served = watched.await;
                });
            }
            Some(acceptor) => {
                let acceptor = acceptor.clone();
                let timeout = limits.read_header_timeout;
                let graceful_watch = graceful.watcher();
                tokio::spawn(async move {
                    let _permit = permit;
                    let Ok(Ok(tls_stream)) =
                        tokio::time::timeout(timeout, acceptor.accept(stream)).await
                    else {
                        return;
                    };
                    let h2 = tls_stream.get_ref().1.alpn_protocol() == Some(b"h2".as_slice());
                    let tls_stream = FramingGuard::new(tls_stream, limits.max_header_bytes, h2)
                        .with_deadlines(limits.read_header_timeout, limits.idle_timeout);
                    let connection = builder
                        .serve_connection(TokioIo::new(tls_stream), service)
                        .into_owned();
                    let _served = graceful_watch.watch(connection).await;
                });
            }
        }
    }
    if tokio::time::timeout(Duration::from_secs(30), graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after 30 s; closing");
    }
}

/// Every request: framing checks, operator routes, then the pipeline.
async fn entry(
    gateway: &Arc<Gateway>,
    req: Request<Incoming>,
    peer: SocketAddr,
) -> Response<ProxyBody> {
    gateway.metrics.record_request();
    let request_id = control_http::request_id(&req).as_str().to_owned();
    if let Some(refusal) = smuggling(&req) {
        let mut response = render(&refusal, &request_id);
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        return response;
    }
    if let Some(response) = crate::ops::route(gateway, &req, &request_id).await {
        return response;
    }
    gateway.handle(req, request_id, Some(peer)).await
}

/// Framing that could desynchronise a downstream parser: `Content-Length` with
/// `Transfer-Encoding`, more than one `Content-Length`, a `Transfer-Encoding` other than a
/// final `chunked`. The second line of defence: `framing::FramingGuard` refuses these (and
/// bare LF, obsolete line folding, bad chunk sizes) on the wire before hyper parses them.
fn smuggling(req: &Request<Incoming>) -> Option<Refusal> {
    let headers = req.headers();
    let lengths = headers.get_all(header::CONTENT_LENGTH).iter().count();
    let encodings: Vec<&HeaderValue> = headers.get_all(header::TRANSFER_ENCODING).iter().collect();
    let bad_encoding = encodings.len() > 1
        || encodings.first().is_some_and(|v| {
            !v.to_str()
                .is_ok_and(|s| s.trim().eq_ignore_ascii_case("chunked"))
        });
    if lengths > 1 || (lengths == 1 && !encodings.is_empty()) || bad_encoding {
        return Some(Refusal::from(Denial::bad_request(
            "malformed request framing",
        )));
    }
    None
}
