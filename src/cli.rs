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

impl Cli {
    /// `info` for long-running roles, `warn` for operator commands.
    pub(crate) fn default_log_filter(&self) -> &'static str {
        match self.command {
            Command::Sts | Command::Api | Command::Coordinator | Command::Gateway { .. } => "info",
            Command::Migrate { .. } | Command::Keys { .. } => "warn",
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
