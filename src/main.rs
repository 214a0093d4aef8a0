//! `caracal`: one binary, one subcommand per role and per operator task.
//!
//! `main` parses the command line, starts tracing, runs the chosen command and turns its
//! outcome into an exit code. Failures print exactly one line on stderr, naming the problem
//! and never a secret.

mod cli;
mod roles;

use std::process::ExitCode;

/// mimalloc instead of the system allocator: the roles allocate many small, short-lived
/// buffers on many threads, where glibc's allocator cost the audit ledger a third of its
/// throughput (decision 0028).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    init_tracing(cli.default_log_filter());
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("caracal: cannot start the async runtime: {err}");
            return ExitCode::from(2);
        }
    };
    runtime.block_on(cli::run(cli))
}

/// Logs go to stderr as text, filtered by `RUST_LOG` (default: `info` for roles, `warn`
/// for operator commands, whose output is their own).
fn init_tracing(default_filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_no_filter| tracing_subscriber::EnvFilter::new(default_filter));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
}
