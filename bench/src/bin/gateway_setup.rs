//! `gateway_setup`: a fresh, migrated and provisioned database for the gateway load
//! benchmark, and the scenario file the load generator mints mandates from.
//!
//! ```text
//! gateway_setup --upstream URL --scenario-out FILE [--admin-url URL] [--id ID]
//! gateway_setup --drop caracal_bench_<id>
//! ```
//!
//! Creating prints `export NAME=value` lines for the shell to `eval`: `BENCH_DB`,
//! `DATABASE_URL` (the gateway replaces the user with `caracal_gateway`), fresh random
//! `ZONE_KEK`, `AUDIT_HMAC_KEY` and `STREAMS_HMAC_KEY`, `GATEWAY_ISSUER` (the gateway's
//! `ISSUER_URL`) and `UPSTREAM_API_KEY` (the credential the gateway injects, which the
//! upstream stub checks).
//!
//! The scenario follows the end-to-end gateway tests (`tests/e2e/tests/e2e/gateway.rs`,
//! `Scenario`): zone `bench`, applications `agent-app` and `issuer-app`, an authority record,
//! the issuer's agent session delegating to the agent's session (`reader`) through one edge,
//! an active policy, and resources whose credential provider is of kind `api_key` (header
//! `X-Api-Key`, its secret sealed under the fresh `ZONE_KEK`, allowed only towards
//! `127.0.0.1`), with the operation `GET /items` (scope `read`) enforced:
//!
//! - `resource://echo` → `<upstream>/gw`, no rate limit (the governed series);
//! - `resource://echo-rl` → the same upstream, with a per-application rate limit far above
//!   any reachable rate, so its Redis round trip is paid but never denies;
//! - `resource://echo-plugin` → the same upstream, with one WebAssembly authorizer bound
//!   (issue 6): the component `fixture-allow` of `tests-fixtures`, which allows every
//!   request, registered as plugin `allow` and bound at position 0 with the configuration
//!   `{}`, a 5 ms deadline and the column's default memory limit (16 MiB). The component is
//!   compiled against the `authorizer` world here first, so a component the gateway would
//!   refuse stops the setup rather than failing every request of the series.
//!
//! The zone signing key is generated here, sealed under `ZONE_KEK` and inserted as the
//! zone's active key; its PKCS#8 form goes into the scenario file (mode 0600, in the
//! script's temporary directory) so the load generator can sign mandates. It is a benchmark
//! fixture of a throw-away database, never printed.
//!
//! With `--records N`, also N more authority records (`bench-rec-0` … `bench-rec-<N-1>`)
//! for runs where every mandate names its own record, as every STS mint does.

use std::{io::Write as _, os::unix::fs::OpenOptionsExt as _, str::FromStr};

use anyhow::{Context as _, bail};
use chrono::{Duration as ChronoDuration, Utc};
use clap::Parser;
use control_crypto::{KekRing, SealContext, ZoneSigningKey};
use control_store::{
    admin::{
        plugin_bindings::{self, NewBinding},
        plugins::{self, NewPlugin},
        resources::{self, ResourceOperation, ResourceRateLimit, ResourceState},
    },
    authority_records::{self, NewAuthorityRecord},
    migrate::{MigrateOptions, MigrationSet},
    signing_keys::{self, NewSigningKey},
};
use gateway_plugin_host::{HostConfig, PluginHost, WIT_PACKAGE, World};
use serde_json::json;
use sqlx::{ConnectOptions, Connection, PgConnection, postgres::PgConnectOptions};
use tests_harness::provision::Provision;

/// Every database this tool creates starts with this; `--drop` refuses any other name.
const PREFIX: &str = "caracal_bench_";
/// The zone.
const ZONE: &str = "bench";
/// The calling application (the edge's receiver).
const AGENT: &str = "agent-app";
/// The delegating application (the edge's issuer).
const ISSUER_APP: &str = "issuer-app";
/// The authority record every mandate names unless `--records` gives each its own.
const RECORD: &str = "bench-record";
/// The issuer's agent session (the edge's source).
const SOURCE_SESSION: &str = "bench-session-source";
/// The agent's session (the edge's target).
const TARGET_SESSION: &str = "bench-session-target";
/// The delegation edge.
const EDGE: &str = "bench-edge";
/// The governed resource.
const RESOURCE: &str = "resource://echo";
/// The governed resource with a rate limit.
const RESOURCE_LIMITED: &str = "resource://echo-rl";
/// The governed resource with one WebAssembly authorizer bound.
const RESOURCE_PLUGIN: &str = "resource://echo-plugin";
/// The row id of [`RESOURCE_PLUGIN`].
const RESOURCE_PLUGIN_ID: &str = "echo-plugin";
/// The authorizer plugin's id.
const PLUGIN_ID: &str = "plg-bench-allow";
/// The authorizer plugin's name.
const PLUGIN_NAME: &str = "allow";
/// The binding of the authorizer to [`RESOURCE_PLUGIN`].
const BINDING_ID: &str = "bnd-bench-allow";
/// The binding's deadline per call (the column's default).
const PLUGIN_DEADLINE_MS: i32 = 5;
/// The binding's memory limit per call (the column's default, 16 MiB).
const PLUGIN_MEMORY_LIMIT_BYTES: i64 = 16 * 1024 * 1024;
/// The credential provider.
const PROVIDER: &str = "p-api-key";
/// Who the provisioning rows name as their author.
const ACTOR: &str = "bench:gateway_setup";
/// How long the records, sessions and the edge stay live (an agent session lives at most a day).
const LIFETIME_SECONDS: i64 = 86_400;

/// The policy (the project's Rego contract's data document, as in the e2e tests).
const POLICY: &str = r#"package caracal.authz
import rego.v1
# caracal:data-document
app_ids := {"agent": "agent-app"}
grants := {
  "resource://echo": {"application": "agent", "roles": {"reader": ["read", "write"]}},
  "resource://echo-rl": {"application": "agent", "roles": {"reader": ["read", "write"]}},
  "resource://echo-plugin": {"application": "agent", "roles": {"reader": ["read", "write"]}}
}
"#;

#[derive(Debug, Parser)]
#[command(about = "Create (or --drop) the gateway benchmark database")]
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
    /// The upstream stub's base URL (`http://127.0.0.1:<port>`); resources point at
    /// `<upstream>/gw`.
    #[arg(long, required_unless_present = "drop")]
    upstream: Option<String>,
    /// Where the scenario (claims and the signing key) is written, mode 0600.
    #[arg(long, required_unless_present = "drop")]
    scenario_out: Option<std::path::PathBuf>,
    /// The gateway's `ISSUER_URL`: `iss` and `aud` of the mandates.
    #[arg(long, default_value = "http://sts.bench.invalid")]
    issuer: String,
    /// Additional authority records `bench-rec-<i>`, one per mandate.
    #[arg(long, default_value_t = 0)]
    records: u64,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let admin = PgConnectOptions::from_str(&args.admin_url).context("--admin-url")?;
    if let Some(name) = &args.drop {
        return drop_db(&admin, name).await;
    }
    let (Some(upstream), Some(scenario_out)) = (&args.upstream, &args.scenario_out) else {
        bail!("--upstream and --scenario-out are required");
    };
    let upstream = upstream.trim_end_matches('/');
    if !upstream.starts_with("http://127.0.0.1:") {
        bail!("--upstream must be http://127.0.0.1:<port> (the benchmark stays on loopback)");
    }
    let id = match &args.id {
        Some(id) => id.clone(),
        None => uuid::Uuid::new_v4().simple().to_string()[..12].to_owned(),
    };
    if !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        bail!("--id must be [A-Za-z0-9_]");
    }
    let name = format!("{PREFIX}{}", id.to_ascii_lowercase());
    let kek_hex = control_crypto::random_key_hex()?;
    let audit = control_crypto::random_key_hex()?;
    let streams = control_crypto::random_key_hex()?;
    let api_key = format!("bench-upstream-{}", uuid::Uuid::new_v4().simple());
    let mut conn = admin.connect().await.context("connecting as admin")?;
    sqlx::raw_sql(&format!("CREATE DATABASE \"{name}\""))
        .execute(&mut conn)
        .await
        .with_context(|| format!("CREATE DATABASE {name}"))?;
    conn.close().await?;
    // From here on a failure drops what was created.
    let db = admin.clone().database(&name);
    let setting = Setting {
        kek_hex: kek_hex.as_str(),
        upstream,
        api_key: &api_key,
        issuer: &args.issuer,
        records: args.records,
        scenario_out,
    };
    if let Err(error) = create(&db, &setting).await {
        let _dropped = drop_db(&admin, &name).await;
        return Err(error);
    }
    println!("export BENCH_DB={name}");
    println!(
        "export DATABASE_URL=postgres://{}@{}:{}/{name}",
        db.get_username(),
        db.get_host(),
        db.get_port()
    );
    println!("export ZONE_KEK={}", kek_hex.as_str());
    println!("export AUDIT_HMAC_KEY={}", audit.as_str());
    println!("export STREAMS_HMAC_KEY={}", streams.as_str());
    println!("export GATEWAY_ISSUER={}", args.issuer);
    println!("export UPSTREAM_API_KEY={api_key}");
    Ok(())
}

/// What `create` needs besides the database.
struct Setting<'a> {
    kek_hex: &'a str,
    upstream: &'a str,
    api_key: &'a str,
    issuer: &'a str,
    records: u64,
    scenario_out: &'a std::path::Path,
}

async fn create(db: &PgConnectOptions, setting: &Setting<'_>) -> anyhow::Result<()> {
    let set = MigrationSet::embedded()?;
    control_store::migrate::migrate(db, &set, &MigrateOptions::default())
        .await
        .context("migrate")?;
    let kek = KekRing::from_lookup(|name: &str| {
        (name == "ZONE_KEK").then(|| setting.kek_hex.to_owned())
    })?;
    let (kid, key) = provision(db.connect().await?, &kek, setting)
        .await
        .context("provisioning")?;
    write_scenario(setting, &kid, &key)
}

/// The scenario, inserted as the superuser (row-level security does not apply).
async fn provision(
    conn: PgConnection,
    kek: &KekRing,
    setting: &Setting<'_>,
) -> anyhow::Result<(String, ZoneSigningKey)> {
    let mut p = Provision::from_connection(conn).await?;
    p.zone(ZONE).await?;
    p.application(ZONE, AGENT, "bench-agent-secret-0123456789", &[])
        .await?;
    p.application(ZONE, ISSUER_APP, "bench-issuer-secret-0123456789", &[])
        .await?;
    p.provider_sealed_under(
        setting.kek_hex,
        ZONE,
        PROVIDER,
        "api_key",
        &json!({"header_name": "X-Api-Key", "allowed_token_hosts": ["127.0.0.1"]}),
        Some(&json!({"api_key": setting.api_key})),
    )
    .await
    .context("provider")?;
    let scopes = vec!["read".to_owned(), "write".to_owned()];
    let operations = vec![ResourceOperation {
        method: "GET".to_owned(),
        path: "/items".to_owned(),
        scope: "read".to_owned(),
    }];
    let upstream = format!("{}/gw", setting.upstream);
    for (id, identifier) in [
        ("echo", RESOURCE),
        ("echo-rl", RESOURCE_LIMITED),
        (RESOURCE_PLUGIN_ID, RESOURCE_PLUGIN),
    ] {
        let state = ResourceState {
            name: id,
            identifier,
            upstream_url: Some(&upstream),
            scopes: &scopes,
            credential_provider_id: PROVIDER,
            operations: &operations,
            operation_enforcement: "enforced",
        };
        resources::insert(p.conn(), id, ZONE, &state, ACTOR)
            .await
            .with_context(|| format!("resource {identifier}"))?;
    }
    resources::set_rate_limit(
        p.conn(),
        ZONE,
        "echo-rl",
        &ResourceRateLimit {
            window_seconds: 60,
            max_requests: 1_000_000_000_000,
            key_by: "application".to_owned(),
        },
        ACTOR,
    )
    .await
    .context("rate limit")?;
    bind_authorizer(&mut p).await.context("plugin")?;
    let now = Utc::now();
    let expires_at = now + ChronoDuration::seconds(LIFETIME_SECONDS);
    let mut tx = p.conn().begin().await?;
    insert_record(&mut tx, RECORD, now, expires_at)
        .await
        .context("record")?;
    for i in 0..setting.records {
        insert_record(&mut tx, &format!("bench-rec-{i}"), now, expires_at)
            .await
            .context("records")?;
    }
    tx.commit().await?;
    let ttl = i32::try_from(LIFETIME_SECONDS).unwrap_or(i32::MAX);
    p.agent_session_with_ttl(ZONE, SOURCE_SESSION, ISSUER_APP, &[], ttl)
        .await?;
    p.agent_session_with_ttl(ZONE, TARGET_SESSION, AGENT, &["reader"], ttl)
        .await?;
    p.edge(
        ZONE,
        EDGE,
        (SOURCE_SESSION, ISSUER_APP),
        (TARGET_SESSION, AGENT),
        &["read", "write"],
        json!({}),
        LIFETIME_SECONDS,
        None,
    )
    .await?;
    p.activate_policy(ZONE, "main", POLICY)
        .await
        .context("policy")?;
    // The zone signing key, sealed as the STS seals its own.
    let key = ZoneSigningKey::generate();
    let kid = uuid::Uuid::now_v7().to_string();
    let der = key.to_pkcs8_der()?;
    let sealed = kek.seal(
        &SealContext {
            table: "secrets",
            column: "ciphertext",
            zone_id: ZONE,
            row_id: &kid,
        },
        &der,
    )?;
    let jwk = key.public_key().to_jwk(&kid);
    signing_keys::insert(
        p.conn(),
        &NewSigningKey {
            id: &kid,
            zone_id: ZONE,
            version: 1,
            status: "active",
            activates_at: now - ChronoDuration::seconds(60),
            public_jwk: &jwk,
            nonce: sealed.nonce.as_slice(),
            ciphertext: &sealed.ciphertext,
            dek_id: sealed.dek_id.as_str(),
            created_by: ACTOR,
        },
    )
    .await
    .context("signing key")?;
    Ok((kid, key))
}

/// Registers `fixture-allow` as the zone's authorizer plugin and binds it to
/// [`RESOURCE_PLUGIN`], through the store's admin statements (as the admin API does).
async fn bind_authorizer(p: &mut Provision) -> anyhow::Result<()> {
    let component = tests_fixtures::read(tests_fixtures::FIXTURE_ALLOW)?;
    // Compiling checks the component against its world and yields the digest the gateway
    // keys its compiled plugins by. On-demand allocation: nothing is instantiated here.
    let host = PluginHost::start(HostConfig {
        pooling: false,
        ..HostConfig::default()
    })?;
    let compiled = host
        .compile(World::Authorizer, &component)
        .context("fixture-allow is not an authorizer component")?;
    plugins::insert(
        p.conn(),
        ZONE,
        &NewPlugin {
            id: PLUGIN_ID,
            name: PLUGIN_NAME,
            world: World::Authorizer.as_str(),
            wit_package: WIT_PACKAGE,
            component_sha256: compiled.digest(),
            component: &component,
            description: Some("bench: fixture-allow, allows every request"),
        },
        ACTOR,
    )
    .await?;
    plugin_bindings::insert_all(
        p.conn(),
        ZONE,
        RESOURCE_PLUGIN_ID,
        &[NewBinding {
            id: BINDING_ID.to_owned(),
            plugin_id: PLUGIN_ID.to_owned(),
            hook: "authorizer".to_owned(),
            position: 0,
            mode: None,
            config_json: json!({}),
            deadline_ms: PLUGIN_DEADLINE_MS,
            memory_limit_bytes: PLUGIN_MEMORY_LIMIT_BYTES,
            enabled: true,
            created_at: None,
            created_by: None,
            updated_at: None,
            updated_by: None,
        }],
        ACTOR,
    )
    .await?;
    Ok(())
}

/// An active `application` authority record of the agent.
async fn insert_record(
    conn: &mut PgConnection,
    id: &str,
    now: chrono::DateTime<Utc>,
    expires_at: chrono::DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    authority_records::insert(
        conn,
        &NewAuthorityRecord {
            id,
            zone_id: ZONE,
            session_type: "application",
            subject_id: AGENT,
            application_id: AGENT,
            parent_id: None,
            root_id: id,
            expires_at,
            authenticated_at: now,
            claims_json: &json!({}),
            created_by: ACTOR,
        },
    )
    .await
}

/// The scenario file: what a mandate carries, and the key that signs it.
fn write_scenario(setting: &Setting<'_>, kid: &str, key: &ZoneSigningKey) -> anyhow::Result<()> {
    let der = key.to_pkcs8_der()?;
    let scenario = json!({
        "issuer": setting.issuer,
        "zone_id": ZONE,
        "client_id": AGENT,
        "sid": RECORD,
        "records": setting.records,
        "record_prefix": "bench-rec-",
        "agent_session_id": TARGET_SESSION,
        "delegation_edge_id": EDGE,
        "scope": "read",
        "resource": RESOURCE,
        "resource_limited": RESOURCE_LIMITED,
        "resource_plugin": RESOURCE_PLUGIN,
        "path": "/items",
        "kid": kid,
        "signing_key_pkcs8_hex": hex::encode(der.as_slice()),
    });
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(setting.scenario_out)
        .with_context(|| format!("creating {}", setting.scenario_out.display()))?;
    file.write_all(scenario.to_string().as_bytes())?;
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
    eprintln!("gateway_setup: dropped {name}");
    Ok(())
}
