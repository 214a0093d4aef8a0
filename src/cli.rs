//! The command line: subcommands and their arguments, and the one place that turns a
//! command's outcome into an exit code and a line on stderr.

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use control_ops::{ExitStatus, OpsError, keys, migrate};
use control_store::settings::process_env;

/// Caracal: an authorization layer for AI agents.
#[derive(Debug, Parser)]
#[command(name = "caracal", version, about, propagate_version = true)]
pub(crate) struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Apply pending database migrations (or verify the schema with --verify).
    ///
    /// Connects with CARACAL_MIGRATE_DATABASE_URL, else DATABASE_URL. Exit codes: 0 ok,
    /// 1 refused or drift, 2 configuration or connection error, 3 pending (--verify).
    Migrate {
        /// Report drift without changing anything.
        #[arg(long)]
        verify: bool,
        /// Read migration files from this directory instead of the embedded ones
        /// (development only).
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
    /// Run the token service (STS, default port 8080).
    ///
    /// Reads DATABASE_URL (as caracal_sts), REDIS_URL, ZONE_KEK, ISSUER_URL,
    /// AUDIT_HMAC_KEY, CARACAL_STS_ADDR and the settings in docs/operations/sts.md.
    Sts,
    /// Run the admin API (default port 3000).
    ///
    /// Reads DATABASE_URL (as caracal_api), REDIS_URL, ZONE_KEK, AUDIT_HMAC_KEY,
    /// CARACAL_ADMIN_TOKEN (or CARACAL_ADMIN_TOKEN_FILE), CARACAL_API_ADDR and the settings
    /// in docs/operations/api.md.
    Api,
    /// Run the Coordinator (default port 4000): agent sessions, delegations, cascading
    /// revocation.
    ///
    /// Reads DATABASE_URL (as caracal_coordinator), REDIS_URL, ISSUER_URL, CARACAL_STS_URL,
    /// STREAMS_HMAC_KEY, CARACAL_COORDINATOR_TOKEN (or CARACAL_COORDINATOR_TOKEN_FILE),
    /// CARACAL_COORDINATOR_ADDR and the settings in docs/operations/coordinator.md.
    Coordinator,
    /// Run the gateway (default port 8081): the governed reverse proxy.
    ///
    /// Reads DATABASE_URL (as caracal_gateway), REDIS_URL, ZONE_KEK, ISSUER_URL,
    /// AUDIT_HMAC_KEY, STREAMS_HMAC_KEY, CARACAL_GATEWAY_ADDR and the settings in
    /// docs/operations/gateway.md. With --config, runs as a standalone sidecar without
    /// Postgres (see "Standalone sidecar" there and deploy/gateway.example.toml).
    Gateway {
        /// Standalone sidecar mode: zones, keys, providers, resources and policies from
        /// this TOML file instead of Postgres; Redis optional.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Run the audit ledger (default port 9090), or operate on it.
    ///
    /// Without a subcommand: serve. Reads DATABASE_URL (as caracal_audit), REDIS_URL,
    /// AUDIT_HMAC_KEY (AUDIT_HMAC_KEY_PREVIOUS, AUDIT_CHAIN_HMAC_KEY, AUDIT_HMAC_KEYRING_FILE),
    /// CARACAL_INTERNAL_TOKEN, CARACAL_AUDIT_ADDR and the settings in
    /// docs/operations/audit.md.
    Audit {
        #[command(subcommand)]
        command: Option<AuditCommand>,
    },
    /// Generate or check keys.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Print fresh random ZONE_KEK, AUDIT_HMAC_KEY and STREAMS_HMAC_KEY as NAME=hex lines.
    Generate,
    /// Load ZONE_KEK and the HMAC keys the way the services do and print their ids.
    Check,
    /// Rotate a zone's signing key: the new key is published now and signs 330 s later;
    /// the old one keeps verifying for SIGNING_KEY_GRACE_HOURS (24).
    Rotate {
        /// The zone whose key rotates.
        #[arg(long)]
        zone: String,
    },
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Verify the chain offline: content hashes, links, sequence gaps, HMACs, ingest
    /// signatures, duplicate ids; exports also against their manifests and anchors.
    ///
    /// Exactly one source. Keys from AUDIT_HMAC_KEY (or --hmac-key-env),
    /// AUDIT_CHAIN_HMAC_KEY, AUDIT_HMAC_KEY_PREVIOUS and --keyring / AUDIT_HMAC_KEYRING_FILE;
    /// without keys, HMAC checks are reported as skipped. Exit codes: 0 clean, 1 findings (the
    /// first bad row is named), 2 usage or I/O error.
    Verify {
        /// Read the live tables (read only; as caracal_audit or caracal_maintenance).
        #[arg(long, value_name = "URL")]
        database_url: Option<String>,
        /// Read rows from an NDJSON file (one row per line).
        #[arg(long, value_name = "FILE")]
        ndjson: Option<PathBuf>,
        /// Read an export directory.
        #[arg(long, value_name = "DIR")]
        export: Option<PathBuf>,
        /// Only this zone's chain (`*` for the global admin chain with --admin).
        #[arg(long)]
        zone: Option<String>,
        /// Only rows ingested at or after this RFC 3339 time.
        #[arg(long)]
        since: Option<String>,
        /// Only rows with chain_seq at or above this.
        #[arg(long)]
        from_seq: Option<i64>,
        /// Verify the admin chain (admin_audit_events) instead of the ledger.
        #[arg(long)]
        admin: bool,
        /// More keys, one hex key per line (retired keys).
        #[arg(long, value_name = "FILE")]
        keyring: Option<PathBuf>,
        /// The variable holding the key instead of AUDIT_HMAC_KEY.
        #[arg(long, value_name = "NAME")]
        hmac_key_env: Option<String>,
        /// Print the report as one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Browse and operate the dead-letter stream caracal.audit.events.dlq (REDIS_URL).
    Dlq {
        #[command(subcommand)]
        command: DlqCommand,
    },
}

#[derive(Debug, Subcommand)]
enum DlqCommand {
    /// Print dead letters, oldest first, one JSON object per line.
    List {
        /// Only letters after this dead-letter id.
        #[arg(long)]
        after: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Print one dead letter.
    Show {
        /// Its dead-letter id.
        id: String,
    },
    /// Put retryable dead letters (transient_exceeded_max_deliveries:*, pg_permanent_error:*)
    /// back on the audit stream; the others stay as evidence.
    Replay {
        /// Only these dead-letter ids (default: every retryable one).
        ids: Vec<String>,
    },
    /// Delete dead letters older than a time.
    Purge {
        /// RFC 3339 time.
        #[arg(long)]
        before: String,
    },
}

impl Cli {
    /// `info` for long-running roles, `warn` for operator commands.
    pub(crate) fn default_log_filter(&self) -> &'static str {
        match self.command {
            Command::Sts
            | Command::Api
            | Command::Coordinator
            | Command::Gateway { .. }
            | Command::Audit { command: None } => "info",
            Command::Migrate { .. }
            | Command::Keys { .. }
            | Command::Audit { command: Some(_) } => "warn",
        }
    }
}

pub(crate) async fn run(cli: Cli) -> ExitCode {
    let mut stdout = std::io::stdout().lock();
    let outcome = match cli.command {
        Command::Migrate { verify, dir } => {
            migrate::run(
                &migrate::MigrateArgs { verify, dir },
                &process_env,
                &mut stdout,
            )
            .await
        }
        Command::Sts => run_sts().await,
        Command::Api => run_api().await,
        Command::Coordinator => run_coordinator().await,
        Command::Gateway { config } => match config {
            Some(file) => run_standalone_gateway(&file).await,
            None => run_gateway().await,
        },
        Command::Audit { command } => match command {
            None => run_audit().await,
            Some(AuditCommand::Dlq { command }) => dlq(command, &mut stdout).await,
            Some(AuditCommand::Verify {
                database_url,
                ndjson,
                export,
                zone,
                since,
                from_seq,
                admin,
                keyring,
                hmac_key_env,
                json,
            }) => {
                let args = control_audit::verify::OfflineArgs {
                    database_url,
                    ndjson,
                    export,
                    zone,
                    since,
                    from_seq,
                    admin,
                    keyring,
                    hmac_key_env,
                    json,
                };
                Ok(
                    match control_audit::verify::offline(args, &mut stdout).await {
                        0 => ExitStatus::Success,
                        1 => ExitStatus::Findings,
                        _ => ExitStatus::Unusable,
                    },
                )
            }
        },
        Command::Keys { command } => match command {
            KeysCommand::Generate => keys::generate(&mut stdout),
            KeysCommand::Check => keys::check(&process_env, &mut stdout),
            KeysCommand::Rotate { zone } => keys::rotate(&zone, &process_env, &mut stdout).await,
        },
    };
    exit(outcome)
}

/// Starts the STS and serves until SIGINT or SIGTERM.
async fn run_sts() -> Result<ExitStatus, OpsError> {
    let config = control_sts::StsConfig::from_lookup(&process_env)
        .map_err(|e| OpsError::Config(e.to_string()))?;
    control_sts::run(config, &process_env, shutdown_signal())
        .await
        .map_err(|e| OpsError::Unreachable(e.to_string()))?;
    Ok(ExitStatus::Success)
}

/// Starts the admin API and serves until SIGINT or SIGTERM.
async fn run_api() -> Result<ExitStatus, OpsError> {
    let config = control_api::ApiConfig::from_lookup(&process_env)
        .map_err(|e| OpsError::Config(e.to_string()))?;
    control_api::run(config, &process_env, shutdown_signal())
        .await
        .map_err(|e| OpsError::Unreachable(e.to_string()))?;
    Ok(ExitStatus::Success)
}

/// Starts the Coordinator and serves until SIGINT or SIGTERM.
async fn run_coordinator() -> Result<ExitStatus, OpsError> {
    let config = control_coordinator::CoordinatorConfig::from_lookup(&process_env)
        .map_err(|e| OpsError::Config(e.to_string()))?;
    control_coordinator::run(config, &process_env, shutdown_signal())
        .await
        .map_err(|e| OpsError::Unreachable(e.to_string()))?;
    Ok(ExitStatus::Success)
}

/// Starts the audit ledger and serves until SIGINT or SIGTERM.
async fn run_audit() -> Result<ExitStatus, OpsError> {
    let config = control_audit::AuditConfig::from_lookup(&process_env)
        .map_err(|e| OpsError::Config(e.to_string()))?;
    control_audit::run(config, &process_env, shutdown_signal())
        .await
        .map_err(|e| match e {
            control_audit::AuditStartError::Config(_) => OpsError::Config(e.to_string()),
            _ => OpsError::Unreachable(e.to_string()),
        })?;
    Ok(ExitStatus::Success)
}

/// `caracal audit dlq …` against REDIS_URL.
async fn dlq(command: DlqCommand, out: &mut dyn std::io::Write) -> Result<ExitStatus, OpsError> {
    use control_audit::dlq;
    let url = process_env("REDIS_URL").unwrap_or_else(|| "redis://127.0.0.1:6379".to_owned());
    let unreachable = |e: redis::RedisError| OpsError::Unreachable(format!("redis: {e}"));
    let client = redis::Client::open(url.as_str())
        .map_err(|_bad| OpsError::Config("REDIS_URL is not a valid Redis URL".to_owned()))?;
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .map_err(unreachable)?;
    let lines: Vec<serde_json::Value> = match command {
        DlqCommand::List { after, limit } => dlq::list(&mut conn, after.as_deref(), limit)
            .await
            .map_err(unreachable)?
            .into_iter()
            .map(|letter| serde_json::json!(letter))
            .collect(),
        DlqCommand::Show { id } => match dlq::show(&mut conn, &id).await.map_err(unreachable)? {
            Some(letter) => vec![serde_json::json!(letter)],
            None => return Err(OpsError::Refused(format!("no dead letter {id}"))),
        },
        DlqCommand::Replay { ids } => vec![serde_json::json!(
            dlq::replay(&mut conn, &ids).await.map_err(unreachable)?
        )],
        DlqCommand::Purge { before } => {
            let before = chrono::DateTime::parse_from_rfc3339(&before)
                .map_err(|_bad| OpsError::Config("--before must be an RFC 3339 time".to_owned()))?;
            let purged = dlq::purge_before(&mut conn, before.timestamp_millis())
                .await
                .map_err(unreachable)?;
            vec![serde_json::json!({"purged": purged})]
        }
    };
    for line in lines {
        writeln!(out, "{line}")?;
    }
    Ok(ExitStatus::Success)
}

/// Starts the gateway and serves until SIGINT or SIGTERM (then drains connections).
async fn run_gateway() -> Result<ExitStatus, OpsError> {
    let config = gateway_proxy::GatewayConfig::from_lookup(&process_env)
        .map_err(|e| OpsError::Config(e.to_string()))?;
    gateway_proxy::run(config, &process_env, shutdown_signal())
        .await
        .map_err(|e| OpsError::Unreachable(e.to_string()))?;
    Ok(ExitStatus::Success)
}

/// Starts the standalone sidecar from `file` and serves until SIGINT or SIGTERM. A bad
/// file is a configuration error (exit 2) with one line naming the file, the key and the
/// problem.
async fn run_standalone_gateway(file: &std::path::Path) -> Result<ExitStatus, OpsError> {
    gateway_proxy::run_standalone(file, &process_env, shutdown_signal())
        .await
        .map_err(|e| match e {
            gateway_proxy::GatewayStartError::Config(_)
            | gateway_proxy::GatewayStartError::Standalone(_) => OpsError::Config(e.to_string()),
            _ => OpsError::Unreachable(e.to_string()),
        })?;
    Ok(ExitStatus::Success)
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = interrupt => {}
                    _ = term.recv() => {}
                }
            }
            Err(_no_handler) => {
                let _interrupted = interrupt.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _interrupted = interrupt.await;
    }
}

fn exit(outcome: Result<ExitStatus, OpsError>) -> ExitCode {
    let status = match outcome {
        Ok(status) => status,
        Err(err) => {
            eprintln!("caracal: {err}");
            err.exit_status()
        }
    };
    ExitCode::from(status.code())
}
