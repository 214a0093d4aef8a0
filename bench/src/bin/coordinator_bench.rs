//! `coordinator_bench`: the Coordinator's benchmark (issue 7).
//!
//! ```text
//! coordinator_bench [--starts 3000] [--concurrency 16] [--revocations 200] [--redis-db 12] [--out FILE]
//! ```
//!
//! In one process, on a fresh migrated database and Redis database `--redis-db` (flushed),
//! it runs a real STS (the zone key set), the Coordinator and two gateway replicas on
//! 127.0.0.1, and measures:
//!
//! 1. **Session starts per second.** `--concurrency` clients start `--starts` task sessions
//!    in one zone (`POST /zones/{z}/agents`, each client reusing its session mandate, as the
//!    client library does); the rate is starts answered 201 over the wall time, with the
//!    latency distribution. The capacity limits and the per-client rate are raised so only
//!    the Coordinator's work (authentication, the per-zone advisory lock, the inserts and
//!    the outbox row) bounds it. Target: ≥ 1,000/s.
//! 2. **Revocation propagation.** Each round starts a source and a target session and a
//!    delegation between them through the Coordinator, proves a governed call anchored on
//!    them passes at both gateways, then terminates the target at the Coordinator and polls
//!    both gateways (every 1 ms, a fresh single-use mandate each time) until each answers
//!    401; the time runs from sending the terminate to the denial at the slower replica.
//!    The gateways' healing poll is set to 300 s, so only the outbox, the stream and each
//!    replica's own consumer group carry the change. Target: p99 ≤ 100 ms over 200 rounds.
//!
//! Everything shares the machine's cores (the client, the servers and Postgres); figures are
//! whole-system figures on loopback. Prints a Markdown report (and writes it to `--out`).
//! It stops by itself.

use std::{sync::Arc, time::Duration};

use anyhow::{Context as _, bail, ensure};
use clap::Parser;
use hdrhistogram::Histogram;
use serde_json::json;
use tests_harness::{
    TestDb,
    coordinator::{CoordinatorFixture, OPERATOR_TOKEN, session_claims},
    gateway::{GatewayFixture, TestSigner, gateway_claims},
    http,
    provision::Provision,
    sts::{StsFixture, isolated_redis},
    upstream::Upstream,
};
use tokio::time::Instant;

#[derive(Debug, Parser)]
#[command(about = "Coordinator session-start and revocation-propagation benchmark")]
struct Args {
    /// Session starts in the throughput run.
    #[arg(long, default_value_t = 3000)]
    starts: u32,
    /// Concurrent clients in the throughput run.
    #[arg(long, default_value_t = 16)]
    concurrency: u32,
    /// Zones the throughput run's clients are spread over (starts in one zone are
    /// serialised by the zone's advisory lock).
    #[arg(long, default_value_t = 1)]
    zones: u32,
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

const ZONE: &str = "bench";
const AGENT: &str = "agent-app";
const ISSUER_APP: &str = "issuer-app";
const RESOURCE: &str = "resource://echo";
/// The gateway policy: the agent may read the echo resource.
const POLICY: &str = r#"package caracal.authz
import rego.v1
# caracal:data-document
app_ids := {"agent": "agent-app"}
grants := {
  "resource://echo": {"application": "agent", "roles": {"reader": ["read"]}}
}
"#;
/// How long a propagation round waits for a denial before it fails.
const PROPAGATION_LIMIT: Duration = Duration::from_secs(5);

fn record(app: &str) -> String {
    format!("rec-{app}")
}

/// A zone of the throughput run: its application's session mandate.
struct StartZone {
    zone: String,
    app: String,
    token: String,
}

/// The running system under test.
struct Stage {
    _db: TestDb,
    start_zones: Vec<StartZone>,
    sts: StsFixture,
    co: CoordinatorFixture,
    gateways: [GatewayFixture; 2],
    _upstream: Upstream,
    signer: TestSigner,
}

impl Stage {
    async fn start(redis_url: &str, zones: u32) -> anyhow::Result<Self> {
        let db = TestDb::migrated().await?;
        let upstream = Upstream::start().await?;
        let mut p = Provision::open(&db).await?;
        p.zone(ZONE).await?;
        for app in [AGENT, ISSUER_APP] {
            p.application(ZONE, app, "bench-secret-0123456789", &[])
                .await?;
            p.authority_record(ZONE, &record(app), "application", app)
                .await?;
        }
        p.provider_none(ZONE, "prov-none").await?;
        p.resource(
            ZONE,
            "res-echo",
            RESOURCE,
            &["read"],
            Some(&upstream.url("/base")),
            "prov-none",
        )
        .await?;
        p.exec(
            "UPDATE resources SET operations = '[{\"method\":\"GET\",\"path\":\"/items\",\"scope\":\"read\"}]' \
             WHERE id = 'res-echo'",
        )
        .await?;
        p.activate_policy(ZONE, "main", POLICY).await?;
        let signer = TestSigner::insert(p.conn(), ZONE).await?;
        let mut start_zones = Vec::new();
        for n in 0..zones.max(1) {
            let zone = format!("starts-{n}");
            let app = format!("start-app-{n}");
            p.zone(&zone).await?;
            p.application(&zone, &app, "bench-secret-0123456789", &[])
                .await?;
            p.authority_record(&zone, &record(&app), "application", &app)
                .await?;
            let zone_signer = TestSigner::insert(p.conn(), &zone).await?;
            let token = zone_signer.sign(&session_claims(&zone, &app, &record(&app)))?;
            start_zones.push(StartZone { zone, app, token });
        }
        let redis = [("REDIS_URL", redis_url)];
        let sts = StsFixture::start_with(&db, &redis).await?;
        let co = CoordinatorFixture::start_with(
            &db,
            sts.addr,
            &[
                ("REDIS_URL", redis_url),
                ("MAX_AGENTS_PER_ZONE", "1000000"),
                ("MAX_AGENTS_PER_APP", "1000000"),
                ("COORDINATOR_RATE_LIMIT_PER_MIN", "1000000"),
                ("CARACAL_DB_POOL_MAX", "16"),
                ("OUTBOX_POLL_MS", "1000"),
            ],
        )
        .await?;
        let gateway_env = [
            ("REDIS_URL", redis_url),
            ("CARACAL_GATEWAY_POLL_SECONDS", "300"),
        ];
        let gateways = [
            GatewayFixture::start_with(&db, &gateway_env).await?,
            GatewayFixture::start_with(&db, &gateway_env).await?,
        ];
        Ok(Self {
            _db: db,
            start_zones,
            sts,
            co,
            gateways,
            _upstream: upstream,
            signer,
        })
    }

    fn session_token(&self, app: &str) -> anyhow::Result<String> {
        self.signer.sign(&session_claims(ZONE, app, &record(app)))
    }

    /// Starts a task session of `app` in the bench zone with the policy role `reader`.
    async fn start_session(&self, token: &str, app: &str) -> anyhow::Result<String> {
        self.start_in(ZONE, token, app).await
    }

    /// Starts a task session of `app` in `zone` with the policy role `reader`.
    async fn start_in(&self, zone: &str, token: &str, app: &str) -> anyhow::Result<String> {
        let resp = self
            .co
            .call(
                token,
                "POST",
                &format!("/zones/{zone}/agents"),
                Some(&json!({"application_id": app, "labels": ["reader"]})),
                &[],
            )
            .await?;
        ensure!(resp.status == 201, "start answered {}", resp.status);
        resp.json()?["agent_session_id"]
            .as_str()
            .map(str::to_owned)
            .context("agent_session_id")
    }

    /// A fresh single-use gateway mandate of the agent anchored on `target` and `edge`.
    fn mandate(&self, target: &str, edge: &str) -> anyhow::Result<String> {
        let mut claims = gateway_claims(ZONE, AGENT, &record(AGENT), RESOURCE);
        claims["agent_session_id"] = json!(target);
        claims["delegation_edge_id"] = json!(edge);
        claims["scope"] = json!("read");
        self.signer.sign(&claims)
    }

    /// The status of `GET /items` through gateway `n`; `None` when the connection closed
    /// before a whole answer (a call cut by the revocation it raced).
    async fn call(&self, n: usize, target: &str, edge: &str) -> anyhow::Result<Option<u16>> {
        let auth = format!("Bearer {}", self.mandate(target, edge)?);
        let resp = http::request(
            self.gateways[n].addr,
            "GET",
            "/items",
            &[
                ("authorization", auth.as_str()),
                ("x-caracal-resource", RESOURCE),
            ],
            "",
        )
        .await;
        Ok(resp.ok().map(|r| r.status))
    }

    async fn stop(self) {
        let [a, b] = self.gateways;
        a.stop().await;
        b.stop().await;
        self.co.stop().await;
        self.sts.stop().await;
    }
}

/// The throughput run: (starts answered 201, wall time, latency histogram in µs). Client
/// `i` starts sessions in start zone `i mod zones`, reusing that zone's session mandate.
async fn session_starts(
    stage: &Arc<Stage>,
    starts: u32,
    concurrency: u32,
) -> anyhow::Result<(u64, Duration, Histogram<u64>)> {
    // Warm each zone's key set and the connections before the clock starts.
    for z in &stage.start_zones {
        stage.start_in(&z.zone, &z.token, &z.app).await?;
    }
    let per_client = starts / concurrency.max(1);
    let began = Instant::now();
    let mut clients = Vec::new();
    for client in 0..concurrency {
        let stage = Arc::clone(stage);
        clients.push(tokio::spawn(async move {
            let zones = stage.start_zones.len();
            let z = stage
                .start_zones
                .get(usize::try_from(client).unwrap_or(0) % zones.max(1))
                .context("no start zone")?;
            let mut latencies = Histogram::<u64>::new(3)?;
            let mut ok = 0u64;
            for _ in 0..per_client {
                let sent = Instant::now();
                stage.start_in(&z.zone, &z.token, &z.app).await?;
                latencies.record(u64::try_from(sent.elapsed().as_micros()).unwrap_or(u64::MAX))?;
                ok += 1;
            }
            anyhow::Ok((ok, latencies))
        }));
    }
    let mut total = 0;
    let mut latencies = Histogram::<u64>::new(3)?;
    for client in clients {
        let (ok, h) = client.await??;
        total += ok;
        latencies.add(h)?;
    }
    Ok((total, began.elapsed(), latencies))
}

/// One propagation round: milliseconds from sending the terminate to the denial at each
/// gateway.
async fn propagation_round(
    stage: &Stage,
    issuer_token: &str,
    agent_token: &str,
) -> anyhow::Result<[f64; 2]> {
    let source = stage.start_session(issuer_token, ISSUER_APP).await?;
    let target = stage.start_session(agent_token, AGENT).await?;
    let resp = stage
        .co
        .call(
            issuer_token,
            "POST",
            &format!("/zones/{ZONE}/delegations"),
            Some(&json!({
                "issuer_application_id": ISSUER_APP,
                "source_session_id": source,
                "target_session_id": target,
                "receiver_application_id": AGENT,
                "scopes": ["read"],
                "resource_id": "res-echo",
                "constraints": {"ttl_seconds": 900},
            })),
            &[],
        )
        .await?;
    ensure!(resp.status == 201, "delegation answered {}", resp.status);
    let edge = resp.json()?["delegation_edge_id"]
        .as_str()
        .context("delegation_edge_id")?
        .to_owned();
    for n in 0..2 {
        let status = stage.call(n, &target, &edge).await?;
        ensure!(
            status == Some(200),
            "gateway {n} before the revocation: {status:?}"
        );
    }
    let sent = Instant::now();
    let resp = stage
        .co
        .call(
            OPERATOR_TOKEN,
            "DELETE",
            &format!("/zones/{ZONE}/agents/{target}"),
            None,
            &[],
        )
        .await?;
    ensure!(resp.status == 204, "terminate answered {}", resp.status);
    let mut denied: [Option<f64>; 2] = [None, None];
    while denied.iter().any(Option::is_none) {
        if sent.elapsed() > PROPAGATION_LIMIT {
            bail!("a gateway still forwards {PROPAGATION_LIMIT:?} after the terminate");
        }
        for (n, slot) in denied.iter_mut().enumerate() {
            if slot.is_none() && stage.call(n, &target, &edge).await? == Some(401) {
                *slot = Some(sent.elapsed().as_secs_f64() * 1000.0);
            }
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    Ok([denied[0].unwrap_or_default(), denied[1].unwrap_or_default()])
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let at = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[at.min(sorted.len() - 1)]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let redis_url = isolated_redis(args.redis_db).await?;
    let stage = Arc::new(Stage::start(&redis_url, args.zones).await?);

    let (started, wall, latencies) = session_starts(&stage, args.starts, args.concurrency).await?;
    let rate = started as f64 / wall.as_secs_f64();

    let issuer_token = stage.session_token(ISSUER_APP)?;
    let agent_token = stage.session_token(AGENT)?;
    let mut slowest = Vec::new();
    let mut each: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    for _ in 0..args.revocations {
        let [a, b] = propagation_round(&stage, &issuer_token, &agent_token).await?;
        each[0].push(a);
        each[1].push(b);
        slowest.push(a.max(b));
    }
    slowest.sort_by(f64::total_cmp);
    for list in &mut each {
        list.sort_by(f64::total_cmp);
    }

    let mut report = String::new();
    report.push_str(&format!(
        "# Coordinator benchmark\n\n\
         Loopback, one process (client, Coordinator, STS, two gateways) and Postgres on the same cores.\n\n\
         ## Session starts\n\n\
         | starts | clients | zones | wall | starts/s | p50 | p99 | max |\n| --- | --- | --- | --- | --- | --- | --- | --- |\n\
         | {started} | {} | {} | {:.2} s | **{rate:.0}** | {:.1} ms | {:.1} ms | {:.1} ms |\n\n\
         Target: ≥ 1,000/s.\n\n",
        args.concurrency,
        args.zones.max(1),
        wall.as_secs_f64(),
        latencies.value_at_quantile(0.5) as f64 / 1000.0,
        latencies.value_at_quantile(0.99) as f64 / 1000.0,
        latencies.max() as f64 / 1000.0,
    ));
    report.push_str(&format!(
        "## Revocation propagation (terminate at the Coordinator → 401 at both gateways)\n\n\
         | rounds | p50 | p95 | p99 | max |\n| --- | --- | --- | --- | --- |\n\
         | {} (slower replica) | {:.1} ms | {:.1} ms | **{:.1} ms** | {:.1} ms |\n\
         | gateway 1 | {:.1} ms | {:.1} ms | {:.1} ms | {:.1} ms |\n\
         | gateway 2 | {:.1} ms | {:.1} ms | {:.1} ms | {:.1} ms |\n\n\
         Target: p99 ≤ 100 ms over 200 revocations.\n",
        slowest.len(),
        quantile(&slowest, 0.5),
        quantile(&slowest, 0.95),
        quantile(&slowest, 0.99),
        quantile(&slowest, 1.0),
        quantile(&each[0], 0.5),
        quantile(&each[0], 0.95),
        quantile(&each[0], 0.99),
        quantile(&each[0], 1.0),
        quantile(&each[1], 0.5),
        quantile(&each[1], 0.95),
        quantile(&each[1], 0.99),
        quantile(&each[1], 1.0),
    ));
    print!("{report}");
    if let Some(out) = &args.out {
        std::fs::write(out, &report).with_context(|| format!("write {}", out.display()))?;
    }
    let stage = Arc::try_unwrap(stage).map_err(|_shared| anyhow::anyhow!("stage still shared"))?;
    stage.stop().await;
    let _flushed = isolated_redis(args.redis_db).await?;
    Ok(())
}
