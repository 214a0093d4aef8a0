//! A minimal HTTP/1.1 client for tests: one connection per request, real sockets.

use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

/// A response with its body collected.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    /// Status code.
    pub status: u16,
    /// Headers.
    pub headers: http::HeaderMap,
    /// Body bytes.
    pub body: Bytes,
    /// Trailers, when the response carried any.
    pub trailers: Option<http::HeaderMap>,
}

impl HttpResponse {
    /// The body as JSON.
    pub fn json(&self) -> anyhow::Result<serde_json::Value> {
        Ok(serde_json::from_slice(&self.body)?)
    }

    /// A header as a string.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    }
}

/// Sends one request.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path_and_query: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> anyhow::Result<HttpResponse> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _closed = connection.await;
    });
    let mut builder = http::Request::builder()
        .method(method)
        .uri(path_and_query)
        .header(http::header::HOST, addr.to_string());
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let response = sender
        .send_request(builder.body(Full::new(body.into()))?)
        .await?;
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let collected = response.into_body().collect().await?;
    let trailers = collected.trailers().cloned();
    Ok(HttpResponse {
        status,
        headers,
        body: collected.to_bytes(),
        trailers,
    })
}

/// `POST` a form body.
pub async fn post_form(
    addr: SocketAddr,
    path: &str,
    form: &[(&str, &str)],
) -> anyhow::Result<HttpResponse> {
    let body: String = form_encode(form);
    request(
        addr,
        "POST",
        path,
        &[("content-type", "application/x-www-form-urlencoded")],
        body,
    )
    .await
}

/// `GET`.
pub async fn get(addr: SocketAddr, path_and_query: &str) -> anyhow::Result<HttpResponse> {
    request(addr, "GET", path_and_query, &[], Bytes::new()).await
}

/// `application/x-www-form-urlencoded` encoding.
pub fn form_encode(form: &[(&str, &str)]) -> String {
    let mut serializer = FormSerializer::default();
    for (k, v) in form {
        serializer.pair(k, v);
    }
    serializer.finish()
}

#[derive(Default)]
struct FormSerializer(String);

impl FormSerializer {
    fn pair(&mut self, k: &str, v: &str) {
        if !self.0.is_empty() {
            self.0.push('&');
        }
        self.0.push_str(&encode(k));
        self.0.push('=');
        self.0.push_str(&encode(v));
    }
    fn finish(self) -> String {
        self.0
    }
}

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'*' => {
                (b as char).to_string()
            }
            b' ' => "+".to_owned(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Sends one request over TLS to `localhost` at `addr`, trusting the PEM CA in `ca_file`,
/// as HTTP/2 when `http2` (negotiated by ALPN; fails if the server does not agree) or
/// HTTP/1.1.
pub async fn request_tls(
    addr: SocketAddr,
    ca_file: &std::path::Path,
    http2: bool,
    method: &str,
    path_and_query: &str,
    headers: &[(&str, &str)],
) -> anyhow::Result<HttpResponse> {
    use rustls_pki_types::{CertificateDer, ServerName, pem::PemObject as _};
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca_file)? {
        roots.add(cert?)?;
    }
    let mut config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![if http2 {
        b"h2".to_vec()
    } else {
        b"http/1.1".to_vec()
    }];
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let tls = connector
        .connect(ServerName::try_from("localhost")?, tcp)
        .await?;
    anyhow::ensure!(
        !http2 || tls.get_ref().1.alpn_protocol() == Some(b"h2"),
        "the server did not negotiate h2"
    );
    let mut builder = http::Request::builder().method(method);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let response = if http2 {
        let (mut sender, connection) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            TokioIo::new(tls),
        )
        .await?;
        tokio::spawn(async move {
            let _closed = connection.await;
        });
        let request = builder
            .uri(format!("https://localhost:{}{path_and_query}", addr.port()))
            .body(Full::new(Bytes::new()))?;
        sender.send_request(request).await?
    } else {
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
        tokio::spawn(async move {
            let _closed = connection.await;
        });
        let request = builder
            .uri(path_and_query)
            .header(http::header::HOST, format!("localhost:{}", addr.port()))
            .body(Full::new(Bytes::new()))?;
        sender.send_request(request).await?
    };
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let collected = response.into_body().collect().await?;
    let trailers = collected.trailers().cloned();
    Ok(HttpResponse {
        status,
        headers,
        body: collected.to_bytes(),
        trailers,
    })
}
