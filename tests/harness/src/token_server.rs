//! A real OAuth token endpoint over TLS on `127.0.0.1:<free port>` (a [`TestCerts`]
//! certificate for `localhost`), for the gateway's
//! client-credentials tests. It counts requests, records the last form and
//! `Authorization`, and can be told to fail.

use std::{
    convert::Infallible,
    net::SocketAddr,
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _};

use crate::tls::TestCerts;

/// What the endpoint saw last.
#[derive(Debug, Clone, Default)]
pub struct TokenRequest {
    /// The form body.
    pub form: String,
    /// The `Authorization` header.
    pub authorization: Option<String>,
}

/// A running token endpoint.
pub struct TokenServer {
    /// Listen address.
    pub addr: SocketAddr,
    /// The PEM certificate to trust (`UPSTREAM_CA_FILE`).
    pub ca_file: PathBuf,
    requests: Arc<AtomicUsize>,
    failing: Arc<AtomicBool>,
    last: Arc<Mutex<TokenRequest>>,
    _certs: TestCerts,
    task: tokio::task::JoinHandle<()>,
}

impl TokenServer {
    /// Starts the endpoint; tokens are `tok-<n>` with `expires_in` = `expires_in`.
    pub async fn start(expires_in: u64) -> anyhow::Result<Self> {
        let certs = TestCerts::generate().await?;
        let (cert, key) = (certs.cert_file.clone(), certs.key_file.clone());
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_file_iter(&cert)?.collect::<Result<_, _>>()?;
        let private = PrivateKeyDer::from_pem_file(&key)?;
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, private)?;
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let requests = Arc::new(AtomicUsize::new(0));
        let failing = Arc::new(AtomicBool::new(false));
        let last = Arc::new(Mutex::new(TokenRequest::default()));
        let (count, fail, seen) = (
            Arc::clone(&requests),
            Arc::clone(&failing),
            Arc::clone(&last),
        );
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let acceptor = acceptor.clone();
                let (count, fail, seen) =
                    (Arc::clone(&count), Arc::clone(&fail), Arc::clone(&seen));
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(stream).await else {
                        return;
                    };
                    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let (count, fail, seen) =
                            (Arc::clone(&count), Arc::clone(&fail), Arc::clone(&seen));
                        async move {
                            let authorization = req
                                .headers()
                                .get("authorization")
                                .and_then(|v| v.to_str().ok())
                                .map(str::to_owned);
                            let form = req
                                .into_body()
                                .collect()
                                .await
                                .map(|c| c.to_bytes())
                                .unwrap_or_default();
                            let n = count.fetch_add(1, Ordering::SeqCst) + 1;
                            if let Ok(mut last) = seen.lock() {
                                *last = TokenRequest {
                                    form: String::from_utf8_lossy(&form).into_owned(),
                                    authorization,
                                };
                            }
                            let response = if fail.load(Ordering::SeqCst) {
                                Response::builder()
                                    .status(500)
                                    .body(Full::new(Bytes::from_static(b"{}")))
                            } else {
                                let body = serde_json::json!({"access_token": format!("tok-{n}"), "token_type": "Bearer", "expires_in": expires_in});
                                Response::builder()
                                    .header("content-type", "application/json")
                                    .body(Full::new(Bytes::from(body.to_string())))
                            };
                            Ok::<_, Infallible>(
                                response.unwrap_or_else(|_| Response::new(Full::new(Bytes::new()))),
                            )
                        }
                    });
                    let _served =
                        hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                            .serve_connection(TokioIo::new(tls), service)
                            .await;
                });
            }
        });
        Ok(Self {
            addr,
            ca_file: certs.ca_file.clone(),
            requests,
            failing,
            last,
            _certs: certs,
            task,
        })
    }

    /// `https://localhost:<port>/token`.
    pub fn endpoint(&self) -> String {
        format!("https://localhost:{}/token", self.addr.port())
    }

    /// Token requests served so far.
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    /// Makes every following request fail with 500 (or succeed again).
    pub fn set_failing(&self, failing: bool) {
        self.failing.store(failing, Ordering::SeqCst);
    }

    /// The last request.
    pub fn last(&self) -> TokenRequest {
        self.last.lock().map(|l| l.clone()).unwrap_or_default()
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
