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
    let mut conn = db.connect().await?;
    provision(&mut conn).await.context("provisioning")?;
    conn.close().await?;
    Ok(())
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

/// The scenario, inserted as the superuser (row-level security does not apply), the way
/// the test harness provisions (`tests/harness/src/provision.rs`).
async fn provision(conn: &mut PgConnection) -> anyhow::Result<()> {
    sqlx::raw_sql("SET search_path = caracal")
        .execute(&mut *conn)
        .await?;
    sqlx::query("INSERT INTO zones (id, name, slug) VALUES ($1, $1, $1)")
        .bind(ZONE)
        .execute(&mut *conn)
        .await
        .context("zone")?;
    // The production default cost (m=19456 KiB, t=2, p=1): the STS verifies the first
    // request of each application with it, then serves from its verified-secret cache.
    let params = control_crypto::Argon2Params::default();
    for app in [AGENT, CHILD] {
        let hash = control_crypto::hash_secret(&params, SECRET.as_bytes())?;
        sqlx::query(
            "INSERT INTO applications (id, zone_id, name, client_secret_hash, traits) \
             VALUES ($1, $2, $1, $3, $4)",
        )
        .bind(app)
        .bind(ZONE)
        .bind(hash)
        .bind(Vec::<String>::new())
        .execute(&mut *conn)
        .await
        .context("application")?;
    }
    sqlx::query(
        "INSERT INTO providers (id, zone_id, name, identifier, provider_kind) \
         VALUES ('p-none', $1, 'p-none', 'provider://p-none', 'none')",
    )
    .bind(ZONE)
    .execute(&mut *conn)
    .await
    .context("provider")?;
    for (id, identifier, scopes) in [
        ("crm", "resource://crm", ["crm:read", "crm:write"]),
        (
            "reports",
            "resource://reports",
            ["reports:read", "reports:write"],
        ),
    ] {
        sqlx::query(
            "INSERT INTO resources (id, zone_id, name, identifier, upstream_url, credential_provider_id, scopes) \
             VALUES ($1, $2, $1, $3, 'http://127.0.0.1:9/', 'p-none', $4)",
        )
        .bind(id)
        .bind(ZONE)
        .bind(identifier)
        .bind(scopes.map(str::to_owned).to_vec())
        .execute(&mut *conn)
        .await
        .context("resource")?;
    }
    activate_policy(conn).await.context("policy")?;
    for (id, app, labels) in [
        (PARENT_SESSION, AGENT, ["orchestrator"]),
        (CHILD_SESSION, CHILD, ["analyst"]),
    ] {
        sqlx::query(
            "INSERT INTO agent_sessions (id, zone_id, application_id, lifecycle, ttl_seconds, labels) \
             VALUES ($1, $2, $3, 'task', 86400, $4)",
        )
        .bind(id)
        .bind(ZONE)
        .bind(app)
        .bind(labels.map(str::to_owned).to_vec())
        .execute(&mut *conn)
        .await
        .context("agent session")?;
    }
    sqlx::query(
        "INSERT INTO delegation_edges (id, zone_id, source_session_id, target_session_id, issuer_application_id, \
                                       receiver_application_id, scopes, constraints_json, expires_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, now() + interval '1 day')",
    )
    .bind(EDGE)
    .bind(ZONE)
    .bind(PARENT_SESSION)
    .bind(CHILD_SESSION)
    .bind(AGENT)
    .bind(CHILD)
    .bind(vec!["reports:read".to_owned(), "reports:write".to_owned()])
    .bind(serde_json::json!({"max_hops": 1}))
    .execute(&mut *conn)
    .await
    .context("edge")?;
    sqlx::query("INSERT INTO delegation_graph_epochs (zone_id, epoch) VALUES ($1, 1)")
        .bind(ZONE)
        .execute(&mut *conn)
        .await
        .context("graph epoch")?;
    Ok(())
}

/// One policy, one version, one set with one version, active.
async fn activate_policy(conn: &mut PgConnection) -> anyhow::Result<()> {
    let (policy, version, set, set_version) =
        ("bench-policy", "bench-pv", "bench-set", "bench-psv");
    let mut tx = conn.begin().await?;
    sqlx::query("INSERT INTO policies (id, zone_id, name) VALUES ($1, $2, 'main')")
        .bind(policy)
        .bind(ZONE)
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "INSERT INTO policy_versions (id, zone_id, policy_id, version, content, content_sha256, schema_version) \
         VALUES ($1, $2, $3, 1, $4, $5, $6)",
    )
    .bind(version)
    .bind(ZONE)
    .bind(policy)
    .bind(POLICY)
    .bind(control_policy::content_sha256(POLICY))
    .bind(control_policy::SCHEMA_VERSION)
    .execute(&mut *tx)
    .await?;
    sqlx::query("INSERT INTO policy_sets (id, zone_id, name) VALUES ($1, $2, 'main')")
        .bind(set)
        .bind(ZONE)
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "INSERT INTO policy_set_versions (id, zone_id, policy_set_id, version, manifest_json, manifest_sha256, schema_version) \
         VALUES ($1, $2, $3, 1, $4, $5, $6)",
    )
    .bind(set_version)
    .bind(ZONE)
    .bind(set)
    .bind(serde_json::json!([{"policy_version_id": version}]))
    .bind(control_policy::manifest_sha256(&[version]))
    .bind(control_policy::SCHEMA_VERSION)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO policy_set_bindings (zone_id, policy_set_id, active_version_id) VALUES ($1, $2, $3)",
    )
    .bind(ZONE)
    .bind(set)
    .bind(set_version)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}
