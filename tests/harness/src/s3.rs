//! A real S3-compatible server on `127.0.0.1:0` for the audit export tests: moto's server mode
//! from the pinned Python 3.12 venv `tests/s3/.venv` (built by `scripts/conformance-venv.sh
//! tests/s3` on first use). It speaks the S3 REST protocol over HTTP, checks nothing of the
//! signature, and honours `If-None-Match: *` on `PUT` (412 when the key exists), which is
//! what the export relies on.

use std::{net::SocketAddr, path::PathBuf, process::Stdio, time::Duration};

use anyhow::Context;
use tokio::{sync::Mutex, time::Instant};

/// Serialises venv builds of concurrent tests.
static VENV: Mutex<()> = Mutex::const_new(());

/// A running S3-compatible server; killed on drop.
#[derive(Debug)]
pub struct S3Server {
    /// Its address.
    pub addr: SocketAddr,
    child: tokio::process::Child,
}

impl S3Server {
    /// Builds the venv when needed and starts a server on a free loopback port.
    ///
    /// # Errors
    ///
    /// The venv cannot be built, or the server does not answer within 30 s.
    pub async fn start() -> anyhow::Result<Self> {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
        {
            let _one_at_a_time = VENV.lock().await;
            let built = tokio::process::Command::new(root.join("scripts/conformance-venv.sh"))
                .arg("tests/s3")
                .current_dir(&root)
                .stdout(Stdio::null())
                .status()
                .await
                .context("scripts/conformance-venv.sh tests/s3")?;
            anyhow::ensure!(built.success(), "the tests/s3 venv could not be built");
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let child = tokio::process::Command::new(root.join("tests/s3/.venv/bin/moto_server"))
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("tests/s3/.venv/bin/moto_server")?;
        let server = Self { addr, child };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(response) = crate::http::get(addr, "/moto-api/").await
                && response.status < 500
            {
                return Ok(server);
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "the S3 server did not answer on {addr}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The endpoint URL (`http://127.0.0.1:<port>`).
    #[must_use]
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Creates `bucket`.
    ///
    /// # Errors
    ///
    /// The server refuses.
    pub async fn create_bucket(&self, bucket: &str) -> anyhow::Result<()> {
        let response =
            crate::http::request(self.addr, "PUT", &format!("/{bucket}"), &[], "").await?;
        anyhow::ensure!(
            response.status == 200,
            "create bucket {bucket}: {}",
            response.status
        );
        Ok(())
    }

    /// Stops the server (the bucket is gone with it).
    pub async fn stop(mut self) {
        let _killed = self.child.kill().await;
    }
}
