//! Where export objects live (storage §8.7): a directory or an S3-compatible bucket, behind
//! one [`ObjectStore`] used by the export leader (which only creates objects) and by
//! `caracal audit verify --export` (which lists and reads them).
//!
//! Objects are written once and never replaced. In a directory an object is linked into place
//! from a synced file with a call that fails when the name exists; in a bucket it is a `PUT`
//! with `If-None-Match: *`, which the store refuses with 412 when the key exists. Either way
//! "already there" is an answer ([`Put::Existed`]), not an error: an overlapping leader wrote
//! the hour first.
//!
//! S3 requests are signed with SigV4 by `rusty-s3` (query-string signatures valid for
//! [`SIGNATURE_TTL`]) and sent with the hyper client every role uses for outbound calls.
//! Signed URLs carry credentials, so they are never logged or put in an error: errors name
//! the operation, the key, the status and the S3 error code.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{Method, Request, StatusCode, header};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use rusty_s3::{Bucket, Credentials, S3Action, UrlStyle, actions::ListObjectsV2};
use tokio::io::AsyncWriteExt;
use zeroize::Zeroizing;

use crate::config::Lookup;

/// How long a request signature stays valid.
pub const SIGNATURE_TTL: Duration = Duration::from_secs(300);
/// The largest S3 error or listing body read.
const MAX_LISTING_BYTES: usize = 16 << 20;

/// Where exports go: `AUDIT_EXPORT_DIR` or `AUDIT_EXPORT_S3_*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExportTarget {
    /// A directory (local or mounted).
    Dir(PathBuf),
    /// An S3-compatible bucket.
    S3(Box<S3Settings>),
}

impl std::fmt::Display for ExportTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Dir(dir) => write!(f, "{}", dir.display()),
            Self::S3(s3) => write!(f, "s3://{}/{}", s3.bucket, s3.prefix),
        }
    }
}

/// An S3-compatible bucket and the credentials to write to it. `Debug` hides the secrets.
#[derive(Clone, PartialEq, Eq)]
pub struct S3Settings {
    /// The endpoint (`AUDIT_EXPORT_S3_ENDPOINT`, default `https://s3.<region>.amazonaws.com`).
    pub endpoint: url::Url,
    /// `AUDIT_EXPORT_S3_REGION`, else `AWS_REGION`, else `us-east-1`.
    pub region: String,
    /// The bucket.
    pub bucket: String,
    /// A key prefix ending in `/`, or empty (`AUDIT_EXPORT_S3_PREFIX`).
    pub prefix: String,
    /// Path-style URLs (`AUDIT_EXPORT_S3_PATH_STYLE`; default on with a custom endpoint).
    pub path_style: bool,
    /// `AWS_ACCESS_KEY_ID`.
    pub access_key_id: String,
    /// `AWS_SECRET_ACCESS_KEY` (or the file named by `AWS_SECRET_ACCESS_KEY_FILE`).
    pub secret_access_key: Zeroizing<String>,
    /// `AWS_SESSION_TOKEN`, for temporary credentials.
    pub session_token: Option<Zeroizing<String>>,
    /// `AUDIT_EXPORT_S3_TIMEOUT_SECS` (300): the bound of one request, upload included.
    pub timeout: Duration,
}

impl std::fmt::Debug for S3Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Settings")
            .field("endpoint", &self.endpoint.as_str())
            .field("region", &self.region)
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .field("path_style", &self.path_style)
            .finish_non_exhaustive()
    }
}

impl S3Settings {
    /// The settings of `bucket` and `prefix` from the environment. Errors are one line naming
    /// the variable, never a value.
    ///
    /// # Errors
    ///
    /// A malformed or missing variable.
    pub fn from_env(lookup: Lookup<'_>, bucket: &str, prefix: &str) -> Result<Self, String> {
        if bucket.is_empty()
            || !bucket
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        {
            return Err(
                "AUDIT_EXPORT_S3_BUCKET must be a bucket name (lowercase letters, digits, '-', '.')"
                    .to_owned(),
            );
        }
        let region = lookup("AUDIT_EXPORT_S3_REGION")
            .or_else(|| lookup("AWS_REGION"))
            .unwrap_or_else(|| "us-east-1".to_owned());
        let custom = lookup("AUDIT_EXPORT_S3_ENDPOINT");
        let endpoint_text = custom
            .clone()
            .unwrap_or_else(|| format!("https://s3.{region}.amazonaws.com"));
        let endpoint = url::Url::parse(&endpoint_text)
            .ok()
            .filter(|url| matches!(url.scheme(), "http" | "https") && url.host_str().is_some())
            .ok_or_else(|| {
                "AUDIT_EXPORT_S3_ENDPOINT must be an http:// or https:// URL".to_owned()
            })?;
        let path_style = match lookup("AUDIT_EXPORT_S3_PATH_STYLE").as_deref() {
            None => custom.is_some(),
            Some("true" | "1") => true,
            Some("false" | "0") => false,
            Some(_) => return Err("AUDIT_EXPORT_S3_PATH_STYLE must be true or false".to_owned()),
        };
        let access_key_id = lookup("AWS_ACCESS_KEY_ID")
            .filter(|key| !key.trim().is_empty())
            .ok_or_else(|| "AWS_ACCESS_KEY_ID must be set for an S3 export".to_owned())?;
        let secret_access_key = control_store::settings::role::secret(
            lookup,
            "AWS_SECRET_ACCESS_KEY",
            "AWS_SECRET_ACCESS_KEY_FILE",
        )?
        .filter(|secret| !secret.is_empty())
        .ok_or_else(|| "AWS_SECRET_ACCESS_KEY must be set for an S3 export".to_owned())?;
        let timeout = control_store::settings::role::number(
            lookup,
            "AUDIT_EXPORT_S3_TIMEOUT_SECS",
            300,
            1,
            86_400,
        )?;
        let prefix = prefix.trim_matches('/');
        let settings = Self {
            endpoint,
            region,
            bucket: bucket.to_owned(),
            prefix: if prefix.is_empty() {
                String::new()
            } else {
                format!("{prefix}/")
            },
            path_style,
            access_key_id: access_key_id.trim().to_owned(),
            secret_access_key: Zeroizing::new(secret_access_key),
            session_token: lookup("AWS_SESSION_TOKEN")
                .filter(|token| !token.is_empty())
                .map(Zeroizing::new),
            timeout: Duration::from_secs(timeout),
        };
        settings.bucket_handle()?;
        Ok(settings)
    }

    fn bucket_handle(&self) -> Result<Bucket, String> {
        let style = if self.path_style {
            UrlStyle::Path
        } else {
            UrlStyle::VirtualHost
        };
        Bucket::new(
            self.endpoint.clone(),
            style,
            self.bucket.clone(),
            self.region.clone(),
        )
        .map_err(|_bad| {
            "AUDIT_EXPORT_S3_ENDPOINT and AUDIT_EXPORT_S3_BUCKET do not form a bucket URL (a virtual-host bucket needs a DNS endpoint; set AUDIT_EXPORT_S3_PATH_STYLE=true)".to_owned()
        })
    }
}

/// What [`ObjectStore::put_once`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Put {
    /// The object was created.
    Created,
    /// An object of that name was already there; it was left as it is.
    Existed,
}

/// What an object is made of: bytes, or a spooled file (linked into a directory store,
/// uploaded to a bucket).
#[derive(Debug)]
pub enum Body<'a> {
    /// In memory.
    Bytes(Bytes),
    /// A synced file on the same file system as a directory store.
    File(&'a Path),
}

/// An object opened for reading.
#[derive(Debug)]
pub enum Object {
    /// A file of a directory store.
    File(std::fs::File),
    /// The bytes of a bucket object.
    Bytes(Bytes),
}

/// An object store operation failed. `Display` never holds a signed URL or a secret.
#[derive(Debug, thiserror::Error)]
pub enum ObjectStoreError {
    /// A file operation failed.
    #[error("{0}: {1}")]
    Io(String, std::io::ErrorKind),
    /// The bucket answered with an error.
    #[error("S3 {operation} {key}: {status}{code}")]
    Status {
        /// `PUT`, `GET` or `LIST`.
        operation: &'static str,
        /// The key (or prefix).
        key: String,
        /// The status.
        status: StatusCode,
        /// `" (Code)"` from the error body, when there is one.
        code: String,
    },
    /// The bucket could not be reached, or did not answer in time.
    #[error("S3 {operation} {key}: {reason}")]
    Transport {
        /// `PUT`, `GET` or `LIST`.
        operation: &'static str,
        /// The key (or prefix).
        key: String,
        /// What failed.
        reason: String,
    },
}

fn io_error(what: &Path) -> impl FnOnce(std::io::Error) -> ObjectStoreError + '_ {
    move |error| ObjectStoreError::Io(what.display().to_string(), error.kind())
}

type HttpClient = Client<control_http::jwks::Connector, Full<Bytes>>;

/// A directory or a bucket of export objects, named by `/`-separated paths relative to the
/// export root (`audit/2026/05/21/2026-05-21T13.parquet`).
#[derive(Debug, Clone)]
pub enum ObjectStore {
    /// A directory.
    Dir(PathBuf),
    /// A bucket.
    S3(Box<S3Store>),
}

/// A bucket with its client.
#[derive(Clone)]
pub struct S3Store {
    bucket: Bucket,
    credentials: Credentials,
    prefix: String,
    timeout: Duration,
    client: HttpClient,
}

impl std::fmt::Debug for S3Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Store")
            .field("bucket", &self.bucket.name())
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl ObjectStore {
    /// The store of `target`.
    ///
    /// # Errors
    ///
    /// A bucket URL that cannot be formed (checked at configuration already).
    pub fn open(target: &ExportTarget) -> Result<Self, String> {
        match target {
            ExportTarget::Dir(dir) => Ok(Self::Dir(dir.clone())),
            ExportTarget::S3(settings) => {
                let credentials = match &settings.session_token {
                    Some(token) => Credentials::new_with_token(
                        settings.access_key_id.clone(),
                        settings.secret_access_key.as_str(),
                        token.as_str(),
                    ),
                    None => Credentials::new(
                        settings.access_key_id.clone(),
                        settings.secret_access_key.as_str(),
                    ),
                };
                Ok(Self::S3(Box::new(S3Store {
                    bucket: settings.bucket_handle()?,
                    credentials,
                    prefix: settings.prefix.clone(),
                    timeout: settings.timeout,
                    client: Client::builder(TokioExecutor::new())
                        .build(control_http::jwks::connector(Some(Duration::from_secs(10)))),
                })))
            }
        }
    }

    /// Where a spooled object is written before [`Self::put_once`]: beside the objects for
    /// a directory (a link needs one file system), `spool` (or the temporary directory) for a
    /// bucket.
    #[must_use]
    pub fn spool_dir(&self, spool: Option<&Path>) -> PathBuf {
        match self {
            Self::Dir(dir) => dir.clone(),
            Self::S3(_) => spool.map_or_else(std::env::temp_dir, Path::to_path_buf),
        }
    }

    /// Creates `name` with `body` unless it exists.
    ///
    /// # Errors
    ///
    /// [`ObjectStoreError`]; nothing was created.
    pub async fn put_once(&self, name: &str, body: Body<'_>) -> Result<Put, ObjectStoreError> {
        match self {
            Self::Dir(root) => put_file_once(&root.join(name), body).await,
            Self::S3(s3) => {
                let bytes = match body {
                    Body::Bytes(bytes) => bytes,
                    Body::File(path) => {
                        Bytes::from(tokio::fs::read(path).await.map_err(io_error(path))?)
                    }
                };
                s3.put_once(name, bytes).await
            }
        }
    }

    /// The bytes of `name`, or `None` when there is no such object.
    ///
    /// # Errors
    ///
    /// [`ObjectStoreError`].
    pub async fn get(&self, name: &str) -> Result<Option<Bytes>, ObjectStoreError> {
        match self {
            Self::Dir(root) => {
                let path = root.join(name);
                match tokio::fs::read(&path).await {
                    Ok(bytes) => Ok(Some(Bytes::from(bytes))),
                    Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
                    Err(error) => Err(io_error(&path)(error)),
                }
            }
            Self::S3(s3) => s3.get(name).await,
        }
    }

    /// `name` for reading: an open file in a directory, the bytes of a bucket object; `None`
    /// when there is no such object.
    ///
    /// # Errors
    ///
    /// [`ObjectStoreError`].
    pub async fn read(&self, name: &str) -> Result<Option<Object>, ObjectStoreError> {
        match self {
            Self::Dir(root) => {
                let path = root.join(name);
                match tokio::fs::File::open(&path).await {
                    Ok(file) => Ok(Some(Object::File(file.into_std().await))),
                    Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
                    Err(error) => Err(io_error(&path)(error)),
                }
            }
            Self::S3(s3) => Ok(s3.get(name).await?.map(Object::Bytes)),
        }
    }

    /// Every object name under `audit/`, in no particular order.
    ///
    /// # Errors
    ///
    /// [`ObjectStoreError`] (a directory without `audit/` is one).
    pub async fn list(&self) -> Result<Vec<String>, ObjectStoreError> {
        match self {
            Self::Dir(root) => {
                let root = root.clone();
                tokio::task::spawn_blocking(move || list_dir(&root))
                    .await
                    .map_err(|_cancelled| {
                        ObjectStoreError::Io("listing".into(), std::io::ErrorKind::Interrupted)
                    })?
            }
            Self::S3(s3) => s3.list("audit/").await,
        }
    }
}

/// Every file under `root/audit`, as names relative to `root`.
fn list_dir(root: &Path) -> Result<Vec<String>, ObjectStoreError> {
    let mut names = Vec::new();
    let mut pending = vec![(root.join("audit"), "audit".to_owned())];
    while let Some((dir, name)) = pending.pop() {
        for entry in std::fs::read_dir(&dir).map_err(io_error(&dir))? {
            let entry = entry.map_err(io_error(&dir))?;
            let relative = format!("{name}/{}", entry.file_name().to_string_lossy());
            if entry.file_type().map_err(io_error(&dir))?.is_dir() {
                pending.push((entry.path(), relative));
            } else {
                names.push(relative);
            }
        }
    }
    Ok(names)
}

/// Creates `path` unless it exists: from a spooled file by a hard link, from bytes through a
/// synced temporary file and a hard link (a link refuses an existing name); then the
/// directory is synced.
async fn put_file_once(path: &Path, body: Body<'_>) -> Result<Put, ObjectStoreError> {
    let parent = path
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
    tokio::fs::create_dir_all(&parent)
        .await
        .map_err(io_error(&parent))?;
    let (source, temporary) = match body {
        Body::File(file) => (file.to_path_buf(), false),
        Body::Bytes(bytes) => {
            let temporary = parent.join(format!(
                ".{}.{}.tmp",
                path.file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                std::process::id()
            ));
            let mut file = tokio::fs::File::create(&temporary)
                .await
                .map_err(io_error(&temporary))?;
            file.write_all(&bytes).await.map_err(io_error(&temporary))?;
            file.sync_all().await.map_err(io_error(&temporary))?;
            (temporary, true)
        }
    };
    let linked = tokio::fs::hard_link(&source, path).await;
    if temporary {
        tokio::fs::remove_file(&source)
            .await
            .map_err(io_error(&source))?;
    }
    match linked {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => return Ok(Put::Existed),
        Err(error) => return Err(io_error(path)(error)),
    }
    tokio::fs::File::open(&parent)
        .await
        .map_err(io_error(&parent))?
        .sync_all()
        .await
        .map_err(io_error(&parent))?;
    Ok(Put::Created)
}

impl S3Store {
    fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    async fn send(
        &self,
        operation: &'static str,
        key: &str,
        request: Request<Full<Bytes>>,
    ) -> Result<(StatusCode, Bytes), ObjectStoreError> {
        let transport = |reason: String| ObjectStoreError::Transport {
            operation,
            key: key.to_owned(),
            reason,
        };
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|error| transport(describe_client_error(&error)))?;
            let status = response.status();
            let limit = if status.is_success() && operation == "GET" {
                usize::MAX
            } else {
                MAX_LISTING_BYTES
            };
            let body = Limited::new(response.into_body(), limit)
                .collect()
                .await
                .map_err(|_failed| transport("the response body failed".into()))?
                .to_bytes();
            Ok((status, body))
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_elapsed| transport(format!("no answer within {:?}", self.timeout)))?
    }

    fn failed(
        operation: &'static str,
        key: &str,
        status: StatusCode,
        body: &[u8],
    ) -> ObjectStoreError {
        ObjectStoreError::Status {
            operation,
            key: key.to_owned(),
            status,
            code: error_code(body)
                .map(|code| format!(" ({code})"))
                .unwrap_or_default(),
        }
    }

    async fn put_once(&self, name: &str, bytes: Bytes) -> Result<Put, ObjectStoreError> {
        let key = self.key(name);
        let mut action = self.bucket.put_object(Some(&self.credentials), &key);
        action.headers_mut().insert("if-none-match", "*");
        let url = action.sign(SIGNATURE_TTL);
        let request = Request::builder()
            .method(Method::PUT)
            .uri(url.as_str())
            .header(header::IF_NONE_MATCH, "*")
            .header(header::CONTENT_LENGTH, bytes.len())
            .body(Full::new(bytes))
            .map_err(|_bad| ObjectStoreError::Transport {
                operation: "PUT",
                key: key.clone(),
                reason: "the request could not be built".into(),
            })?;
        let (status, body) = self.send("PUT", &key, request).await?;
        match status {
            status if status.is_success() => Ok(Put::Created),
            StatusCode::PRECONDITION_FAILED => Ok(Put::Existed),
            status => Err(Self::failed("PUT", &key, status, &body)),
        }
    }

    async fn get(&self, name: &str) -> Result<Option<Bytes>, ObjectStoreError> {
        let key = self.key(name);
        let url = self
            .bucket
            .get_object(Some(&self.credentials), &key)
            .sign(SIGNATURE_TTL);
        let (status, body) = self
            .send("GET", &key, get_request(&url, &key, "GET")?)
            .await?;
        match status {
            status if status.is_success() => Ok(Some(body)),
            StatusCode::NOT_FOUND => Ok(None),
            status => Err(Self::failed("GET", &key, status, &body)),
        }
    }

    async fn list(&self, under: &str) -> Result<Vec<String>, ObjectStoreError> {
        let prefix = self.key(under);
        let mut names = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut action = ListObjectsV2::new(&self.bucket, Some(&self.credentials));
            action.with_prefix(prefix.as_str());
            if let Some(token) = &token {
                action.with_continuation_token(token.as_str());
            }
            let url = action.sign(SIGNATURE_TTL);
            let (status, body) = self
                .send("LIST", &prefix, get_request(&url, &prefix, "LIST")?)
                .await?;
            if !status.is_success() {
                return Err(Self::failed("LIST", &prefix, status, &body));
            }
            let text = std::str::from_utf8(&body).map_err(|_bad| ObjectStoreError::Transport {
                operation: "LIST",
                key: prefix.clone(),
                reason: "the listing is not UTF-8".into(),
            })?;
            let page = ListObjectsV2::parse_response(text).map_err(|_bad| {
                ObjectStoreError::Transport {
                    operation: "LIST",
                    key: prefix.clone(),
                    reason: "the listing is not a ListObjectsV2 result".into(),
                }
            })?;
            names.extend(
                page.contents
                    .into_iter()
                    .filter_map(|object| object.key.strip_prefix(&self.prefix).map(str::to_owned)),
            );
            match page.next_continuation_token {
                Some(next) => token = Some(next),
                None => return Ok(names),
            }
        }
    }
}

fn get_request(
    url: &url::Url,
    key: &str,
    operation: &'static str,
) -> Result<Request<Full<Bytes>>, ObjectStoreError> {
    Request::builder()
        .method(Method::GET)
        .uri(url.as_str())
        .body(Full::new(Bytes::new()))
        .map_err(|_bad| ObjectStoreError::Transport {
            operation,
            key: key.to_owned(),
            reason: "the request could not be built".into(),
        })
}

/// The client error's kind, without the URL (which carries a signature).
fn describe_client_error(error: &hyper_util::client::legacy::Error) -> String {
    if error.is_connect() {
        "the endpoint cannot be reached".to_owned()
    } else {
        "the exchange failed".to_owned()
    }
}

/// `<Code>…</Code>` of an S3 error body: letters only, at most 64.
fn error_code(body: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(body).ok()?;
    let start = text.find("<Code>")? + "<Code>".len();
    let end = start + text.get(start..)?.find("</Code>")?;
    let code = text.get(start..end)?;
    (!code.is_empty() && code.len() <= 64 && code.bytes().all(|b| b.is_ascii_alphanumeric()))
        .then(|| code.to_owned())
}
