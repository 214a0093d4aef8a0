//! `audit_bench`: the audit ledger's benchmark (issue 8).
//!
//! ```text
//! audit_bench [--events 200000] [--zones 16] [--rate 40000] [--seconds 60] [--workers 4]
//!             [--export-dir DIR] [--out FILE]
//! ```
//!
//! In one process, on a fresh migrated database and a leased Redis database (4–11, flushed),
//! with a real ledger (`control_audit::start_with_listener`) on 127.0.0.1:
//!
//! 1. **Chained ingest capacity.** `--events` signed events of realistic size (a gateway
//!    decision with metadata, ~700 bytes), spread over `--zones` zones, are put on
//!    `caracal.audit.events` first; then the ledger starts and the run measures the time
//!    from its start to the last row committed in Postgres. Rate = events / time. Target:
//!    ≥ 20,000 events/s.
//! 2. **Overload, then drain.** With the ledger running, a producer adds events at `--rate`
//!    (the target run uses 40,000/s, twice the capacity target) for `--seconds` (600 for the
//!    full run); then the run waits until every event is a row. It reports the backlog at the
//!    end of production, the drain time, and checks: rows = events produced, nothing
//!    pending, no dead letters, and a full tamper sweep over every row finds nothing.
//!
//! 3. **Export** (with `--export-dir`): the export leader's job writes every hour of the
//!    ledger to `DIR` as Parquet objects with manifests (storage §8.7), then `caracal audit
//!    verify --export DIR` checks them; both are timed, with the objects' size per row.
//!
//! Everything shares the machine's cores (producer, ledger, Postgres, Redis). It stops by
//! itself and prints a Markdown report (also written to `--out`).

use std::{sync::atomic::Ordering, time::Duration};

use anyhow::{Context as _, ensure};
use clap::Parser;
use control_crypto::hmac_sha256_hex;
use control_events::streams::{AUDIT_DLQ, AUDIT_EVENTS, AUDIT_INGESTOR_GROUP};
use redis::AsyncCommands;
use tests_harness::{
    TestDb,
    audit::{AuditFixture, RedisLease, producer_key},
};
use tokio::time::Instant;

#[derive(Debug, Parser)]
#[command(about = "Audit ledger chained-ingest benchmark")]
struct Args {
    /// Events in the capacity run.
    #[arg(long, default_value_t = 200_000)]
    events: u64,
    /// Zones the events are spread over.
    #[arg(long, default_value_t = 16)]
    zones: u32,
    /// Production rate of the overload run (events/s).
    #[arg(long, default_value_t = 40_000)]
    rate: u64,
    /// Duration of the overload run (s); 0 skips it.
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// Ingest loops (`AUDIT_WORKERS`).
    #[arg(long, default_value_t = 4)]
    workers: u32,
    /// Entries per read (`AUDIT_BATCH_SIZE`).
    #[arg(long, default_value_t = 1000)]
    batch: u32,
    /// Also export every hour of the ledger to this (empty) directory and verify the export.
    #[arg(long)]
    export_dir: Option<std::path::PathBuf>,
    /// Also write the report here.
    #[arg(long)]
    out: Option<std::path::PathBuf>,
}

// The allocator of the `caracal` binary, so the in-process ledger runs as it does there.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Events per pipelined `XADD` batch.
const CHUNK: u64 = 1000;

fn event(n: u64, zones: u32) -> (String, String) {
    let id = uuid::Uuid::now_v7().to_string();
    let zone = format!("zone-{}", n % u64::from(zones));
    let data = serde_json::json!({
        "id": id,
        "zone_id": zone,
        "event_type": "gateway_resource_request",
        "request_id": format!("req-{n}"),
        "decision": "allow",
        "policy_set_id": "ps-1",
        "policy_set_version_id": "psv-1",
        "manifest_sha": "9f2c3a",
        "evaluation_status": "complete",
        "determining_policies_json": [{"policy": "caracal-gateway-use"}],
        "diagnostics_json": [],
        "metadata_json": {
            "application_id": "app-7f3e2c1d", "resource": "resource://crm/contacts",
            "method": "GET", "gateway_status": 200, "upstream_status": 200,
            "result_class": "success", "latency_ms": 0.412, "upstream_host": "127.0.0.1:8080",
            "auth_mode": "api_key", "provider_id": "prov-1", "session_id": "sid-42",
            "agent_session_id": "as-9", "subject_fingerprint": "a1b2c3d4e5f60718",
            "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736", "response_bytes": 1834
        },
        "occurred_at": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
    })
    .to_string();
    (id, data)
}

/// Adds events `from..to` in pipelined chunks.
async fn produce(
    conn: &mut redis::aio::MultiplexedConnection,
    from: u64,
    to: u64,
    zones: u32,
) -> anyhow::Result<()> {
    let key = producer_key()?;
    let mut n = from;
    while n < to {
        let end = (n + CHUNK).min(to);
        let mut pipe = redis::pipe();
        for i in n..end {
            let (id, data) = event(i, zones);
            let sig = hmac_sha256_hex(&key, &[data.as_bytes()]);
            pipe.cmd("XADD")
                .arg(AUDIT_EVENTS)
                .arg("*")
                .arg("id")
                .arg(id)
                .arg("data")
                .arg(data)
                .arg("sig")
                .arg(sig)
                .ignore();
        }
        let () = pipe.query_async(conn).await?;
        n = end;
    }
    Ok(())
}

async fn rows(conn: &mut sqlx::PgConnection) -> anyhow::Result<i64> {
    Ok(
        sqlx::query_scalar("SELECT count(*) FROM caracal.audit_events")
            .fetch_one(conn)
            .await?,
    )
}

/// Rows chained so far: the sum of the zones' chain heads (each zone's `chain_seq` runs
/// 1, 2, … without gaps, and the benchmark sends no duplicates). One index lookup per
/// zone, so polling does not compete with the ledger the way `count(*)` over the growing
/// table would.
async fn chained(conn: &mut sqlx::PgConnection, zones: u32) -> anyhow::Result<i64> {
    let names: Vec<String> = (0..zones).map(|z| format!("zone-{z}")).collect();
    Ok(sqlx::query_scalar(
        "SELECT coalesce(sum(h.chain_seq), 0)::int8
           FROM unnest($1::text[]) AS z(id)
           CROSS JOIN LATERAL (SELECT chain_seq FROM caracal.audit_events e
                                WHERE e.zone_id = z.id ORDER BY chain_seq DESC LIMIT 1) h",
    )
    .bind(names)
    .fetch_one(conn)
    .await?)
}

async fn await_rows(
    conn: &mut sqlx::PgConnection,
    zones: u32,
    count: i64,
    limit: Duration,
) -> anyhow::Result<()> {
    let started = Instant::now();
    loop {
        let now = chained(conn, zones).await?;
        if now >= count {
            return Ok(());
        }
        ensure!(
            started.elapsed() < limit,
            "{now} of {count} rows after {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Exports every hour of the ledger to `dir`, verifies the export offline, and reports both.
async fn export_and_verify(
    owner: &mut sqlx::PgConnection,
    pool: &sqlx::PgPool,
    dir: &std::path::Path,
) -> anyhow::Result<String> {
    use chrono::{DateTime, DurationRound, Utc};
    use control_audit::{export, objects::ObjectStore, verify};

    let (first, last): (DateTime<Utc>, DateTime<Utc>) =
        sqlx::query_as("SELECT min(ingested_at), max(ingested_at) FROM caracal.audit_events")
            .fetch_one(&mut *owner)
            .await?;
    let hour = chrono::Duration::hours(1);
    let mut conn = pool.acquire().await?;
    control_store::audit::partitions::advance_watermark(
        &mut conn,
        export::WATERMARK,
        first.duration_trunc(hour)? - hour,
    )
    .await?;
    drop(conn);
    let metrics = control_audit::metrics::Metrics::default();
    let store = ObjectStore::Dir(dir.to_path_buf());
    let started = Instant::now();
    let hours = export::run_due(
        pool,
        &store,
        None,
        Duration::ZERO,
        &metrics,
        last + hour * 2,
    )
    .await?;
    let exported = started.elapsed();
    let rows = metrics.rows_exported.load(Ordering::Relaxed);
    let mut bytes = 0u64;
    for name in store.list().await? {
        if name.ends_with(".parquet") {
            bytes += std::fs::metadata(dir.join(&name))?.len();
        }
    }
    let key_hex = tests_harness::audit::PRODUCER_KEY_HEX;
    let env = |name: &str| (name == "AUDIT_HMAC_KEY").then(|| key_hex.to_owned());
    let mut out = Vec::new();
    let started = Instant::now();
    let code = verify::offline_with_env(
        verify::OfflineArgs {
            export: Some(dir.to_path_buf()),
            ..verify::OfflineArgs::default()
        },
        &mut out,
        &env,
    )
    .await;
    let verified = started.elapsed();
    ensure!(
        code == verify::EXIT_CLEAN,
        "the export does not verify: {}",
        String::from_utf8_lossy(&out)
    );
    Ok(format!(
        "## 3. Export\n\n{hours} hours, {rows} rows exported as Parquet in {:.1} s (**{:.0} rows/s**), {bytes} bytes ({:.0} bytes/row); `caracal audit verify --export` (every check, HMACs included) in {:.1} s (**{:.0} rows/s**), clean.\n\n",
        exported.as_secs_f64(),
        rows as f64 / exported.as_secs_f64(),
        bytes as f64 / rows.max(1) as f64,
        verified.as_secs_f64(),
        rows as f64 / verified.as_secs_f64(),
    ))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let db = TestDb::migrated().await.context("test database")?;
    let redis = RedisLease::acquire().await?;
    let mut producer = redis.conn().await?;
    let mut owner = db.admin().await?;
    let workers = args.workers.to_string();
    let batch = args.batch.to_string();
    let overrides = [
        ("AUDIT_WORKERS", workers.as_str()),
        ("AUDIT_BATCH_SIZE", batch.as_str()),
        ("CARACAL_DB_POOL_MAX", "8"),
        // Production cadences: the fixture's 1 s claim idle would take over batches still in work.
        ("AUDIT_CLAIM_IDLE_SECS", "30"),
        ("AUDIT_LEADER_TICK_SECS", "30"),
    ];
    let mut report = String::from("# Audit ledger benchmark\n\n");
    report.push_str(&format!(
        "Command: `audit_bench --events {} --zones {} --rate {} --seconds {} --workers {} --batch {}`\n\n",
        args.events, args.zones, args.rate, args.seconds, args.workers, args.batch
    ));

    // 1. Capacity: a full stream, then the ledger.
    let fill_started = Instant::now();
    produce(&mut producer, 0, args.events, args.zones).await?;
    let fill = fill_started.elapsed();
    let started = Instant::now();
    let audit = AuditFixture::start_on(&db, redis, &overrides).await?;
    let expected = i64::try_from(args.events)?;
    await_rows(&mut owner, args.zones, expected, Duration::from_secs(1800)).await?;
    let drained = started.elapsed();
    let capacity = args.events as f64 / drained.as_secs_f64();
    report.push_str(&format!(
        "## 1. Chained ingest capacity\n\n{} events over {} zones, pre-loaded in {:.1} s; ledger start to last commit: {:.2} s → **{:.0} events/s** (target ≥ 20,000).\n\n",
        args.events, args.zones, fill.as_secs_f64(), drained.as_secs_f64(), capacity
    ));
    println!("capacity: {capacity:.0} events/s");

    // 2. Overload at --rate for --seconds, then drain.
    let mut produced = args.events;
    if args.seconds > 0 {
        let per_tick = args.rate / 10;
        let ticks = args.seconds * 10;
        let started = Instant::now();
        let mut interval = tokio::time::interval(Duration::from_millis(100));
        let mut behind = 0u32;
        for _ in 0..ticks {
            interval.tick().await;
            let tick_started = Instant::now();
            produce(&mut producer, produced, produced + per_tick, args.zones).await?;
            produced += per_tick;
            if tick_started.elapsed() > Duration::from_millis(100) {
                behind += 1;
            }
        }
        let production = started.elapsed();
        let at_end = chained(&mut owner, args.zones).await?;
        let backlog = i64::try_from(produced)? - at_end;
        await_rows(
            &mut owner,
            args.zones,
            i64::try_from(produced)?,
            Duration::from_secs(3600),
        )
        .await?;
        let drain = started.elapsed() - production;
        let offered = (produced - args.events) as f64 / production.as_secs_f64();
        report.push_str(&format!(
            "## 2. Overload, then drain\n\nOffered {:.0} events/s for {:.1} s ({} ticks of 100 ms overran); backlog when production stopped: {} events; drained {:.2} s later. Total events {}.\n\n",
            offered, production.as_secs_f64(), behind, backlog, drain.as_secs_f64(), produced
        ));
        println!(
            "overload: offered {offered:.0}/s, backlog {backlog}, drain {:.1} s",
            drain.as_secs_f64()
        );
    }

    // Checks: every event is a row, nothing pending, no dead letters, the chain verifies.
    let mut conn = audit.redis.conn().await?;
    let total = rows(&mut owner).await?;
    let pending: redis::streams::StreamPendingReply =
        conn.xpending(AUDIT_EVENTS, AUDIT_INGESTOR_GROUP).await?;
    let dead: u64 = conn.xlen(AUDIT_DLQ).await?;
    let keys = control_audit::config::LedgerKeys {
        producer: Some(producer_key()?),
        producer_previous: None,
        chain: Some(producer_key()?),
        retired: Vec::new(),
    };
    let pool = db.service_pool(control_store::ServiceRole::Audit).await?;
    let metrics = control_audit::metrics::Metrics::default();
    let sweep_started = Instant::now();
    let sweep = control_audit::sweep::run_once(
        &pool,
        &keys,
        &metrics,
        control_audit::sweep::SweepScope::Full,
        10_000_000,
    )
    .await?;
    let findings = metrics.tamper_mismatch.load(Ordering::Relaxed)
        + metrics.tamper_chain_breaks.load(Ordering::Relaxed)
        + metrics.tamper_gaps.load(Ordering::Relaxed)
        + metrics.tamper_hmac_failures.load(Ordering::Relaxed)
        + metrics.tamper_other.load(Ordering::Relaxed);
    report.push_str(&format!(
        "## Checks\n\n- events produced {produced}, rows in Postgres {total}, pending {}, dead letters {dead}\n- full tamper sweep: {} rows checked in {:.1} s, {findings} findings ({sweep:?})\n",
        pending.count(),
        metrics.tamper_checked.load(Ordering::Relaxed),
        sweep_started.elapsed().as_secs_f64(),
    ));
    audit.stop().await;
    if let Some(dir) = &args.export_dir {
        report.push_str(&export_and_verify(&mut owner, &pool, dir).await?);
    }
    println!("{report}");
    if let Some(path) = &args.out {
        std::fs::write(path, &report)?;
    }
    ensure!(
        i64::try_from(produced)? == total,
        "rows {total} != produced {produced}"
    );
    ensure!(
        pending.count() == 0 && dead == 0 && findings == 0,
        "checks failed"
    );
    Ok(())
}
