//! The integration harness: real Postgres, real servers, nothing mocked.
//!
//! [`TestDb`] creates a uniquely named database on the machine's Postgres
//! (`CARACAL_TEST_ADMIN_URL`, default `postgres://postgres@127.0.0.1:5432/postgres`),
//! optionally migrates it with the embedded migrations, hands out connections as any login
//! role, and drops the database when it goes out of scope. Tests never touch any other
//! database. Later issues add the role servers on `127.0.0.1:0` and echo upstreams here.

pub mod api;
pub mod audit;
pub mod coordinator;
pub mod gateway;
pub mod http;
pub mod oidc;
pub mod plugins;
pub mod provision;
pub mod proxy;
pub mod s3;
pub mod streams;
pub mod sts;
pub mod tls;
pub mod token_server;
pub mod upstream;

use std::{str::FromStr, time::Duration};

use anyhow::Context as _;
use control_store::{
    ServiceRole,
    migrate::{MigrateOptions, MigrationSet},
    pool::connect_pool,
    settings::PoolSettings,
};
use sqlx::{
    ConnectOptions, Connection, PgConnection, PgPool,
    postgres::{PgConnectOptions, PgPoolOptions},
};

/// Sends the servers' logs to the test output (`RUST_LOG`, default `warn`); call at the
/// start of a test. Safe to call more than once.
pub fn init_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_unset| tracing_subscriber::EnvFilter::new("warn"));
    let _already = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

/// Prefix of every database the harness creates; `make test` drops leftovers with it.
pub const TEST_DB_PREFIX: &str = "caracal_test_";

/// The admin URL tests use to create and drop their databases.
pub fn admin_url() -> String {
    std::env::var("CARACAL_TEST_ADMIN_URL")
        .unwrap_or_else(|_unset| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// A database created for one test and dropped when this value is dropped.
#[derive(Debug)]
pub struct TestDb {
    name: String,
    admin: PgConnectOptions,
}

impl TestDb {
    /// Creates an empty database with a unique name.
    pub async fn create() -> anyhow::Result<Self> {
        let admin = PgConnectOptions::from_str(&admin_url()).context("CARACAL_TEST_ADMIN_URL")?;
        let id = uuid::Uuid::new_v4().simple().to_string();
        let name = format!("{TEST_DB_PREFIX}{}_{}", std::process::id(), &id[..12]);
        let mut conn = admin
            .connect()
            .await
            .context("connecting to the test cluster")?;
        sqlx::raw_sql(&format!("CREATE DATABASE \"{name}\""))
            .execute(&mut conn)
            .await?;
        conn.close().await?;
        Ok(Self { name, admin })
    }

    /// Creates a database and applies the embedded migrations.
    pub async fn migrated() -> anyhow::Result<Self> {
        let db = Self::create().await?;
        db.migrate().await?;
        Ok(db)
    }

    /// Applies the embedded migrations.
    pub async fn migrate(&self) -> anyhow::Result<control_store::migrate::MigrateReport> {
        let set = MigrationSet::embedded()?;
        Ok(
            control_store::migrate::migrate(&self.options(), &set, &MigrateOptions::default())
                .await?,
        )
    }

    /// The database name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Options to connect to this database as the admin (superuser) user.
    pub fn options(&self) -> PgConnectOptions {
        self.admin.clone().database(&self.name)
    }

    /// A `postgres://` URL of this database for the admin user (no password in tests).
    pub fn url(&self) -> String {
        let o = self.options();
        format!(
            "postgres://{}@{}:{}/{}",
            o.get_username(),
            o.get_host(),
            o.get_port(),
            self.name
        )
    }

    /// A `postgres://` URL of this database for another login role.
    pub fn url_as(&self, role: &str) -> String {
        let o = self.options();
        format!(
            "postgres://{role}@{}:{}/{}",
            o.get_host(),
            o.get_port(),
            self.name
        )
    }

    /// Options to connect as another login role (trust authentication on the test cluster).
    pub fn options_as(&self, role: &str) -> PgConnectOptions {
        self.options().username(role).password("")
    }

    /// One admin connection.
    pub async fn admin(&self) -> anyhow::Result<PgConnection> {
        Ok(self.options().connect().await?)
    }

    /// A small pool for a service role, built by the store crate exactly as a service builds
    /// its own (startup options, timeouts), logged in as that role.
    pub async fn service_pool(&self, role: ServiceRole) -> anyhow::Result<PgPool> {
        let settings = PoolSettings {
            max_connections: 2,
            min_connections: 0,
            ..PoolSettings::default()
        };
        Ok(connect_pool(role, "test", self.options_as(role.db_role()), &settings).await?)
    }

    /// A small pool logged in as any role, with `search_path=caracal`.
    pub async fn pool_as(&self, role: &str) -> anyhow::Result<PgPool> {
        let options = self.options_as(role).options([("search_path", "caracal")]);
        Ok(PgPoolOptions::new()
            .max_connections(2)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options)
            .await?)
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        // Drop runs inside the test's runtime, which cannot be blocked on; a short-lived
        // thread with its own runtime drops the database and is joined.
        let admin = self.admin.clone();
        let name = self.name.clone();
        let joined = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async move {
                let mut conn = admin.connect().await?;
                sqlx::raw_sql(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                    .execute(&mut conn)
                    .await?;
                conn.close().await?;
                anyhow::Ok(())
            })
        })
        .join();
        if !matches!(joined, Ok(Ok(()))) {
            eprintln!("warning: could not drop test database {}", self.name);
        }
    }
}

/// Installs the process-wide log subscriber, capturing every line at every level into the
/// returned buffer. Only for a test binary with a single test (the global subscriber can be
/// set once per process); tests search the text for secrets.
pub fn capture_all_logs() -> anyhow::Result<LogBuffer> {
    let buffer = LogBuffer::default();
    let writer = buffer.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    tracing::subscriber::set_global_default(subscriber)?;
    Ok(buffer)
}

/// The text captured by [`capture_all_logs`].
#[derive(Clone, Default)]
pub struct LogBuffer(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl LogBuffer {
    /// Everything captured so far.
    pub fn text(&self) -> String {
        self.0
            .lock()
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }
}

impl std::io::Write for LogBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut b) = self.0.lock() {
            b.extend_from_slice(buf);
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
