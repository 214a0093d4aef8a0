//! One-shot HTTP(S) GETs for the operator commands that probe running services
//! (`caracal restore verify` asks each role's `/ready`).

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::{client::legacy::Client, rt::TokioExecutor};

/// The status of `GET url`, or why there is none (a bad URL, a refused connection, the
/// deadline). The body is not read beyond what the client buffers.
pub async fn get_status(url: &str, deadline: Duration) -> Result<u16, String> {
    let uri: http::Uri = url.parse().map_err(|_bad| format!("{url} is not a URL"))?;
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_webpki_roots()
        .https_or_http()
        .enable_http1()
        .build();
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build(https);
    match tokio::time::timeout(deadline, client.get(uri)).await {
        Ok(Ok(response)) => Ok(response.status().as_u16()),
        Ok(Err(error)) => Err(format!("request failed ({error})")),
        Err(_elapsed) => Err(format!("no answer within {} s", deadline.as_secs())),
    }
}
