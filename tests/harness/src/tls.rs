//! Test certificates made with the `openssl` command line: a CA and a leaf for `localhost`
//! and `127.0.0.1` (webpki refuses a CA certificate as a server's own, so a self-signed
//! leaf will not do).

use std::{ffi::OsString, path::PathBuf};

use anyhow::Context as _;

/// A CA, a leaf certificate and its key, in a temporary directory deleted on drop.
pub struct TestCerts {
    /// The CA certificate (PEM): what a client trusts.
    pub ca_file: PathBuf,
    /// The leaf certificate (PEM).
    pub cert_file: PathBuf,
    /// The leaf's private key (PEM, PKCS#8).
    pub key_file: PathBuf,
    _dir: tempfile::TempDir,
}

impl TestCerts {
    /// Generates a P-256 CA and a leaf for `localhost` valid for a day.
    pub async fn generate() -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let path = |name: &str| dir.path().join(name);
        let (ca_key, ca_file, key_file, csr, cert_file, ext) = (
            path("ca.key"),
            path("ca.pem"),
            path("key.pem"),
            path("leaf.csr"),
            path("cert.pem"),
            path("leaf.ext"),
        );
        std::fs::write(
            &ext,
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n",
        )?;
        let os = |s: &str| OsString::from(s);
        let p = |p: &PathBuf| p.clone().into_os_string();
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
        ]
        .map(os);
        let mut ca: Vec<OsString> = ["req", "-x509", "-days", "1", "-subj", "/CN=caracal test CA"]
            .map(os)
            .to_vec();
        ca.extend(ec.clone());
        ca.extend([os("-keyout"), p(&ca_key), os("-out"), p(&ca_file)]);
        let mut request: Vec<OsString> = ["req", "-new", "-subj", "/CN=localhost"].map(os).to_vec();
        request.extend(ec);
        request.extend([os("-keyout"), p(&key_file), os("-out"), p(&csr)]);
        let mut sign: Vec<OsString> = ["x509", "-req", "-days", "1", "-CAcreateserial"]
            .map(os)
            .to_vec();
        sign.extend([
            os("-in"),
            p(&csr),
            os("-CA"),
            p(&ca_file),
            os("-CAkey"),
            p(&ca_key),
        ]);
        sign.extend([os("-extfile"), p(&ext), os("-out"), p(&cert_file)]);
        for args in [ca, request, sign] {
            let status = tokio::process::Command::new("openssl")
                .args(&args)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status()
                .await
                .context("openssl")?;
            anyhow::ensure!(
                status.success(),
                "openssl could not make the test certificates"
            );
        }
        Ok(Self {
            ca_file,
            cert_file,
            key_file,
            _dir: dir,
        })
    }
}
