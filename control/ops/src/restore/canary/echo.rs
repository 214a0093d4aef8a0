//! The canary's upstream: an HTTP server on `127.0.0.1:<free port>` in this process that
//! answers every request with 200 `{"method","path"}` and counts the requests for the
//! canary's path, so the canary can tell that the gateway really forwarded its request.
//!
//! It sits on loopback because the canary must not open a port to the network; a gateway on
//! another host cannot reach it (the canary's fix text says so).

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use hyper::body::Incoming;
use tokio::{sync::watch, task::JoinHandle};

/// How many connections the echo serves at once (the gateway needs one).
const MAX_CONNECTIONS: usize = 16;
/// How long a stop waits for the server's drain before it aborts the task.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// A running echo upstream.
pub(super) struct Echo {
    addr: SocketAddr,
    hits: Arc<AtomicU64>,
    shutdown: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Echo {
    /// Binds 127.0.0.1:0 and serves; requests for `GET path` are counted.
    pub(super) async fn start(path: &'static str) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let hits = Arc::new(AtomicU64::new(0));
        let (shutdown, watching) = watch::channel(false);
        let counted = Arc::clone(&hits);
        let handler = move |req: http::Request<Incoming>| {
            let counted = Arc::clone(&counted);
            async move { answer(&req, path, &counted) }
        };
        let config = control_http::ServeConfig {
            max_connections: MAX_CONNECTIONS,
            ..control_http::ServeConfig::default()
        };
        let task = tokio::spawn(control_http::serve(listener, config, watching, handler));
        Ok(Self {
            addr,
            hits,
            shutdown,
            task,
        })
    }

    /// The base URL to use as a resource's `upstream_url`.
    pub(super) fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// How many `GET path` requests arrived.
    pub(super) fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }

    /// Stops serving: open connections get [`STOP_GRACE`] to finish, then the task ends.
    pub(super) async fn stop(self) {
        let _sent = self.shutdown.send(true);
        let abort = self.task.abort_handle();
        if tokio::time::timeout(STOP_GRACE, self.task).await.is_err() {
            abort.abort();
        }
    }
}

/// 200 `{"method","path"}`; a `GET path` is counted.
fn answer<B>(
    req: &http::Request<B>,
    path: &str,
    hits: &AtomicU64,
) -> http::Response<control_http::Body> {
    let method = req.method().as_str();
    let seen = req.uri().path();
    if method == "GET" && seen == path {
        hits.fetch_add(1, Ordering::Relaxed);
    }
    control_http::respond::json(200, &serde_json::json!({"method": method, "path": seen}))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http_probe::{HttpClient, Outbound};

    #[tokio::test]
    async fn the_echo_answers_with_method_and_path_and_counts_the_canary_path_only() {
        let echo = Echo::start("/canary").await.unwrap();
        let client = HttpClient::new();
        let deadline = Duration::from_secs(5);
        let url = format!("{}/canary", echo.url());
        let answer = client
            .send(&Outbound::new(http::Method::GET, &url), deadline)
            .await
            .unwrap();
        assert_eq!(answer.status, 200);
        let body = answer.json().unwrap();
        assert_eq!(body["method"], "GET");
        assert_eq!(body["path"], "/canary");
        let other = format!("{}/elsewhere", echo.url());
        client
            .send(&Outbound::new(http::Method::POST, &url), deadline)
            .await
            .unwrap();
        client
            .send(&Outbound::new(http::Method::GET, &other), deadline)
            .await
            .unwrap();
        assert_eq!(echo.hits(), 1);
        echo.stop().await;
    }
}
