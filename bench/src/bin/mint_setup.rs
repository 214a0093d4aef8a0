//! `mint_setup`: a fresh, migrated and provisioned database for the STS mint benchmark.
//!
//! ```text
//! mint_setup [--admin-url URL] [--id ID]     create caracal_bench_<id>, print the env
//! mint_setup --drop caracal_bench_<id>         drop it (WITH (FORCE))
//! ```
//!
//! Creating prints `export NAME=value` lines for the shell to `eval`: `BENCH_DB`,
//! `DATABASE_URL` (the STS replaces the user with `caracal_sts`), and fresh random
//! `ZONE_KEK`, `AUDIT_HMAC_KEY` and `STREAMS_HMAC_KEY`. The scenario (zone, applications,
//! resources, policy, sessions, edge) is the one in the `bench` library; the applications'
//! secrets are hashed with the production default Argon2id parameters.

use std::str::FromStr;

use anyhow::{Context as _, bail};
use bench::{AGENT, CHILD, CHILD_SESSION, EDGE, PARENT_SESSION, POLICY, SECRET, ZONE};
use clap::Parser;
use control_store::migrate::{MigrateOptions, MigrationSet};
use sqlx::{ConnectOptions, Connection, PgConnection, postgres::PgConnectOptions};
use tests_harness::provision::Provision;

/// Every database this tool creates starts with this; `--drop` refuses any other name.
const PREFIX: &str = "caracal_bench_";

#[derive(Debug, Parser)]
#[command(about = "Create (or --drop) the STS mint benchmark database")]
struct Args {
    /// Admin URL of the cluster (a superuser; the database name in it is only used to
    /// connect for CREATE/DROP DATABASE).
    #[arg(
        long,
        env = "CARACAL_BENCH_ADMIN_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    admin_url: String,
    /// Suffix of the database name (default: random).
    #[arg(long)]
    id: Option<String>,
    /// Drop this database instead of creating one.
    #[arg(long, value_name = "DB")]
    drop: Option<String>,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let admin = PgConnectOptions::from_str(&args.admin_url).context("--admin-url")?;
    if let Some(name) = &args.drop {
        return drop_db(&admin, name).await;
    }
    let id = match &args.id {
        Some(id) => id.clone(),
        None => uuid::Uuid::new_v4().simple().to_string()[..12].to_owned(),
    };
    if !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        bail!("--id must be [A-Za-z0-9_]");
    }
    let name = format!("{PREFIX}{}", id.to_ascii_lowercase());
    let mut conn = admin.connect().await.context("connecting as admin")?;
    sqlx::raw_sql(&format!("CREATE DATABASE \"{name}\""))
        .execute(&mut conn)
        .await
        .with_context(|| format!("CREATE DATABASE {name}"))?;
    conn.close().await?;
    // From here on a failure drops what was created.
    let db = admin.clone().database(&name);
    if let Err(error) = create(&db).await {
        let _dropped = drop_db(&admin, &name).await;
        return Err(error);
    }
    let kek = control_crypto::random_key_hex()?;
    let audit = control_crypto::random_key_hex()?;
    let streams = control_crypto::random_key_hex()?;
    println!("export BENCH_DB={name}");
    println!(
        "export DATABASE_URL=postgres://{}@{}:{}/{name}",
        db.get_username(),
        db.get_host(),
        db.get_port()
    );
    println!("export ZONE_KEK={}", kek.as_str());
    println!("export AUDIT_HMAC_KEY={}", audit.as_str());
    println!("export STREAMS_HMAC_KEY={}", streams.as_str());
    Ok(())
}

async fn create(db: &PgConnectOptions) -> anyhow::Result<()> {
    let set = MigrationSet::embedded()?;
    control_store::migrate::migrate(db, &set, &MigrateOptions::default())
        .await
        .context("migrate")?;
    provision(db.connect().await?).await.context("provisioning")
}

async fn drop_db(admin: &PgConnectOptions, name: &str) -> anyhow::Result<()> {
    let valid = name.strip_prefix(PREFIX).is_some_and(|id| {
        !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
    });
    if !valid {
        bail!("refusing to drop {name:?}: not a {PREFIX}* database");
    }
    let mut conn = admin.connect().await.context("connecting as admin")?;
    sqlx::raw_sql(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
        .execute(&mut conn)
        .await?;
    conn.close().await?;
    eprintln!("mint_setup: dropped {name}");
    Ok(())
}

/// The scenario, inserted as the superuser (row-level security does not apply) with the
/// test harness's provisioning, except that the secrets carry the production cost.
async fn provision(conn: PgConnection) -> anyhow::Result<()> {
    let mut p = Provision::from_connection(conn).await?;
    p.zone(ZONE).await?;
    // The production default cost (m=19456 KiB, t=2, p=1): the STS verifies the first
    // request of each application with it, then serves from its verified-secret cache.
    let params = control_crypto::Argon2Params::default();
    for app in [AGENT, CHILD] {
        let hash = control_crypto::hash_secret(&params, SECRET.as_bytes())?;
        p.application_with_hash(ZONE, app, &hash, &[]).await?;
    }
    p.provider_none(ZONE, "p-none").await?;
    let upstream = Some("http://127.0.0.1:9/");
    p.resource(
        ZONE,
        "crm",
        "resource://crm",
        &["crm:read", "crm:write"],
        upstream,
        "p-none",
    )
    .await?;
    p.resource(
        ZONE,
        "reports",
        "resource://reports",
        &["reports:read", "reports:write"],
        upstream,
        "p-none",
    )
    .await?;
    p.activate_policy(ZONE, "main", POLICY)
        .await
        .context("policy")?;
    p.agent_session_with_ttl(ZONE, PARENT_SESSION, AGENT, &["orchestrator"], 86_400)
        .await?;
    p.agent_session_with_ttl(ZONE, CHILD_SESSION, CHILD, &["analyst"], 86_400)
        .await?;
    p.edge(
        ZONE,
        EDGE,
        (PARENT_SESSION, AGENT),
        (CHILD_SESSION, CHILD),
        &["reports:read", "reports:write"],
        serde_json::json!({"max_hops": 1}),
        86_400,
        None,
    )
    .await?;
    Ok(())
}
