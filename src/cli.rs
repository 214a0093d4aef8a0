//! The command line: subcommands and their arguments, and the one place that turns a
//! command's outcome into an exit code and a line on stderr.

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use control_ops::{ExitStatus, OpsError, keys, migrate};
use control_store::settings::process_env;

use crate::roles::{self, AllDefaults, Role};

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
    /// Run every role in one process: audit (9090), STS (8080), admin API (3000),
    /// Coordinator (4000) and gateway (8081).
    ///
    /// Each role reads its settings as it does alone. Unless set, CARACAL_STS_URL points at
    /// this process and each pool defaults to 6 connections. The admin API answers audit
    /// reads in process (CARACAL_AUDIT_URL is not used).
    All,
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
    /// Back up the database, the runtime secrets and the replay volumes into one encrypted
    /// archive, or restore one.
    Backup {
        #[command(subcommand)]
        command: BackupCommand,
    },
    /// Check a restored deployment (`caracal restore verify`).
    Restore {
        #[command(subcommand)]
        command: RestoreCommand,
    },
    /// Explain what is wrong with a deployment and how to fix it (read only).
    ///
    /// Connects as caracal_maintenance (CARACAL_MIGRATE_DATABASE_URL, else DATABASE_URL) and
    /// to REDIS_URL, loads the keys the services use (ZONE_KEK, AUDIT_HMAC_KEY, …) and checks
    /// key ids, the audit chain, partitions, gateway bindings, revocation streams, outboxes,
    /// dead letters and replay volumes. Exit codes: 0 no failure, 1 a failure, 2 cannot
    /// connect.
    Doctor {
        /// A replay volume to inspect (repeatable).
        #[arg(long, value_name = "DIR")]
        replay_dir: Vec<PathBuf>,
        /// Print the report as one JSON object.
        #[arg(long)]
        json: bool,
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
enum BackupCommand {
    /// Write an encrypted archive: a pg_dump of one snapshot, a manifest describing it
    /// (schema, row counts, audit chain heads, key ids), the roles, optionally the runtime
    /// secrets and the replay volumes, and SHA256SUMS.
    ///
    /// Connects with CARACAL_MIGRATE_DATABASE_URL, else DATABASE_URL (a user that reads
    /// every row: a superuser or a BYPASSRLS maintenance role); needs pg_dump. Exactly one of
    /// --recipient / --recipients-file / --passphrase-file / --unencrypted.
    Create {
        /// The archive to write (written as FILE.partial, then renamed).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        /// An age X25519 recipient (age1…; see `caracal backup keygen`), repeatable.
        #[arg(long, value_name = "AGE1…")]
        recipient: Vec<String>,
        /// A file of recipients, one per line.
        #[arg(long, value_name = "FILE")]
        recipients_file: Option<PathBuf>,
        /// Encrypt under the passphrase on this file's first line (age scrypt).
        #[arg(long, value_name = "FILE")]
        passphrase_file: Option<PathBuf>,
        /// Do not encrypt (tests only).
        #[arg(long)]
        unencrypted: bool,
        /// Copy the runtime secrets (ZONE_KEK, HMAC keys, tokens, URLs) into the archive.
        /// Seal such archives to a different recipient than data backups.
        #[arg(long)]
        include_secrets: bool,
        /// A replay volume (AUDIT_REPLAY_DIR) to copy, repeatable.
        #[arg(long, value_name = "DIR")]
        replay_dir: Vec<PathBuf>,
    },
    /// Restore an archive into an isolated database (created when missing; it must not
    /// hold a caracal schema, nor be the source).
    ///
    /// Needs pg_restore and a user that may create roles and databases (or roles that
    /// already exist). Exactly one of --identity / --passphrase-file / --unencrypted.
    Restore {
        /// The archive.
        archive: PathBuf,
        /// The target database, as a postgres:// URL (a password may come from PGPASSWORD).
        #[arg(long, value_name = "DATABASE_URL")]
        into: String,
        /// The age identity file (`caracal backup keygen`).
        #[arg(long, value_name = "FILE")]
        identity: Option<PathBuf>,
        /// The passphrase file the archive was sealed with.
        #[arg(long, value_name = "FILE")]
        passphrase_file: Option<PathBuf>,
        /// The archive is not encrypted (tests only).
        #[arg(long)]
        unencrypted: bool,
        /// Write the runtime secrets here (runtime.env, mode 0600).
        #[arg(long, value_name = "DIR")]
        secrets_out: Option<PathBuf>,
        /// Write the replay segments here (point AUDIT_REPLAY_DIR at it).
        #[arg(long, value_name = "DIR")]
        replay_out: Option<PathBuf>,
        /// Accept a target in the source's cluster (another database).
        #[arg(long)]
        allow_same_cluster: bool,
    },
    /// Create a backup key: writes an age identity to FILE (mode 0600) and prints its
    /// recipient (age1…), which `backup create --recipient` takes.
    Keygen {
        /// The identity file to create.
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum RestoreCommand {
    /// Check a restored database against its archive's manifest, in the six steps of
    /// docs/operations/backup.md: isolation, secrets, migrations, services' /ready, data
    /// (row counts, audit chain heads and verification, gateway bindings), canary.
    ///
    /// Exit codes: 0 every step passed (warnings allowed), 1 a step failed, 2 the target
    /// or the archive cannot be read.
    Verify {
        /// The archive the database was restored from.
        #[arg(long, value_name = "FILE")]
        archive: PathBuf,
        /// The age identity file.
        #[arg(long, value_name = "FILE")]
        identity: Option<PathBuf>,
        /// The passphrase file.
        #[arg(long, value_name = "FILE")]
        passphrase_file: Option<PathBuf>,
        /// The archive is not encrypted (tests only).
        #[arg(long)]
        unencrypted: bool,
        /// The restored database (postgres:// URL).
        #[arg(long, value_name = "URL")]
        database_url: String,
        /// The restored runtime.env (keys for the secret checks); the environment otherwise.
        #[arg(long, value_name = "FILE")]
        env_file: Option<PathBuf>,
        /// The restored admin API's base URL (probed at /ready).
        #[arg(long, value_name = "URL")]
        api_url: Option<String>,
        /// The restored STS's base URL.
        #[arg(long, value_name = "URL")]
        sts_url: Option<String>,
        /// The restored Coordinator's base URL.
        #[arg(long, value_name = "URL")]
        coordinator_url: Option<String>,
        /// The restored gateway's base URL.
        #[arg(long, value_name = "URL")]
        gateway_url: Option<String>,
        /// The restored audit service's base URL.
        #[arg(long, value_name = "URL")]
        audit_url: Option<String>,
        /// Start `caracal all` against the target on free loopback ports (with the keys of
        /// --env-file) instead of probing given URLs; needs --redis-url.
        #[arg(long, requires = "redis_url", conflicts_with_all = ["api_url", "sts_url", "coordinator_url", "gateway_url", "audit_url"])]
        start: bool,
        /// The Redis the started stack uses (not the source's: its streams would mix).
        #[arg(long, value_name = "URL")]
        redis_url: Option<String>,
        /// A target in the source's cluster fails instead of warning.
        #[arg(long)]
        strict: bool,
        /// Print the report as one JSON object.
        #[arg(long)]
        json: bool,
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
        /// Read an export: a directory, or s3://BUCKET/PREFIX (endpoint, region and
        /// credentials from AUDIT_EXPORT_S3_ENDPOINT, AUDIT_EXPORT_S3_REGION, AWS_ACCESS_KEY_ID,
        /// AWS_SECRET_ACCESS_KEY, as for the export leader).
        #[arg(long, value_name = "DIR|S3_URL")]
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
            | Command::All
            | Command::Gateway { .. }
            | Command::Audit { command: None } => "info",
            Command::Migrate { .. }
            | Command::Doctor { .. }
            | Command::Backup { .. }
            | Command::Restore { .. }
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
        Command::Sts => serve(&[Role::Sts]).await,
        Command::Api => serve(&[Role::Api]).await,
        Command::Coordinator => serve(&[Role::Coordinator]).await,
        Command::All => match AllDefaults::new(&process_env) {
            Ok(defaults) => {
                let lookup = |name: &str| defaults.lookup(&process_env, name);
                roles::serve(&Role::ALL, &lookup, shutdown_signal()).await
            }
            Err(error) => Err(error),
        },
        Command::Gateway { config } => match config {
            Some(file) => run_standalone_gateway(&file).await,
            None => serve(&[Role::Gateway]).await,
        },
        Command::Audit { command } => match command {
            None => serve(&[Role::Audit]).await,
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
        Command::Backup { command } => backup(command, &mut stdout).await,
        Command::Restore { command } => restore(command, &mut stdout).await,
        Command::Doctor { replay_dir, json } => {
            let options = control_ops::doctor::DoctorOptions {
                replay_dirs: replay_dir,
                json,
            };
            control_ops::doctor::run(&options, &process_env, &mut stdout).await
        }
        Command::Keys { command } => match command {
            KeysCommand::Generate => keys::generate(&mut stdout),
            KeysCommand::Check => keys::check(&process_env, &mut stdout),
            KeysCommand::Rotate { zone } => keys::rotate(&zone, &process_env, &mut stdout).await,
        },
    };
    exit(outcome)
}

/// Runs `roles` with the process environment until SIGINT or SIGTERM.
async fn serve(roles: &[Role]) -> Result<ExitStatus, OpsError> {
    roles::serve(roles, &process_env, shutdown_signal()).await
}

/// `caracal backup …`.
async fn backup(
    command: BackupCommand,
    out: &mut dyn std::io::Write,
) -> Result<ExitStatus, OpsError> {
    use control_ops::backup::{self, CreateArgs, RestoreArgs, Seal};
    match command {
        BackupCommand::Create {
            out: path,
            recipient,
            recipients_file,
            passphrase_file,
            unencrypted,
            include_secrets,
            replay_dir,
        } => {
            let seal = match (
                recipient.is_empty(),
                recipients_file,
                passphrase_file,
                unencrypted,
            ) {
                (false, None, None, false) => Seal::Recipients(recipient),
                (true, Some(file), None, false) => {
                    Seal::Recipients(backup::archive::recipients_file(&file)?)
                }
                (true, None, Some(file), false) => Seal::PassphraseFile(file),
                (true, None, None, true) => Seal::Unencrypted,
                _ => {
                    return Err(one_of(
                        "--recipient, --recipients-file, --passphrase-file, --unencrypted",
                    ));
                }
            };
            let args = CreateArgs {
                out: path,
                seal,
                include_secrets,
                replay_dirs: replay_dir,
            };
            backup::create(&args, &process_env, out).await
        }
        BackupCommand::Restore {
            archive,
            into,
            identity,
            passphrase_file,
            unencrypted,
            secrets_out,
            replay_out,
            allow_same_cluster,
        } => {
            let args = RestoreArgs {
                archive,
                unseal: unseal(identity, passphrase_file, unencrypted)?,
                into,
                secrets_out,
                replay_out,
                allow_same_cluster,
            };
            backup::restore(&args, out).await
        }
        BackupCommand::Keygen { out: path } => backup::keygen(&path, out),
    }
}

/// `caracal restore verify`.
async fn restore(
    command: RestoreCommand,
    out: &mut dyn std::io::Write,
) -> Result<ExitStatus, OpsError> {
    let RestoreCommand::Verify {
        archive,
        identity,
        passphrase_file,
        unencrypted,
        database_url,
        env_file,
        api_url,
        sts_url,
        coordinator_url,
        gateway_url,
        audit_url,
        start,
        redis_url,
        strict,
        json,
    } = command;
    let service_urls = [
        ("api", api_url),
        ("sts", sts_url),
        ("coordinator", coordinator_url),
        ("gateway", gateway_url),
        ("audit", audit_url),
    ]
    .into_iter()
    .filter_map(|(role, url)| url.map(|url| (role.to_owned(), url)))
    .collect();
    let args = control_ops::restore::VerifyArgs {
        archive,
        unseal: unseal(identity, passphrase_file, unencrypted)?,
        database_url,
        env_file,
        service_urls,
        start_with_redis: redis_url.filter(|_| start),
        strict,
        json,
    };
    control_ops::restore::verify(&args, &process_env, out).await
}

/// How an archive is opened: exactly one of the three options.
fn unseal(
    identity: Option<PathBuf>,
    passphrase_file: Option<PathBuf>,
    unencrypted: bool,
) -> Result<control_ops::backup::Unseal, OpsError> {
    use control_ops::backup::Unseal;
    match (identity, passphrase_file, unencrypted) {
        (Some(file), None, false) => Ok(Unseal::IdentityFile(file)),
        (None, Some(file), false) => Ok(Unseal::PassphraseFile(file)),
        (None, None, true) => Ok(Unseal::Unencrypted),
        _ => Err(one_of("--identity, --passphrase-file, --unencrypted")),
    }
}

fn one_of(options: &str) -> OpsError {
    OpsError::Config(format!("give exactly one of {options}"))
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
