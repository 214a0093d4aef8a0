//! `admin_propagation`: how fast admin changes reach the data plane (issue 4 benchmark).
//!
//! ```text
//! admin_propagation [--activations 50] [--revocations 200] [--redis-db 12] [--out FILE]
//! ```
//!
//! In one process, on a fresh migrated database and Redis database `--redis-db` (flushed),
//! it runs a real STS and the admin API on 127.0.0.1 and measures:
//!
//! 1. **Activation → `loaded`.** Each round adds a new policy version (distinct content, so
//!    the STS really rebuilds), a set version, and activates it; the time runs from sending
//!    `POST …/activate` until `GET …/activation-status` answers `propagation_status: loaded`
//!    (polled every 2 ms). The STS's own binding poll is set to 300 s, so the version travels
//!    through the outbox, the stream and the STS's consumer. Target: p99 ≤ 1 s.
//! 2. **Subject revoke → message on `caracal.sessions.revoke`.** Each round provisions an
//!    active authority record for a new subject, remembers the stream's last id, sends
//!    `POST …/subjects/revoke` and blocks on `XREAD` until the record's message appears; the
//!    time runs from sending the request to reading the message. Target: p99 ≤ 50 ms.
//!
//! Prints a Markdown report (and writes it to `--out` when given). Loopback only; it stops by
//! itself.

use std::time::Duration;

use anyhow::{Context as _, bail, ensure};
use clap::Parser;
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use tests_harness::{
    TestDb,
    api::ApiFixture,
    provision::Provision,
    sts::{StsFixture, isolated_redis},
};
use tokio::time::Instant;

#[derive(Debug, Parser)]
#[command(about = "Admin activation and revocation propagation benchmark")]
struct Args {
    /// Activation rounds.
    #[arg(long, default_value_t = 50)]
    activations: u32,
    /// Revocation rounds.
    #[arg(long, default_value_t = 200)]
    revocations: u32,
    /// Redis database used (flushed at start and end).
    #[arg(long, default_value_t = 12)]
    redis_db: u8,
    /// Also write the report here.
    #[arg(long)]
    out: Option<std::path::PathBuf>,
}

const STREAM: &str = "caracal.sessions.revoke";

fn document(round: u32) -> String {
    format!(
        "package caracal.authz\nimport rego.v1\n# caracal:data-document\napp_ids := {{\"bench\": \"bench-app-{round}\"}}\n"
    )
}

async fn json_ok(resp: tests_harness::http::HttpResponse, status: u16) -> anyhow::Result<Value> {
    let body = resp.json().unwrap_or(Value::Null);
    ensure!(
        resp.status == status,
        "expected {status}, got {}: {body}",
        resp.status
    );
    Ok(body)
}

fn field(body: &Value, name: &str) -> anyhow::Result<String> {
    body[name]
        .as_str()
        .map(str::to_owned)
        .with_context(|| format!("no {name} in {body}"))
}

fn micros(elapsed: Duration) -> u64 {
    u64::try_from(elapsed.as_micros())
        .unwrap_or(u64::MAX)
        .max(1)
}

fn summary(name: &str, h: &Histogram<u64>, target_ms: f64) -> String {
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    let p99 = ms(0.99);
    format!(
        "| {name} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.0} | {} |",
        h.len(),
        h.min() as f64 / 1000.0,
        ms(0.5),
        p99,
        h.max() as f64 / 1000.0,
        target_ms,
        if p99 <= target_ms { "met" } else { "missed" }
    )
}

async fn activations(api: &ApiFixture, zone: &str, rounds: u32) -> anyhow::Result<Histogram<u64>> {
    let mut hist = Histogram::new_with_bounds(1, 600_000_000, 3)?;
    let base = format!("/v1/zones/{zone}");
    let policy = json_ok(
        api.admin(
            "POST",
            &format!("{base}/policies"),
            Some(&json!({"name": "bench", "content": document(0)})),
        )
        .await?,
        201,
    )
    .await?;
    let policy_id = field(&policy, "id")?;
    let set = json_ok(
        api.admin(
            "POST",
            &format!("{base}/policy-sets"),
            Some(&json!({"name": "bench-set"})),
        )
        .await?,
        201,
    )
    .await?;
    let set_id = field(&set, "id")?;
    for round in 1..=rounds {
        let version = json_ok(
            api.admin(
                "POST",
                &format!("{base}/policies/{policy_id}/versions"),
                Some(&json!({"content": document(round)})),
            )
            .await?,
            201,
        )
        .await?;
        let manifest = json!({"manifest": [{"policy_version_id": field(&version, "version_id")?}]});
        let set_version = json_ok(
            api.admin(
                "POST",
                &format!("{base}/policy-sets/{set_id}/versions"),
                Some(&manifest),
            )
            .await?,
            201,
        )
        .await?;
        let version_id = field(&set_version, "version_id")?;
        let started = Instant::now();
        let activated = json_ok(
            api.admin(
                "POST",
                &format!("{base}/policy-sets/{set_id}/activate"),
                Some(&json!({"version_id": version_id})),
            )
            .await?,
            202,
        )
        .await?;
        let status_path = format!(
            "{base}/policy-sets/{set_id}/activation-status?version_id={version_id}&outbox_id={}",
            field(&activated, "outbox_id")?
        );
        loop {
            let status = json_ok(api.admin("GET", &status_path, None).await?, 200).await?;
            match status["propagation_status"].as_str() {
                Some("loaded") => break,
                Some("failed") => bail!("activation failed: {status}"),
                _ if started.elapsed() > Duration::from_secs(30) => {
                    bail!("not loaded in 30 s: {status}")
                }
                _ => tokio::time::sleep(Duration::from_millis(2)).await,
            }
        }
        hist.record(micros(started.elapsed()))?;
    }
    Ok(hist)
}

async fn revocations(
    api: &ApiFixture,
    db: &TestDb,
    redis_url: &str,
    zone: &str,
    rounds: u32,
) -> anyhow::Result<(Histogram<u64>, Histogram<u64>)> {
    let mut hist = Histogram::new_with_bounds(1, 600_000_000, 3)?;
    let mut answered_hist = Histogram::new_with_bounds(1, 600_000_000, 3)?;
    let mut p = Provision::open(db).await?;
    let mut conn = redis::Client::open(redis_url)?
        .get_multiplexed_async_connection()
        .await?;
    for round in 0..rounds {
        let record = format!("bench-record-{round}");
        let subject = format!("bench-user-{round}");
        p.authority_record(zone, &record, "user", &subject).await?;
        let last: Vec<(String, Vec<(String, String)>)> = redis::cmd("XREVRANGE")
            .arg(STREAM)
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1)
            .query_async(&mut conn)
            .await
            .unwrap_or_default();
        let mut from = last
            .first()
            .map_or_else(|| "0-0".to_owned(), |(id, _)| id.clone());
        let path = format!("/v1/zones/{zone}/subjects/revoke");
        let body = json!({"subject_id": subject});
        let started = Instant::now();
        let request = {
            let addr = api.addr;
            let auth = format!("Bearer {}", tests_harness::api::BOOTSTRAP_TOKEN);
            tokio::spawn(async move {
                let response = tests_harness::http::request(
                    addr,
                    "POST",
                    &path,
                    &[
                        ("authorization", &auth),
                        ("content-type", "application/json"),
                    ],
                    body.to_string(),
                )
                .await;
                (response, started.elapsed())
            })
        };
        'wait: loop {
            ensure!(
                started.elapsed() < Duration::from_secs(30),
                "no message in 30 s"
            );
            type Entries = Vec<(String, Vec<(String, Vec<(String, String)>)>)>;
            let reply: Option<Entries> = redis::cmd("XREAD")
                .arg("BLOCK")
                .arg(1000)
                .arg("STREAMS")
                .arg(STREAM)
                .arg(&from)
                .query_async(&mut conn)
                .await?;
            for (_, items) in reply.unwrap_or_default() {
                for (id, fields) in items {
                    if fields
                        .iter()
                        .any(|(k, v)| k == "session_id" && v == &record)
                    {
                        hist.record(micros(started.elapsed()))?;
                        break 'wait;
                    }
                    from = id;
                }
            }
        }
        let (answered, took) = request.await?;
        let answered = answered?;
        ensure!(
            answered.status == 200,
            "revoke answered {}",
            answered.status
        );
        answered_hist.record(micros(took))?;
    }
    Ok((hist, answered_hist))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let redis_url = isolated_redis(args.redis_db).await?;
    let db = TestDb::migrated().await?;
    let sts = StsFixture::start_with(
        &db,
        &[
            ("REDIS_URL", redis_url.as_str()),
            ("CARACAL_POLICY_POLL_SECONDS", "300"),
        ],
    )
    .await?;
    let api = ApiFixture::start_with(
        &db,
        &[
            ("REDIS_URL", redis_url.as_str()),
            ("STREAMS_HMAC_KEY", sts.streams_key_hex.as_str()),
        ],
    )
    .await?;
    let zone = api.create_zone("bench").await?;
    let activation = activations(&api, &zone, args.activations).await?;
    let (revocation, answered) =
        revocations(&api, &db, &redis_url, &zone, args.revocations).await?;
    api.stop().await;
    sts.stop().await;
    let _flushed = isolated_redis(args.redis_db).await?;

    let report = format!(
        "# Admin propagation\n\nProduced by `cargo run --release -p bench --bin admin_propagation -- --activations {} --revocations {}` \
         (one STS, one admin API, Postgres and Redis on 127.0.0.1; no gateway exists yet, so `loaded` means every live STS replica).\n\n\
         | measure | samples | min ms | p50 ms | p99 ms | max ms | target p99 ms | |\n|---|---|---|---|---|---|---|---|\n{}\n{}\n{}\n",
        args.activations,
        args.revocations,
        summary("activation → `loaded`", &activation, 1000.0),
        summary(
            "subject revoke → message on `caracal.sessions.revoke`",
            &revocation,
            50.0
        ),
        summary("(subject revoke → API answered)", &answered, 50.0),
    );
    println!("{report}");
    if let Some(out) = args.out {
        std::fs::write(out, &report)?;
    }
    Ok(())
}
