//! `audit_fault`: the audit ledger's fault run (issue 8, "Fault run").
//!
//! ```text
//! audit_fault [--caracal target/debug/caracal] [--short] [--rate N] [--seconds-per-phase S]
//!             [--redis-stop-seconds S] [--producers 4] [--zones 8] [--drain-timeout-seconds S]
//!             [--keep] [--out FILE]
//! ```
//!
//! The run never touches the machine's shared Postgres (5432) and Redis (6379). It starts its
//! own services in a fresh directory under the system temp directory, on free ports:
//!
//! - a throwaway Postgres cluster (`initdb`, `pg_ctl`, run as the `postgres` user when this
//!   runs as root), migrated with `caracal migrate`;
//! - a Redis with `appendonly yes`, `appendfsync everysec` and no snapshots, so a restart
//!   brings the stream and its consumer group back from the AOF;
//! - the real ledger, `caracal audit`, as a child process (so `kill -9` is real), with
//!   `AUDIT_CLAIM_IDLE_SECS=2` so a successor claims a killed ledger's pending entries quickly.
//!
//! Producers are `--producers` tasks, each with its own [`AuditEmitter`] and replay directory,
//! emitting signed events over `--zones` zones at a fixed total `--rate`. Every event is
//! emitted with a receipt; an event counts as produced when the emitter reserved a slot for
//! it, and as accepted when its receipt reports that Redis acknowledged it or its replay
//! segment was fsynced. A refused reservation or a failed receipt is counted and fails the
//! run.
//!
//! Sequence, each step followed by `--seconds-per-phase` of production: warm-up; `kill -9`
//! the ledger and start a successor; restart Redis (SIGTERM, so the AOF is complete, then
//! start it on the same port and directory); stop Redis for `--redis-stop-seconds` (the
//! producers must spill to replay files: checked); restart Postgres (`pg_ctl restart -m
//! fast`). Then production stops, every receipt is awaited, and the run waits (bounded by
//! `--drain-timeout-seconds`) until the replay directories are empty and every event is a
//! row; the emitters are then shut down gracefully.
//!
//! Redis is restarted and stopped with SIGTERM, not SIGKILL: with `appendfsync everysec`
//! (the spec's recommendation) a SIGKILL may lose up to a second of writes Redis already
//! acknowledged, which is Redis's stated durability and not something the ledger or the
//! emitter can make up for.
//!
//! Defaults: short form 1000 events/s, 3 s phases, Redis stopped 5 s; full form 20 s phases,
//! Redis stopped 30 s, 2000 events/s in a release build and 1000 events/s in a debug build:
//! about half of what the ledger ingested here in each (release about 4,000 events/s, debug
//! about 1,500-2,000 events/s, sharing this machine's two cores with the producers, Postgres
//! and Redis, and with a full tamper sweep at each ledger start).
//!
//! Checks: events produced = accepted = rows in Postgres (and the ids are exactly the
//! produced ones); the group has nothing pending and its last delivered id covers the
//! stream; the killed ledger's consumers have nothing pending (its unacknowledged entries
//! were claimed); no dead letters; no emitter loss; a full tamper sweep finds nothing and
//! `audit_ingest_alerts` is empty; `caracal audit verify --database-url` exits 0. The
//! Markdown report (stdout, and `--out`) gives every figure; the exit code is non-zero when
//! any check fails.
//!
//! Every process and directory it creates is removed on every path (guards with `Drop`,
//! and Ctrl-C), unless `--keep` asks to keep the run directory (logs) for inspection.

use std::{
    collections::{BTreeMap, HashSet},
    fmt::Write as _,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Stdio,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use anyhow::{Context as _, anyhow, bail, ensure};
use clap::Parser;
use control_crypto::HmacKey;
use control_events::{
    audit::{AuditDecision, AuditEmitter, AuditEmitterConfig, AuditEvent, AuditReceipt},
    streams::{AUDIT_DLQ, AUDIT_EVENTS, AUDIT_INGESTOR_GROUP},
};
use sqlx::Connection as _;
use tokio::{
    process::{Child, Command},
    sync::{mpsc, oneshot, watch},
    task::JoinHandle,
    time::Instant,
};

#[derive(Debug, Parser)]
#[command(
    about = "Audit ledger fault run: ledger kill -9, Redis restart and stop, Postgres restart under load"
)]
struct Args {
    /// The `caracal` binary.
    #[arg(long, default_value = "target/debug/caracal")]
    caracal: PathBuf,
    /// The short form (rate 1000/s, 3 s phases, Redis stopped 5 s).
    #[arg(long)]
    short: bool,
    /// Total production rate (events/s); default 2000 in a release build, 1000 in a debug
    /// build and in the short form.
    #[arg(long)]
    rate: Option<u64>,
    /// Production time after each step (s); default 20, short 3.
    #[arg(long)]
    seconds_per_phase: Option<u64>,
    /// How long Redis stays stopped (s); default 30, short 5.
    #[arg(long)]
    redis_stop_seconds: Option<u64>,
    /// Producer tasks, each with its own emitter and replay directory.
    #[arg(long, default_value_t = 4)]
    producers: usize,
    /// Zones the events are spread over.
    #[arg(long, default_value_t = 8)]
    zones: u32,
    /// Limit on the final drain (s); default 900, short 120.
    #[arg(long)]
    drain_timeout_seconds: Option<u64>,
    /// Keep the run directory (service logs, replay directories) instead of removing it.
    #[arg(long)]
    keep: bool,
    /// Also write the report here.
    #[arg(long)]
    out: Option<PathBuf>,
}

/// The resolved settings of one run.
#[derive(Debug, Clone)]
struct Plan {
    caracal: PathBuf,
    short: bool,
    rate: u64,
    phase: Duration,
    redis_stop: Duration,
    producers: usize,
    zones: u32,
    drain_timeout: Duration,
}

impl Plan {
    fn from_args(args: &Args) -> anyhow::Result<Self> {
        let (rate, phase, stop, drain) = if args.short {
            (1000, 3, 5, 120)
        } else if cfg!(debug_assertions) {
            // A debug ledger ingests roughly 1,500-2,000 events/s on this machine.
            (1000, 20, 30, 900)
        } else {
            (2000, 20, 30, 900)
        };
        let plan = Self {
            caracal: std::path::absolute(&args.caracal).context("--caracal")?,
            short: args.short,
            rate: args.rate.unwrap_or(rate),
            phase: Duration::from_secs(args.seconds_per_phase.unwrap_or(phase)),
            redis_stop: Duration::from_secs(args.redis_stop_seconds.unwrap_or(stop)),
            producers: args.producers,
            zones: args.zones,
            drain_timeout: Duration::from_secs(args.drain_timeout_seconds.unwrap_or(drain)),
        };
        ensure!(
            plan.caracal.is_file(),
            "--caracal {} is not a file (build it first)",
            plan.caracal.display()
        );
        ensure!(
            plan.rate > 0 && plan.producers > 0 && plan.zones > 0,
            "--rate, --producers and --zones must be positive"
        );
        ensure!(
            !plan.redis_stop.is_zero(),
            "--redis-stop-seconds must be positive"
        );
        Ok(plan)
    }

    fn command_line(&self) -> String {
        format!(
            "audit_fault --caracal {}{} --rate {} --seconds-per-phase {} --redis-stop-seconds {} --producers {} --zones {} --drain-timeout-seconds {}",
            self.caracal.display(),
            if self.short { " --short" } else { "" },
            self.rate,
            self.phase.as_secs(),
            self.redis_stop.as_secs(),
            self.producers,
            self.zones,
            self.drain_timeout.as_secs(),
        )
    }
}

// ---- the run directory -----------------------------------------------------------------

/// The run's directory; removed on drop unless kept.
struct RunDir {
    path: PathBuf,
    keep: bool,
}

impl RunDir {
    fn create(keep: bool) -> anyhow::Result<Self> {
        let path = std::env::temp_dir().join(format!(
            "caracal-audit-fault-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Self { path, keep })
    }

    fn logs(&self) -> PathBuf {
        self.path.join("logs")
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        if self.keep {
            eprintln!("audit_fault: kept {}", self.path.display());
        } else if let Err(error) = std::fs::remove_dir_all(&self.path) {
            eprintln!(
                "audit_fault: could not remove {}: {error}",
                self.path.display()
            );
        }
    }
}

/// A free TCP port on 127.0.0.1 (bound and released; the window for a collision is tiny).
fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

fn append_log(path: &Path) -> anyhow::Result<(Stdio, Stdio)> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    Ok((Stdio::from(file.try_clone()?), Stdio::from(file)))
}

/// Sends SIGTERM to `pid` (`kill -TERM`; the workspace forbids `unsafe`, so no libc call).
async fn terminate(pid: u32) -> anyhow::Result<()> {
    let status = Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status()
        .await?;
    ensure!(status.success(), "kill -TERM {pid} failed: {status}");
    Ok(())
}

/// Waits for `child` to exit; SIGKILL after `limit`.
async fn reap(child: &mut Child, limit: Duration) -> anyhow::Result<()> {
    if tokio::time::timeout(limit, child.wait()).await.is_err() {
        child.start_kill()?;
        child.wait().await?;
    }
    Ok(())
}

// ---- Postgres --------------------------------------------------------------------------

/// A throwaway Postgres cluster; stopped (`-m immediate`) on drop if still running.
struct PgCluster {
    bin: PathBuf,
    /// Owned by the server's user: the data directory, its socket and its log.
    dir: PathBuf,
    data: PathBuf,
    log: PathBuf,
    ctl_log: PathBuf,
    port: u16,
    as_postgres: bool,
    running: bool,
}

/// The directory of `initdb` and `pg_ctl`: `pg_config --bindir`, else the newest
/// `/usr/lib/postgresql/<version>/bin`.
async fn pg_bindir() -> anyhow::Result<PathBuf> {
    if let Ok(output) = Command::new("pg_config").arg("--bindir").output().await
        && output.status.success()
    {
        let dir = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
        if dir.join("initdb").is_file() {
            return Ok(dir);
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .context("no pg_config and no /usr/lib/postgresql")?
        .filter_map(Result::ok)
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
        .filter(|(_, bin)| bin.join("initdb").is_file())
        .collect();
    versions.sort();
    versions
        .pop()
        .map(|(_, bin)| bin)
        .ok_or_else(|| anyhow!("no initdb found"))
}

/// Whether this process runs as root (initdb refuses to).
fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("Uid:"))
                .and_then(|ids| ids.split_whitespace().next().map(|uid| uid == "0"))
        })
        .unwrap_or(false)
}

impl PgCluster {
    async fn init(dir: &Path, logs: &Path) -> anyhow::Result<Self> {
        let bin = pg_bindir().await?;
        let as_postgres = running_as_root();
        std::fs::create_dir(dir)?;
        if as_postgres {
            let status = Command::new("chown")
                .arg("postgres:postgres")
                .arg(dir)
                .status()
                .await?;
            ensure!(status.success(), "chown postgres {} failed", dir.display());
        }
        let cluster = Self {
            bin,
            dir: dir.to_path_buf(),
            data: dir.join("data"),
            log: logs.join("postgres.log"),
            ctl_log: logs.join("pg_ctl.log"),
            port: free_port()?,
            as_postgres,
            running: false,
        };
        // The server log lives in the cluster's directory (the postgres user writes it) and
        // is copied to the logs at the end.
        let output = cluster
            .tool("initdb")
            .arg("-D")
            .arg(&cluster.data)
            .args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"])
            .output()
            .await
            .context("initdb")?;
        ensure!(
            output.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
        Ok(cluster)
    }

    fn server_log(&self) -> PathBuf {
        self.dir.join("server.log")
    }

    fn tool(&self, name: &str) -> Command {
        let path = self.bin.join(name);
        if self.as_postgres {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(path);
            command
        } else {
            Command::new(path)
        }
    }

    fn blocking_tool(&self, name: &str) -> std::process::Command {
        let path = self.bin.join(name);
        if self.as_postgres {
            let mut command = std::process::Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(path);
            command
        } else {
            std::process::Command::new(path)
        }
    }

    /// Runs `pg_ctl` with its output appended to `logs/pg_ctl.log`. Never through pipes:
    /// a postmaster started by `pg_ctl` inherits them, and reading them to their end would
    /// wait for the server to exit.
    async fn pg_ctl(&self, args: &[&str]) -> anyhow::Result<()> {
        let (stdout, stderr) = append_log(&self.ctl_log)?;
        let status = self
            .tool("pg_ctl")
            .arg("-D")
            .arg(&self.data)
            .args(["-w", "-t", "120"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .status()
            .await
            .context("pg_ctl")?;
        ensure!(
            status.success(),
            "pg_ctl {} failed ({status}); see {}",
            args.join(" "),
            self.ctl_log.display()
        );
        Ok(())
    }

    async fn start(&mut self) -> anyhow::Result<()> {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=on -c max_connections=200",
            self.port,
            self.dir.display()
        );
        let log = self.server_log();
        let log = log.to_string_lossy();
        self.running = true;
        self.pg_ctl(&["-l", &log, "-o", &options, "start"]).await
    }

    /// `pg_ctl restart -m fast`: the server keeps the options it was started with.
    async fn restart(&mut self) -> anyhow::Result<()> {
        let log = self.server_log();
        let log = log.to_string_lossy();
        self.pg_ctl(&["-l", &log, "-m", "fast", "restart"]).await
    }

    async fn stop(&mut self) -> anyhow::Result<()> {
        self.pg_ctl(&["-m", "fast", "stop"]).await?;
        self.running = false;
        Ok(())
    }

    fn url(&self, user: &str, db: &str) -> String {
        format!("postgres://{user}@127.0.0.1:{}/{db}", self.port)
    }

    fn copy_log(&self) {
        if let Ok(text) = std::fs::read(self.server_log()) {
            let _ignored = std::fs::write(&self.log, text);
        }
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        self.copy_log();
        if self.running {
            let stopped = self
                .blocking_tool("pg_ctl")
                .arg("-D")
                .arg(&self.data)
                .args(["-m", "immediate", "stop"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            if !matches!(stopped, Ok(status) if status.success()) {
                eprintln!("audit_fault: pg_ctl stop of {} failed", self.data.display());
            }
        }
    }
}

// ---- Redis -----------------------------------------------------------------------------

/// A private Redis with an AOF; killed on drop.
struct RedisServer {
    port: u16,
    dir: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl RedisServer {
    fn new(dir: PathBuf, logs: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir(&dir)?;
        Ok(Self {
            port: free_port()?,
            dir,
            log: logs.join("redis.log"),
            child: None,
        })
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    async fn start(&mut self) -> anyhow::Result<()> {
        let (stdout, stderr) = append_log(&self.log)?;
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--dir",
            ])
            .arg(&self.dir)
            .args([
                "--appendonly",
                "yes",
                "--appendfsync",
                "everysec",
                "--save",
                "",
                "--maxmemory-policy",
                "noeviction",
                "--daemonize",
                "no",
            ])
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()
            .context("starting redis-server")?;
        self.child = Some(child);
        let client = redis::Client::open(self.url())?;
        let started = Instant::now();
        loop {
            if let Ok(mut conn) = client.get_multiplexed_async_connection().await {
                let pong: Result<String, _> = redis::cmd("PING").query_async(&mut conn).await;
                if pong.is_ok() {
                    return Ok(());
                }
            }
            ensure!(
                started.elapsed() < Duration::from_secs(30),
                "Redis did not answer within 30 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGTERM (Redis writes its AOF out and exits), then waits.
    async fn stop(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            if let Some(pid) = child.id() {
                terminate(pid).await?;
            }
            reap(&mut child, Duration::from_secs(30)).await?;
        }
        Ok(())
    }
}

// ---- the ledger ------------------------------------------------------------------------

/// A `caracal audit` child process; SIGKILLed on drop.
struct LedgerProc {
    child: Child,
    addr: SocketAddr,
    name: String,
}

/// What a ledger's `/metrics` reported.
#[derive(Debug, Clone, Copy, Default)]
struct LedgerCounters {
    ingested: u64,
    duplicates: u64,
    claimed: u64,
    transient_failures: u64,
    missing_entries: u64,
    dead_lettered: u64,
    tamper_checked: u64,
    tamper_findings: u64,
}

impl LedgerCounters {
    fn add(self, other: Self) -> Self {
        Self {
            ingested: self.ingested + other.ingested,
            duplicates: self.duplicates + other.duplicates,
            claimed: self.claimed + other.claimed,
            transient_failures: self.transient_failures + other.transient_failures,
            missing_entries: self.missing_entries + other.missing_entries,
            dead_lettered: self.dead_lettered + other.dead_lettered,
            tamper_checked: self.tamper_checked + other.tamper_checked,
            tamper_findings: self.tamper_findings + other.tamper_findings,
        }
    }

    fn parse(text: &str) -> Self {
        let mut counters = Self::default();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let Some((name, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let Ok(value) = value.trim().parse::<u64>() else {
                continue;
            };
            match name {
                "caracal_audit_ingested_total" => counters.ingested = value,
                "caracal_audit_duplicates_total" => counters.duplicates = value,
                "caracal_audit_claimed_total" => counters.claimed = value,
                "caracal_audit_transient_failures_total" => counters.transient_failures = value,
                "caracal_audit_missing_entries_total" => counters.missing_entries = value,
                "caracal_audit_tamper_checked_total" => counters.tamper_checked = value,
                "caracal_audit_tamper_mismatch_total"
                | "caracal_audit_tamper_chain_breaks_total"
                | "caracal_audit_tamper_gaps_total"
                | "caracal_audit_tamper_hmac_failures_total"
                | "caracal_audit_tamper_other_total" => counters.tamper_findings += value,
                n if n.starts_with("caracal_audit_dead_lettered_total{") => {
                    counters.dead_lettered += value
                }
                _ => {}
            }
        }
        counters
    }
}

struct LedgerEnv<'a> {
    caracal: &'a Path,
    database_url: String,
    redis_url: String,
    key_hex: &'a str,
    logs: PathBuf,
}

impl LedgerProc {
    async fn start(env: &LedgerEnv<'_>, name: &str) -> anyhow::Result<Self> {
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let (stdout, stderr) = append_log(&env.logs.join(format!("{name}.log")))?;
        let child = Command::new(env.caracal)
            .arg("audit")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .env("DATABASE_URL", &env.database_url)
            .env("REDIS_URL", &env.redis_url)
            .env("AUDIT_HMAC_KEY", env.key_hex)
            .env("CARACAL_INSTANCE_ID", name)
            .env("CARACAL_AUDIT_ADDR", addr.to_string())
            .env("AUDIT_CLAIM_IDLE_SECS", "2")
            .env("AUDIT_STREAM_TRIM_INTERVAL_SECS", "1")
            .env("AUDIT_LEADER_TICK_SECS", "1")
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", env.caracal.display()))?;
        let mut ledger = Self {
            child,
            addr,
            name: name.to_owned(),
        };
        let started = Instant::now();
        loop {
            if let Ok(response) =
                tests_harness::http::request(addr, "GET", "/health", &[], bytes::Bytes::new()).await
                && response.status == 200
            {
                return Ok(ledger);
            }
            if let Some(status) = ledger.child.try_wait()? {
                bail!("ledger {name} exited at start-up ({status}); see its log");
            }
            ensure!(
                started.elapsed() < Duration::from_secs(60),
                "ledger {name} not healthy within 60 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn scrape(&self) -> Option<LedgerCounters> {
        let response =
            tests_harness::http::request(self.addr, "GET", "/metrics", &[], bytes::Bytes::new())
                .await
                .ok()?;
        (response.status == 200)
            .then(|| LedgerCounters::parse(&String::from_utf8_lossy(&response.body)))
    }

    /// `kill -9`.
    async fn kill9(mut self) -> anyhow::Result<()> {
        self.child.start_kill()?;
        self.child.wait().await?;
        Ok(())
    }

    /// SIGTERM: the ledger drains and stops.
    async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(pid) = self.child.id() {
            terminate(pid).await?;
        }
        reap(&mut self.child, Duration::from_secs(30)).await
    }
}

// ---- producers -------------------------------------------------------------------------

/// Counts shared by the producer tasks.
#[derive(Debug, Default)]
struct Tally {
    /// Events the emitters reserved a slot for and took.
    produced: AtomicU64,
    /// Reservations refused (`AuditUnavailable`).
    refused: AtomicU64,
    /// Receipts that reported acceptance (Redis acknowledged or segment fsynced).
    accepted: AtomicU64,
    /// Receipts that reported no acceptance.
    unaccepted: AtomicU64,
    /// 10 ms ticks where a producer was more than 100 ms behind its schedule.
    behind: AtomicU64,
}

struct Producer {
    emitter: AuditEmitter,
    replay_dir: PathBuf,
    supervisor: JoinHandle<()>,
    shutdown: Option<oneshot::Sender<()>>,
    emit_task: JoinHandle<Vec<String>>,
    receipt_task: JoinHandle<()>,
}

/// Sums of the emitters' health counters.
#[derive(Debug, Clone, Copy, Default)]
struct EmitterTotals {
    xadded: u64,
    spilled: u64,
    replayed: u64,
    quarantined: u64,
    dropped: u64,
    refused: u64,
    buffered: u64,
}

fn fault_event(producer: usize, n: u64, zones: u32) -> AuditEvent {
    let zone = (producer as u64 + n) % u64::from(zones);
    AuditEvent::new(format!("fault-zone-{zone}"), "gateway_resource_request")
        .request_id(format!("fault-{producer}-{n}"))
        .decision(AuditDecision::Allow)
        .policy_set_id("ps-1")
        .policy_set_version_id("psv-1")
        .evaluation_status("complete")
        .determining_policies_json(serde_json::json!([{"policy": "caracal-gateway-use"}]))
        .metadata_json(serde_json::json!({
            "application_id": "app-7f3e2c1d", "resource": "resource://crm/contacts",
            "method": "GET", "gateway_status": 200, "upstream_status": 200,
            "result_class": "success", "latency_ms": 0.412, "producer": producer, "n": n,
        }))
}

/// Emits at `per_sec` until `stop`, keeping to the schedule (`elapsed × rate` events so far).
async fn emit_loop(
    emitter: AuditEmitter,
    producer: usize,
    per_sec: f64,
    zones: u32,
    tally: Arc<Tally>,
    receipts: mpsc::Sender<AuditReceipt>,
    mut stop: watch::Receiver<bool>,
) -> Vec<String> {
    let started = Instant::now();
    let mut ticker = tokio::time::interval(Duration::from_millis(10));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut ids = Vec::new();
    let mut n: u64 = 0;
    let slack = (per_sec / 10.0).max(1.0) as u64;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.changed() => {}
        }
        if *stop.borrow() {
            return ids;
        }
        let due = (started.elapsed().as_secs_f64() * per_sec) as u64;
        if due > n + slack {
            tally.behind.fetch_add(1, Ordering::Relaxed);
        }
        while n < due {
            let event = fault_event(producer, n, zones);
            let id = event.id().to_owned();
            n += 1;
            match emitter.emit_with_receipt(event) {
                Ok(receipt) => {
                    tally.produced.fetch_add(1, Ordering::Relaxed);
                    ids.push(id);
                    if receipts.send(receipt).await.is_err() {
                        return ids;
                    }
                }
                Err(_unavailable) => {
                    tally.refused.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
}

/// Awaits receipts in emission order (the writer reports them in that order).
async fn await_receipts(mut receipts: mpsc::Receiver<AuditReceipt>, tally: Arc<Tally>) {
    while let Some(receipt) = receipts.recv().await {
        match receipt.accepted().await {
            Ok(()) => tally.accepted.fetch_add(1, Ordering::Relaxed),
            Err(_unavailable) => tally.unaccepted.fetch_add(1, Ordering::Relaxed),
        };
    }
}

impl Producer {
    async fn spawn(
        index: usize,
        plan: &Plan,
        root: &Path,
        redis_url: &str,
        key: &HmacKey,
        tally: &Arc<Tally>,
        stop: &watch::Receiver<bool>,
    ) -> anyhow::Result<Self> {
        let replay_dir = root.join(format!("replay-{index}"));
        std::fs::create_dir(&replay_dir)?;
        let mut config = AuditEmitterConfig::new("gateway", format!("fault-{index}"));
        config.hmac_key = Some(key.clone());
        config.replay_dir.clone_from(&replay_dir);
        let client = redis::Client::open(redis_url)?;
        let (shutdown_tx, shutdown_rx) = oneshot::channel::<()>();
        let (emitter, supervisor) = AuditEmitter::spawn(config, client, async move {
            let _stopped = shutdown_rx.await;
        })
        .await;
        let (receipt_tx, receipt_rx) = mpsc::channel(1 << 16);
        let per_sec = plan.rate as f64 / plan.producers as f64;
        let emit_task = tokio::spawn(emit_loop(
            emitter.clone(),
            index,
            per_sec,
            plan.zones,
            Arc::clone(tally),
            receipt_tx,
            stop.clone(),
        ));
        let receipt_task = tokio::spawn(await_receipts(receipt_rx, Arc::clone(tally)));
        Ok(Self {
            emitter,
            replay_dir,
            supervisor,
            shutdown: Some(shutdown_tx),
            emit_task,
            receipt_task,
        })
    }
}

impl Drop for Producer {
    /// On an early exit: stop emitting; dropping `shutdown` stops the emitter.
    fn drop(&mut self) {
        self.emit_task.abort();
        self.receipt_task.abort();
    }
}

fn emitter_totals(producers: &[Producer]) -> EmitterTotals {
    producers
        .iter()
        .map(|p| p.emitter.health())
        .fold(EmitterTotals::default(), |t, h| EmitterTotals {
            xadded: t.xadded + h.xadded_total,
            spilled: t.spilled + h.spilled_total,
            replayed: t.replayed + h.replayed_total,
            quarantined: t.quarantined + h.quarantined_total,
            dropped: t.dropped + h.dropped_total,
            refused: t.refused + h.refused_total,
            buffered: t.buffered + h.buffered as u64,
        })
}

/// Segment files (`seg-*.ndjson`, sealed or `.open`) and their bytes under `dirs`.
fn replay_files(dirs: &[PathBuf]) -> (u64, u64) {
    fn walk(dir: &Path, found: &mut (u64, u64)) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.filter_map(Result::ok) {
            let path = entry.path();
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                walk(&path, found);
            } else {
                let name = entry.file_name();
                let name = name.to_string_lossy();
                if name.starts_with("seg-")
                    && (name.ends_with(".ndjson") || name.ends_with(".ndjson.open"))
                {
                    found.0 += 1;
                    found.1 += meta.len();
                }
            }
        }
    }
    let mut found = (0, 0);
    for dir in dirs {
        walk(dir, &mut found);
    }
    found
}

// ---- observations ----------------------------------------------------------------------

/// The group and stream as Redis reports them.
#[derive(Debug, Clone, Default)]
struct StreamState {
    length: u64,
    entries_added: u64,
    last_generated: String,
    pending: u64,
    entries_read: Option<u64>,
    lag: Option<u64>,
    last_delivered: String,
    consumers: u64,
    dead_letters: u64,
}

impl StreamState {
    /// The group's last delivered id is at or past the stream's last generated id.
    fn delivered_all(&self) -> bool {
        parse_stream_id(&self.last_delivered) >= parse_stream_id(&self.last_generated)
    }

    fn acknowledged_all(&self) -> bool {
        self.pending == 0 && self.delivered_all()
    }
}

fn parse_stream_id(id: &str) -> (u64, u64) {
    id.split_once('-')
        .and_then(|(ms, seq)| Some((ms.parse().ok()?, seq.parse().ok()?)))
        .unwrap_or((0, 0))
}

async fn stream_state(redis_url: &str) -> anyhow::Result<StreamState> {
    let client = redis::Client::open(redis_url)?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let info: BTreeMap<String, redis::Value> = redis::cmd("XINFO")
        .arg("STREAM")
        .arg(AUDIT_EVENTS)
        .query_async(&mut conn)
        .await?;
    let number = |key: &str| -> u64 {
        info.get(key)
            .and_then(|v| redis::from_redis_value::<u64>(v.clone()).ok())
            .unwrap_or(0)
    };
    let mut state = StreamState {
        length: number("length"),
        entries_added: number("entries-added"),
        last_generated: info
            .get("last-generated-id")
            .and_then(|v| redis::from_redis_value::<String>(v.clone()).ok())
            .unwrap_or_default(),
        ..StreamState::default()
    };
    let groups: redis::streams::StreamInfoGroupsReply = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(AUDIT_EVENTS)
        .query_async(&mut conn)
        .await?;
    let group = groups
        .groups
        .iter()
        .find(|g| g.name == AUDIT_INGESTOR_GROUP)
        .ok_or_else(|| anyhow!("group {AUDIT_INGESTOR_GROUP} missing"))?;
    state.pending = group.pending as u64;
    state.entries_read = group.entries_read.map(|n| n as u64);
    state.lag = group.lag.map(|n| n as u64);
    state.last_delivered.clone_from(&group.last_delivered_id);
    state.consumers = group.consumers as u64;
    state.dead_letters = redis::cmd("XLEN")
        .arg(AUDIT_DLQ)
        .query_async(&mut conn)
        .await?;
    Ok(state)
}

/// Entries pending at the group's consumers whose name contains `instance`.
async fn pending_at(redis_url: &str, instance: &str) -> anyhow::Result<u64> {
    let client = redis::Client::open(redis_url)?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let reply: redis::streams::StreamInfoConsumersReply = redis::cmd("XINFO")
        .arg("CONSUMERS")
        .arg(AUDIT_EVENTS)
        .arg(AUDIT_INGESTOR_GROUP)
        .query_async(&mut conn)
        .await?;
    Ok(reply
        .consumers
        .iter()
        .filter(|c| c.name.contains(instance))
        .map(|c| c.pending as u64)
        .sum())
}

async fn count_rows(url: &str) -> anyhow::Result<u64> {
    let mut conn = sqlx::PgConnection::connect(url).await?;
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM caracal.audit_events")
        .fetch_one(&mut conn)
        .await?;
    conn.close().await?;
    Ok(u64::try_from(rows)?)
}

/// One line of the phase table.
#[derive(Debug, Clone)]
struct PhaseLine {
    step: String,
    at: Duration,
    took: Duration,
    produced: u64,
    rows: Option<u64>,
    spilled: u64,
    replayed: u64,
    replay_files: u64,
    note: String,
}

// ---- the run ---------------------------------------------------------------------------

struct Outcome {
    report: String,
    passed: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let plan = Plan::from_args(&args)?;
    let dir = RunDir::create(args.keep)?;
    std::fs::create_dir(dir.logs())?;
    // A bound on the whole run: set-up, the phases, the Redis stop, the drain, the checks.
    let limit =
        Duration::from_secs(300) + plan.phase * 6 + plan.redis_stop + plan.drain_timeout * 2;
    let result = tokio::select! {
        result = tokio::time::timeout(limit, Box::pin(run(&plan, &dir))) => {
            result.unwrap_or_else(|_elapsed| Err(anyhow!("the run did not finish within {} s", limit.as_secs())))
        }
        _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted")),
    };
    let outcome = match result {
        Ok(outcome) => outcome,
        Err(error) => {
            print_log_tails(&dir.logs());
            return Err(error);
        }
    };
    println!("{}", outcome.report);
    if let Some(path) = &args.out {
        std::fs::write(path, &outcome.report)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if !outcome.passed {
        print_log_tails(&dir.logs());
        bail!("the fault run failed a check (see the report)");
    }
    Ok(())
}

fn print_log_tails(logs: &Path) {
    let Ok(entries) = std::fs::read_dir(logs) else {
        return;
    };
    let mut paths: Vec<PathBuf> = entries.filter_map(Result::ok).map(|e| e.path()).collect();
    paths.sort();
    for path in paths {
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines
            .get(lines.len().saturating_sub(25)..)
            .unwrap_or_default();
        eprintln!("---- {} (last {} lines)", path.display(), tail.len());
        for line in tail {
            eprintln!("{line}");
        }
    }
}

/// Everything the orchestration holds; dropping it kills and removes what is left.
struct Lab<'a> {
    plan: &'a Plan,
    started: Instant,
    pg: PgCluster,
    redis: RedisServer,
    db_url: String,
    ledger_env: LedgerEnv<'a>,
    ledger: Option<LedgerProc>,
    ledgers_started: u32,
    /// Counters of stopped or killed ledgers (their last scrape).
    ledger_history: Vec<(String, LedgerCounters)>,
    last_scrape: LedgerCounters,
    producers: Vec<Producer>,
    tally: Arc<Tally>,
    stop_tx: watch::Sender<bool>,
    lines: Vec<PhaseLine>,
    notes: Vec<String>,
    /// Instance names of the ledgers killed with `kill -9`.
    killed: Vec<String>,
}

impl Lab<'_> {
    fn replay_dirs(&self) -> Vec<PathBuf> {
        self.producers
            .iter()
            .map(|p| p.replay_dir.clone())
            .collect()
    }

    async fn start_ledger(&mut self) -> anyhow::Result<Duration> {
        self.ledgers_started += 1;
        let name = format!("fault-ledger-{}", self.ledgers_started);
        let started = Instant::now();
        let ledger = LedgerProc::start(&self.ledger_env, &name).await?;
        self.ledger = Some(ledger);
        self.last_scrape = LedgerCounters::default();
        Ok(started.elapsed())
    }

    async fn scrape(&mut self) {
        if let Some(ledger) = &self.ledger
            && let Some(counters) = ledger.scrape().await
        {
            self.last_scrape = counters;
        }
    }

    /// Produces for `length`, sampling what the emitters and ledger report.
    async fn produce_for(&mut self, length: Duration) -> (u64, u64) {
        let until = Instant::now() + length;
        let mut max_files = 0;
        let mut max_bytes = 0;
        while Instant::now() < until {
            let (files, bytes) = replay_files(&self.replay_dirs());
            max_files = max_files.max(files);
            max_bytes = max_bytes.max(bytes);
            self.scrape().await;
            tokio::time::sleep(
                Duration::from_millis(200).min(until.saturating_duration_since(Instant::now())),
            )
            .await;
        }
        (max_files, max_bytes)
    }

    async fn record(&mut self, step: &str, at: Duration, took: Duration, note: String) {
        let totals = emitter_totals(&self.producers);
        let rows = count_rows(&self.db_url).await.ok();
        let line = PhaseLine {
            step: step.to_owned(),
            at,
            took,
            produced: self.tally.produced.load(Ordering::Relaxed),
            rows,
            spilled: totals.spilled,
            replayed: totals.replayed,
            replay_files: replay_files(&self.replay_dirs()).0,
            note,
        };
        eprintln!(
            "audit_fault: {:>7.1} s {:<34} produced {:>8} rows {:>8} spilled {:>7} replayed {:>7} files {:>3} {}",
            line.at.as_secs_f64(),
            line.step,
            line.produced,
            line.rows
                .map_or_else(|| "n/a".to_owned(), |r| r.to_string()),
            line.spilled,
            line.replayed,
            line.replay_files,
            line.note
        );
        self.lines.push(line);
    }

    async fn faults(&mut self) -> anyhow::Result<()> {
        let phase = self.plan.phase;

        // Warm-up.
        let at = self.started.elapsed();
        self.produce_for(phase).await;
        self.record("warm-up", at, phase, String::new()).await;

        // kill -9 the ledger, start its successor.
        let at = self.started.elapsed();
        self.scrape().await;
        let killed = self.ledger.take().ok_or_else(|| anyhow!("no ledger"))?;
        let killed_name = killed.name.clone();
        killed.kill9().await?;
        let orphaned = pending_at(&self.redis.url(), &killed_name).await?;
        self.ledger_history
            .push((killed_name.clone(), self.last_scrape));
        let healthy = self.start_ledger().await?;
        self.produce_for(phase).await;
        let claimed = self.last_scrape.claimed;
        let left = pending_at(&self.redis.url(), &killed_name).await?;
        self.record(
            "kill -9 ledger, start successor",
            at,
            phase,
            format!(
                "{killed_name} killed with {orphaned} entries read and not acknowledged; successor healthy after {:.2} s, claimed {claimed} entries; {left} still pending at the killed consumers",
                healthy.as_secs_f64()
            ),
        )
        .await;
        self.killed.push(killed_name);

        // Restart Redis.
        let at = self.started.elapsed();
        let spilled_before = emitter_totals(&self.producers).spilled;
        let down = Instant::now();
        self.redis.stop().await?;
        self.redis.start().await?;
        let downtime = down.elapsed();
        self.produce_for(phase).await;
        let spilled = emitter_totals(&self.producers).spilled - spilled_before;
        self.record(
            "restart Redis (SIGTERM, AOF)",
            at,
            phase,
            format!(
                "down {:.2} s; {spilled} events spilled meanwhile",
                downtime.as_secs_f64()
            ),
        )
        .await;

        // Stop Redis for a while: the producers must spill.
        let at = self.started.elapsed();
        let spilled_before = emitter_totals(&self.producers).spilled;
        self.redis.stop().await?;
        let (files, bytes) = self.produce_for(self.plan.redis_stop).await;
        let (files_at_end, _) = replay_files(&self.replay_dirs());
        let spilled = emitter_totals(&self.producers).spilled - spilled_before;
        self.redis.start().await?;
        let back = Instant::now();
        let mut replay_drained = None;
        let until = back + phase.max(Duration::from_secs(1));
        while Instant::now() < until
            || (replay_drained.is_none() && back.elapsed() < Duration::from_secs(120))
        {
            if replay_drained.is_none() && replay_files(&self.replay_dirs()).0 == 0 {
                replay_drained = Some(back.elapsed());
            }
            self.scrape().await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let drained = replay_drained.map_or_else(
            || "replay files NOT drained within 120 s".to_owned(),
            |d| {
                format!(
                    "replay files drained {:.2} s after Redis came back",
                    d.as_secs_f64()
                )
            },
        );
        self.record(
            &format!("stop Redis for {} s", self.plan.redis_stop.as_secs()),
            at,
            self.plan.redis_stop,
            format!(
                "{spilled} events spilled, up to {files} segment files ({bytes} bytes); {drained}"
            ),
        )
        .await;
        if spilled == 0 || files_at_end == 0 {
            self.notes.push(format!(
                "FAILED: with Redis stopped the producers did not spill (spilled {spilled}, segment files at the end of the stop {files_at_end})"
            ));
        }
        if replay_drained.is_none() {
            self.notes.push(
                "FAILED: replay files were not drained within 120 s of Redis coming back"
                    .to_owned(),
            );
        }

        // Restart Postgres.
        let at = self.started.elapsed();
        let restart = Instant::now();
        self.pg.restart().await?;
        let took = restart.elapsed();
        self.produce_for(phase).await;
        self.record(
            "restart Postgres (pg_ctl -m fast)",
            at,
            phase,
            format!("pg_ctl restart took {:.2} s", took.as_secs_f64()),
        )
        .await;
        Ok(())
    }

    /// Stops production, waits for every receipt, then for the replay directories to empty
    /// and every event to be a row, and shuts the emitters down.
    async fn drain(&mut self) -> anyhow::Result<(Vec<String>, Duration)> {
        let at = self.started.elapsed();
        self.stop_tx.send_replace(true);
        let mut ids = Vec::new();
        for producer in &mut self.producers {
            let mut emitted = (&mut producer.emit_task).await.context("producer task")?;
            ids.append(&mut emitted);
        }
        // Every receipt resolves once its event is in Redis or an fsynced segment.
        for producer in &mut self.producers {
            if tokio::time::timeout(self.plan.drain_timeout, &mut producer.receipt_task)
                .await
                .is_err()
            {
                producer.receipt_task.abort();
                self.notes.push(format!(
                    "FAILED: receipts still unresolved {} s after production stopped",
                    self.plan.drain_timeout.as_secs()
                ));
            }
        }
        let produced = ids.len() as u64;
        let drain_started = Instant::now();
        let mut last = String::new();
        loop {
            let (files, _) = replay_files(&self.replay_dirs());
            let totals = emitter_totals(&self.producers);
            let rows = count_rows(&self.db_url).await.ok();
            let stream = stream_state(&self.redis.url()).await.ok();
            let acknowledged = stream.as_ref().is_some_and(StreamState::acknowledged_all);
            if files == 0 && totals.buffered == 0 && rows == Some(produced) && acknowledged {
                break;
            }
            last = format!(
                "replay files {files}, buffered {}, rows {} of {produced}, pending {}, delivered all {}",
                totals.buffered,
                rows.map_or_else(|| "n/a".to_owned(), |r| r.to_string()),
                stream
                    .as_ref()
                    .map_or_else(|| "n/a".to_owned(), |s| s.pending.to_string()),
                stream.as_ref().is_some_and(StreamState::delivered_all),
            );
            if drain_started.elapsed() > self.plan.drain_timeout {
                self.notes.push(format!(
                    "FAILED: not drained within {} s: {last}",
                    self.plan.drain_timeout.as_secs()
                ));
                break;
            }
            self.scrape().await;
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        let drain = drain_started.elapsed();
        if !last.is_empty() {
            eprintln!("audit_fault: drain: last state before done: {last}");
        }
        // Graceful shutdown of the emitters (nothing is in flight any more).
        for producer in &mut self.producers {
            if let Some(shutdown) = producer.shutdown.take() {
                let _ignored = shutdown.send(());
            }
            (&mut producer.supervisor)
                .await
                .context("emitter supervisor")?;
        }
        self.record(
            "stop producers, drain",
            at,
            drain,
            format!(
                "drained {:.2} s after production stopped",
                drain.as_secs_f64()
            ),
        )
        .await;
        Ok((ids, drain))
    }
}

async fn run(plan: &Plan, dir: &RunDir) -> anyhow::Result<Outcome> {
    let setup = Instant::now();
    let logs = dir.logs();
    let key_hex = control_crypto::random_key_hex().map_err(|_csprng| anyhow!("no random key"))?;
    let key = HmacKey::from_hex(&key_hex).map_err(|_bad_key| anyhow!("bad generated key"))?;

    // Services of our own.
    let mut pg = PgCluster::init(&dir.path.join("pg"), &logs).await?;
    pg.start().await?;
    let mut admin = sqlx::PgConnection::connect(&pg.url("postgres", "postgres")).await?;
    sqlx::query("CREATE DATABASE caracal_fault")
        .execute(&mut admin)
        .await?;
    admin.close().await?;
    let db_url = pg.url("postgres", "caracal_fault");
    let migrate = Command::new(&plan.caracal)
        .arg("migrate")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DATABASE_URL", &db_url)
        .output()
        .await?;
    ensure!(
        migrate.status.success(),
        "caracal migrate failed: {}",
        String::from_utf8_lossy(&migrate.stderr).trim()
    );
    let mut redis = RedisServer::new(dir.path.join("redis"), &logs)?;
    redis.start().await?;
    let ledger_env = LedgerEnv {
        caracal: &plan.caracal,
        database_url: db_url.clone(),
        redis_url: redis.url(),
        key_hex: &key_hex,
        logs: logs.clone(),
    };
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut lab = Lab {
        plan,
        started: Instant::now(),
        pg,
        redis,
        db_url: db_url.clone(),
        ledger_env,
        ledger: None,
        ledgers_started: 0,
        ledger_history: Vec::new(),
        last_scrape: LedgerCounters::default(),
        producers: Vec::new(),
        tally: Arc::new(Tally::default()),
        stop_tx,
        lines: Vec::new(),
        notes: Vec::new(),
        killed: Vec::new(),
    };
    lab.start_ledger().await?;
    let setup_took = setup.elapsed();
    eprintln!(
        "audit_fault: services up in {:.1} s; producing",
        setup_took.as_secs_f64()
    );

    lab.started = Instant::now();
    for index in 0..plan.producers {
        let producer = Producer::spawn(
            index,
            plan,
            &dir.path,
            &lab.redis.url(),
            &key,
            &lab.tally,
            &stop_rx,
        )
        .await?;
        lab.producers.push(producer);
    }
    let production = Instant::now();
    lab.faults().await?;
    let production_took = production.elapsed();
    let (ids, drain) = lab.drain().await?;

    // Final state.
    lab.scrape().await;
    let final_ledger = lab.ledger.take();
    if let Some(ledger) = &final_ledger {
        lab.ledger_history
            .push((ledger.name.clone(), lab.last_scrape));
    }
    let checks = check(&mut lab, &ids, &key, &key_hex).await?;
    if let Some(ledger) = final_ledger {
        ledger.stop().await?;
    }
    lab.redis.stop().await?;
    lab.pg.stop().await?;
    let report = render(&lab, &checks, setup_took, production_took, drain);
    Ok(Outcome {
        passed: checks.passed() && lab.notes.is_empty(),
        report,
    })
}

/// Everything the final checks found.
#[derive(Debug, Default)]
struct Checks {
    produced: u64,
    accepted: u64,
    unaccepted: u64,
    refused: u64,
    behind: u64,
    emitters: EmitterTotals,
    replay_files_left: u64,
    rows: u64,
    distinct_ids: u64,
    missing_ids: u64,
    unexpected_ids: u64,
    stream: StreamState,
    /// Entries still pending at the consumers of killed ledgers.
    killed_pending: u64,
    alerts: u64,
    sweep_rows: u64,
    sweep_findings: u64,
    sweep_seconds: f64,
    ledger: LedgerCounters,
    verify_code: Option<i32>,
    verify_summary: String,
}

impl Checks {
    fn results(&self) -> Vec<(String, bool)> {
        let dup_rows = self.rows - self.distinct_ids.min(self.rows);
        vec![
            (
                format!(
                    "events produced ({}) = accepted by the emitters ({}) = rows in Postgres ({})",
                    self.produced, self.accepted, self.rows
                ),
                self.produced == self.accepted && self.accepted == self.rows,
            ),
            (
                format!(
                    "the rows are exactly the produced events: {} distinct ids, {} duplicate rows, {} missing, {} unexpected",
                    self.distinct_ids, dup_rows, self.missing_ids, self.unexpected_ids
                ),
                self.distinct_ids == self.rows && self.missing_ids == 0 && self.unexpected_ids == 0,
            ),
            (
                format!(
                    "acknowledged: group `{AUDIT_INGESTOR_GROUP}` has {} pending, last delivered {} covers last generated {}",
                    self.stream.pending, self.stream.last_delivered, self.stream.last_generated
                ),
                self.stream.acknowledged_all(),
            ),
            (
                format!(
                    "the killed ledger's pending entries were all claimed and acknowledged: {} left",
                    self.killed_pending
                ),
                self.killed_pending == 0,
            ),
            (
                format!(
                    "no emitter refusal, failed receipt, loss or quarantine: refused {}, not accepted {}, dropped {}, quarantined {}",
                    self.refused, self.unaccepted, self.emitters.dropped, self.emitters.quarantined
                ),
                self.refused == 0
                    && self.unaccepted == 0
                    && self.emitters.dropped == 0
                    && self.emitters.refused == 0
                    && self.emitters.quarantined == 0,
            ),
            (
                format!(
                    "replay directories empty at the end: {} segment files",
                    self.replay_files_left
                ),
                self.replay_files_left == 0,
            ),
            (
                format!(
                    "no dead letters: {} in `{AUDIT_DLQ}`",
                    self.stream.dead_letters
                ),
                self.stream.dead_letters == 0 && self.ledger.dead_lettered == 0,
            ),
            (
                format!(
                    "full tamper sweep: {} rows checked, {} findings; `audit_ingest_alerts` holds {} rows; ledgers reported {} missing entries",
                    self.sweep_rows, self.sweep_findings, self.alerts, self.ledger.missing_entries
                ),
                self.sweep_findings == 0
                    && self.alerts == 0
                    && self.ledger.missing_entries == 0
                    && self.sweep_rows == self.rows,
            ),
            (
                format!(
                    "`caracal audit verify --database-url …` exit code {}",
                    self.verify_code
                        .map_or_else(|| "none (killed)".to_owned(), |c| c.to_string())
                ),
                self.verify_code == Some(0),
            ),
        ]
    }

    fn passed(&self) -> bool {
        self.results().iter().all(|(_, ok)| *ok)
    }
}

async fn check(
    lab: &mut Lab<'_>,
    ids: &[String],
    key: &HmacKey,
    key_hex: &str,
) -> anyhow::Result<Checks> {
    let tally = &lab.tally;
    let mut checks = Checks {
        produced: ids.len() as u64,
        accepted: tally.accepted.load(Ordering::Relaxed),
        unaccepted: tally.unaccepted.load(Ordering::Relaxed),
        refused: tally.refused.load(Ordering::Relaxed),
        behind: tally.behind.load(Ordering::Relaxed),
        emitters: emitter_totals(&lab.producers),
        replay_files_left: replay_files(&lab.replay_dirs()).0,
        ..Checks::default()
    };
    checks.stream = stream_state(&lab.redis.url()).await?;
    for name in &lab.killed {
        checks.killed_pending += pending_at(&lab.redis.url(), name).await?;
    }

    // Rows, ids and alerts, read as the owner.
    let mut conn = sqlx::PgConnection::connect(&lab.db_url).await?;
    let stored: Vec<String> = sqlx::query_scalar("SELECT id FROM caracal.audit_events")
        .fetch_all(&mut conn)
        .await?;
    checks.rows = stored.len() as u64;
    let stored: HashSet<String> = stored.into_iter().collect();
    checks.distinct_ids = stored.len() as u64;
    let produced: HashSet<&str> = ids.iter().map(String::as_str).collect();
    checks.missing_ids = produced.iter().filter(|id| !stored.contains(**id)).count() as u64;
    checks.unexpected_ids = stored
        .iter()
        .filter(|id| !produced.contains(id.as_str()))
        .count() as u64;

    // The full tamper sweep, as the ledger's role.
    let options = control_store::settings::parse_url(
        "DATABASE_URL",
        &lab.pg.url("caracal_audit", "caracal_fault"),
    )
    .map_err(|e| anyhow!("{e}"))?;
    let pool = control_store::pool::connect_pool(
        control_store::ServiceRole::Audit,
        "fault-sweep",
        options,
        &control_store::settings::PoolSettings::default(),
    )
    .await?;
    let keys = control_audit::config::LedgerKeys {
        producer: Some(key.clone()),
        producer_previous: None,
        chain: Some(key.clone()),
        retired: Vec::new(),
    };
    let metrics = control_audit::metrics::Metrics::default();
    let sweep_started = Instant::now();
    let _report = control_audit::sweep::run_once(
        &pool,
        &keys,
        &metrics,
        control_audit::sweep::SweepScope::Full,
        10_000_000,
    )
    .await?;
    checks.sweep_seconds = sweep_started.elapsed().as_secs_f64();
    checks.sweep_rows = metrics.tamper_checked.load(Ordering::Relaxed);
    checks.sweep_findings = metrics.tamper_mismatch.load(Ordering::Relaxed)
        + metrics.tamper_chain_breaks.load(Ordering::Relaxed)
        + metrics.tamper_gaps.load(Ordering::Relaxed)
        + metrics.tamper_hmac_failures.load(Ordering::Relaxed)
        + metrics.tamper_other.load(Ordering::Relaxed);
    pool.close().await;
    let alerts: i64 = sqlx::query_scalar("SELECT count(*) FROM caracal.audit_ingest_alerts")
        .fetch_one(&mut conn)
        .await?;
    checks.alerts = u64::try_from(alerts)?;
    conn.close().await?;

    checks.ledger = lab
        .ledger_history
        .iter()
        .fold(LedgerCounters::default(), |sum, (_, c)| sum.add(*c));

    // The offline verifier.
    let verify = Command::new(&lab.plan.caracal)
        .args(["audit", "verify", "--database-url"])
        .arg(lab.pg.url("caracal_audit", "caracal_fault"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("AUDIT_HMAC_KEY", key_hex)
        .output()
        .await?;
    checks.verify_code = verify.status.code();
    let stdout = String::from_utf8_lossy(&verify.stdout);
    let stderr = String::from_utf8_lossy(&verify.stderr);
    checks.verify_summary = stdout
        .lines()
        .chain(stderr.lines())
        .filter(|l| !l.trim().is_empty())
        .take(12)
        .collect::<Vec<_>>()
        .join("\n");
    Ok(checks)
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

fn render(
    lab: &Lab<'_>,
    checks: &Checks,
    setup: Duration,
    production: Duration,
    drain: Duration,
) -> String {
    let plan = lab.plan;
    let mut out = String::from("# Audit ledger fault run\n\n");
    let _ = writeln!(out, "Command: `{}`\n", plan.command_line());
    let _ = writeln!(
        out,
        "Date: {}. Form: {}. Everything ran on this machine's {} cores: producers, ledger, a private Postgres ({}) and a private Redis (appendonly yes, appendfsync everysec, no snapshots); the shared services were not touched.\n",
        chrono::Utc::now().format("%Y-%m-%d %H:%M UTC"),
        if plan.short { "short" } else { "full" },
        std::thread::available_parallelism().map_or(0, std::num::NonZero::get),
        lab.pg.bin.display(),
    );
    let _ = writeln!(
        out,
        "{} producers (each an `AuditEmitter` with its own replay directory, `AUDIT_EMIT_MODE=async`, every event with a receipt) emitted signed events over {} zones at {} events/s in total; the ledger is `caracal audit` as a child process with `AUDIT_CLAIM_IDLE_SECS=2`.\n",
        plan.producers, plan.zones, plan.rate
    );
    out.push_str(
        "Faults: the ledger is killed with SIGKILL and a successor (a new instance id) started at once; a Redis restart is SIGTERM (Redis writes its AOF out) and a start on the same port and directory; the Redis stop is the same with the stated pause in between; the Postgres restart is `pg_ctl restart -m fast` (open sessions are terminated). Each row's counters are read at the end of its phase.\n\n",
    );
    out.push_str("## Timeline\n\n| at | step | phase | produced | rows | spilled | replayed | segment files | notes |\n|---:|---|---:|---:|---:|---:|---:|---:|---|\n");
    for line in &lab.lines {
        let _ = writeln!(
            out,
            "| {:.1} s | {} | {} | {} | {} | {} | {} | {} | {} |",
            line.at.as_secs_f64(),
            line.step,
            secs(line.took),
            line.produced,
            line.rows
                .map_or_else(|| "n/a".to_owned(), |r| r.to_string()),
            line.spilled,
            line.replayed,
            line.replay_files,
            line.note
        );
    }
    let offered = checks.produced as f64 / production.as_secs_f64().max(0.001);
    let dups = checks.stream.entries_added.saturating_sub(checks.rows);
    out.push_str("\n## Figures\n\n| figure | value |\n|---|---:|\n");
    let rows: Vec<(&str, String)> = vec![
        ("setup (initdb, start, migrate, Redis, ledger)", secs(setup)),
        ("production time", secs(production)),
        ("achieved production rate", format!("{offered:.0} events/s")),
        (
            "10 ms ticks > 100 ms behind schedule",
            checks.behind.to_string(),
        ),
        (
            "events produced (slot reserved, event emitted)",
            checks.produced.to_string(),
        ),
        (
            "events accepted (receipt: Redis acknowledged or segment fsynced)",
            checks.accepted.to_string(),
        ),
        (
            "reservations refused / receipts not accepted",
            format!("{} / {}", checks.refused, checks.unaccepted),
        ),
        (
            "sent to Redis from the emitters' queues",
            checks.emitters.xadded.to_string(),
        ),
        (
            "spilled to replay files",
            checks.emitters.spilled.to_string(),
        ),
        (
            "replayed from replay files",
            checks.emitters.replayed.to_string(),
        ),
        (
            "lost / quarantined by the emitters",
            format!(
                "{} / {}",
                checks.emitters.dropped, checks.emitters.quarantined
            ),
        ),
        (
            "stream entries added (every XADD, with resends)",
            checks.stream.entries_added.to_string(),
        ),
        (
            "duplicates on the stream (entries added − rows)",
            dups.to_string(),
        ),
        (
            "duplicates absorbed, as the ledgers counted them (last scrape of each)",
            checks.ledger.duplicates.to_string(),
        ),
        (
            "entries claimed from idle consumers (XAUTOCLAIM)",
            checks.ledger.claimed.to_string(),
        ),
        (
            "transient database failures retried by the ledgers",
            checks.ledger.transient_failures.to_string(),
        ),
        ("ledger processes run", lab.ledgers_started.to_string()),
        (
            "rows in Postgres / distinct ids",
            format!("{} / {}", checks.rows, checks.distinct_ids),
        ),
        (
            "produced ids missing / rows not produced",
            format!("{} / {}", checks.missing_ids, checks.unexpected_ids),
        ),
        (
            "group: pending / entries-read / lag / consumers (entries-read and lag are Redis's estimates; the check compares ids)",
            format!(
                "{} / {} / {} / {}",
                checks.stream.pending,
                checks
                    .stream
                    .entries_read
                    .map_or_else(|| "n/a".to_owned(), |n| n.to_string()),
                checks
                    .stream
                    .lag
                    .map_or_else(|| "n/a".to_owned(), |n| n.to_string()),
                checks.stream.consumers
            ),
        ),
        (
            "stream: last generated / group last delivered",
            format!(
                "{} / {}",
                checks.stream.last_generated, checks.stream.last_delivered
            ),
        ),
        (
            "stream length at the end (after trims)",
            checks.stream.length.to_string(),
        ),
        ("dead letters", checks.stream.dead_letters.to_string()),
        (
            "final drain (production stop → all rows, nothing pending, no replay files)",
            secs(drain),
        ),
        (
            "full tamper sweep (rows checked, findings, time)",
            format!(
                "{} rows, {} findings, {:.2} s",
                checks.sweep_rows, checks.sweep_findings, checks.sweep_seconds
            ),
        ),
        ("rows in `audit_ingest_alerts`", checks.alerts.to_string()),
    ];
    for (name, value) in rows {
        let _ = writeln!(out, "| {name} | {value} |");
    }
    out.push_str("\nPer ledger (last `/metrics` scrape before it was killed or stopped):\n\n");
    for (name, c) in &lab.ledger_history {
        let _ = writeln!(
            out,
            "- `{name}`: ingested {}, duplicates {}, claimed {}, transient failures {}, dead letters {}, missing entries {}, its tamper sweeps (start-up and rolling) checked {} rows with {} findings",
            c.ingested,
            c.duplicates,
            c.claimed,
            c.transient_failures,
            c.dead_lettered,
            c.missing_entries,
            c.tamper_checked,
            c.tamper_findings
        );
    }
    let _ = writeln!(
        out,
        "\n`caracal audit verify --database-url postgres://caracal_audit@…/caracal_fault` said:\n\n```text\n{}\n```\n",
        checks.verify_summary
    );
    out.push_str("## Checks\n\n");
    for (text, ok) in checks.results() {
        let _ = writeln!(out, "- {} {text}", if ok { "PASS" } else { "FAIL" });
    }
    for note in &lab.notes {
        let _ = writeln!(out, "- {note}");
    }
    let passed = checks.passed() && lab.notes.is_empty();
    let _ = writeln!(
        out,
        "\n**Result: {}**",
        if passed { "PASS" } else { "FAIL" }
    );
    out
}
