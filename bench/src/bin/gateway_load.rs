//! `gateway_load`: load generator for the gateway benchmark (`bench/load/gateway.sh`).
//! One JSON line goes to stdout per invocation.
//!
//! Requests are `GET <path>` (default `/items`) with `Authorization: Bearer <mandate>` and
//! `X-Caracal-Resource`, over keep-alive HTTP/1.1 connections opened before the clock
//! starts. Every target gets the same request bytes: the direct upstream, nginx and the
//! passthrough proxy just forward the headers.
//!
//! - **Mandates** (`--scenario FILE`, written by `gateway_setup`): before the run, the
//!   generator signs one fresh ES256 gateway mandate per request (new `jti`, `iat` now,
//!   `exp` = now + duration + 300 s) with the zone key of the scenario and keeps them in
//!   memory; the clock starts after. `--mandates N` sizes the pool (default for the open
//!   loop: rate × duration + connections; the closed loop needs it). When the pool runs out
//!   the run ends there; its figures cover the time until the last answer and the result
//!   says `mandates_exhausted`. `--reuse-token` signs one mandate and sends it every time
//!   (for targets that do not verify). `--fresh-records K` names the authority records
//!   `bench-rec-K`, `bench-rec-K+1`, … (one per mandate, as every STS mint creates its own)
//!   instead of the scenario's single record.
//! - **Closed loop** (default): `--connections N` workers each send the next request as
//!   soon as the previous answer arrives, for `--duration` seconds: maximum throughput.
//! - **Open loop** (`--rate R`): request *i* is due at `start + i/R`; whichever worker is
//!   free takes the next due slot, sleeps until its time and sends. Latency is measured
//!   from the *scheduled* time (no coordinated omission); `service_us` from the actual
//!   send. Tokio's timer has 1 ms granularity, so a send may leave up to ~1 ms after its
//!   slot; that slack is in `latency_us` (compare `service_us`).
//! - **Idle connections** (`--idle N`): opens N keep-alive connections (one `GET
//!   --idle-path` each, 256 at a time), holds them `--hold` seconds sampling the resident
//!   memory (`VmRSS`) of `--rss` every second together with how many connections the
//!   server has not closed, then closes them and samples once more.
//!
//! A response counts as a success when it is a 200 whose body contains `--expect`
//! (default `caracal-bench-ok`, the upstream stub's body); anything else is counted by
//! status, I/O failures under `io_errors`, and the run is `flagged`. A connection the
//! server closed between two requests is reopened and counted in `reconnects`.
//!
//! `--watch name=pid[,pid]` (or `name=+pid` to add the direct children) reports each
//! group's CPU per successful request over the measured window, as `mint_load` does, with
//! `foreign_util` (the rest of the machine) and `steal_util` (the hypervisor).

use bench::tally::Tally;
use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use anyhow::Context as _;
use bench::procstat::{self, Watch};
use bytes::Bytes;
use clap::Parser;
use control_crypto::ZoneSigningKey;
use hdrhistogram::Histogram;
use http::HeaderValue;
use http_body_util::{BodyExt as _, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::time::Instant;

#[derive(Debug, Parser)]
#[command(about = "Load generator for the gateway benchmark; prints one JSON line")]
struct Args {
    /// Target address (gateway, proxy or upstream).
    #[arg(long)]
    addr: SocketAddr,
    /// Request path.
    #[arg(long, default_value = "/items")]
    path: String,
    /// The scenario file of `gateway_setup` (mandate claims and signing key); needed
    /// except in idle mode.
    #[arg(long)]
    scenario: Option<PathBuf>,
    /// `X-Caracal-Resource` (default: the scenario's governed resource).
    #[arg(long)]
    resource: Option<String>,
    /// Mandates to sign before the run (one per request).
    #[arg(long)]
    mandates: Option<usize>,
    /// Sign one mandate and send it with every request.
    #[arg(long)]
    reuse_token: bool,
    /// Give each mandate its own authority record, starting at `bench-rec-<K>`.
    #[arg(long, value_name = "K")]
    fresh_records: Option<u64>,
    /// Body marker of a successful answer.
    #[arg(long, default_value = "caracal-bench-ok")]
    expect: String,
    /// Keep-alive connections (closed loop: the concurrency; open loop: the most requests
    /// in flight at once).
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Seconds of load.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Open loop at this many requests per second (default: closed loop).
    #[arg(long)]
    rate: Option<f64>,
    /// Worker threads (0: a current-thread runtime, for a load generator pinned to one CPU).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// A process group whose CPU time is reported: name=pid[,pid] or name=+pid (with its
    /// direct children).
    #[arg(long)]
    watch: Vec<Watch>,
    /// Also report, per second of the run, the answers and the worst latency.
    #[arg(long)]
    timeline: bool,
    /// Idle-connection mode: open this many keep-alive connections and hold them.
    #[arg(long)]
    idle: Option<usize>,
    /// Idle mode: seconds to hold the connections.
    #[arg(long, default_value_t = 10)]
    hold: u64,
    /// Idle mode: the path of the one request sent on each connection.
    #[arg(long, default_value = "/health")]
    idle_path: String,
    /// Idle mode: the processes whose resident memory is sampled (name=pid or name=+pid).
    #[arg(long)]
    rss: Option<Watch>,
    /// Target name copied into the result (`direct`, `nginx`, `passthrough`, `governed`, …).
    #[arg(long, default_value = "")]
    target: String,
    /// Phase name copied into the result (`pinned`, `whole machine`).
    #[arg(long, default_value = "")]
    phase: String,
    /// Round number copied into the result (pairs the targets of one round).
    #[arg(long, default_value_t = 0)]
    round: u32,
    /// Free text copied into the result (the series name).
    #[arg(long, default_value = "")]
    label: String,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(args.connections > 0, "--connections must be positive");
    anyhow::ensure!(
        args.duration > 0.0 && args.duration.is_finite(),
        "--duration must be positive"
    );
    if let Some(rate) = args.rate {
        anyhow::ensure!(rate > 0.0 && rate.is_finite(), "--rate must be positive");
    }
    let runtime = if args.threads == 0 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(args.threads)
            .enable_all()
            .build()?
    };
    let result = match args.idle {
        Some(n) => runtime.block_on(idle(&args, n))?,
        None => runtime.block_on(run(&args))?,
    };
    println!("{result}");
    Ok(())
}

/// What a mandate carries, from the scenario file.
struct Scenario {
    raw: Value,
    key: ZoneSigningKey,
    kid: String,
}

impl Scenario {
    fn load(path: &std::path::Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| path.display().to_string())?;
        let raw: Value = serde_json::from_str(&text).context("scenario")?;
        let der = hex::decode(
            raw["signing_key_pkcs8_hex"]
                .as_str()
                .context("scenario: signing_key_pkcs8_hex")?,
        )?;
        let key = ZoneSigningKey::from_pkcs8_der(&der).context("scenario: signing key")?;
        let kid = raw["kid"].as_str().context("scenario: kid")?.to_owned();
        Ok(Self { raw, key, kid })
    }

    fn text(&self, name: &str) -> anyhow::Result<&str> {
        self.raw[name]
            .as_str()
            .with_context(|| format!("scenario: {name}"))
    }

    /// One signed gateway mandate (`Bearer …` header value) naming `sid`.
    fn mandate(&self, resource: &str, sid: &str, exp: u64) -> anyhow::Result<HeaderValue> {
        let now = unix_now();
        let issuer = self.text("issuer")?;
        let claims = json!({
            "iss": issuer, "sub": self.text("client_id")?, "aud": [issuer],
            "exp": exp, "iat": now, "jti": uuid::Uuid::now_v7().to_string(),
            "zone_id": self.text("zone_id")?, "client_id": self.text("client_id")?,
            "scope": self.text("scope")?, "sid": sid, "root_sid": sid, "use": "gateway",
            "sub_type": "application", "target": [resource],
            "agent_session_id": self.text("agent_session_id")?,
            "delegation_edge_id": self.text("delegation_edge_id")?,
        });
        let token = self
            .key
            .sign_jwt(&self.kid, &serde_json::to_vec(&claims)?)?;
        Ok(HeaderValue::from_str(&format!("Bearer {token}"))?)
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The mandates of one run, each handed out once.
struct Pool {
    tokens: Vec<HeaderValue>,
    next: AtomicUsize,
    reuse: bool,
}

impl Pool {
    fn take(&self) -> Option<HeaderValue> {
        if self.reuse {
            return self.tokens.first().cloned();
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        self.tokens.get(i).cloned()
    }

    fn exhausted(&self) -> bool {
        !self.reuse && self.next.load(Ordering::Relaxed) >= self.tokens.len()
    }
}

fn sign_pool(args: &Args, scenario: &Scenario, resource: &str) -> anyhow::Result<Pool> {
    let count = if args.reuse_token {
        1
    } else {
        match (args.mandates, args.rate) {
            (Some(n), _) => n,
            (None, Some(rate)) => (rate * args.duration).ceil() as usize + args.connections,
            (None, None) => anyhow::bail!("the closed loop needs --mandates or --reuse-token"),
        }
    };
    let exp = unix_now() + args.duration.ceil() as u64 + 300;
    let default_sid = scenario.text("sid")?.to_owned();
    let mut tokens = Vec::with_capacity(count);
    for i in 0..count {
        let sid = match args.fresh_records {
            Some(first) => format!(
                "{}{}",
                scenario.text("record_prefix")?,
                first + u64::try_from(i).unwrap_or(u64::MAX)
            ),
            None => default_sid.clone(),
        };
        tokens.push(scenario.mandate(resource, &sid, exp)?);
    }
    Ok(Pool {
        tokens,
        next: AtomicUsize::new(0),
        reuse: args.reuse_token,
    })
}

/// The fixed part of every request.
struct Shape {
    addr: SocketAddr,
    path: String,
    host: HeaderValue,
    resource: HeaderValue,
    expect: Vec<u8>,
}

/// One keep-alive connection, reopened when the server closed it.
struct Conn {
    sender: Option<SendRequest<Full<Bytes>>>,
}

async fn open(addr: SocketAddr) -> anyhow::Result<SendRequest<Full<Bytes>>> {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    stream.set_nodelay(true)?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _closed = connection.await;
    });
    Ok(sender)
}

impl Conn {
    /// Sends one request; `Ok((status, body))` or an I/O error (the connection is dropped
    /// and reopened by the next call). The second member says whether the connection had
    /// to be reopened first.
    async fn send(
        &mut self,
        shape: &Shape,
        bearer: HeaderValue,
    ) -> anyhow::Result<((u16, Bytes), bool)> {
        let mut reopened = false;
        let mut sender = match self.sender.take() {
            Some(mut sender) => {
                if sender.ready().await.is_err() {
                    reopened = true;
                    open(shape.addr).await?
                } else {
                    sender
                }
            }
            None => {
                reopened = true;
                open(shape.addr).await?
            }
        };
        sender.ready().await?;
        let request = http::Request::builder()
            .method(http::Method::GET)
            .uri(shape.path.as_str())
            .header(http::header::HOST, shape.host.clone())
            .header(http::header::AUTHORIZATION, bearer)
            .header("x-caracal-resource", shape.resource.clone())
            .body(Full::new(Bytes::new()))?;
        let response = sender.send_request(request).await?;
        let status = response.status().as_u16();
        let bytes = response.into_body().collect().await?.to_bytes();
        self.sender = Some(sender);
        Ok(((status, bytes), reopened))
    }
}

/// How a worker paces itself.
#[derive(Clone)]
enum Pace {
    /// Back to back until the deadline.
    Closed,
    /// Take the next due slot from the shared counter.
    Open { next: Arc<AtomicU64>, rate: f64 },
}

async fn worker(
    mut conn: Conn,
    shape: Arc<Shape>,
    pool: Arc<Pool>,
    pace: Pace,
    start: Instant,
    deadline: Instant,
) -> anyhow::Result<Tally> {
    let mut tally = Tally::new()?;
    loop {
        let scheduled = match &pace {
            Pace::Closed => {
                let now = Instant::now();
                if now >= deadline {
                    break;
                }
                now
            }
            Pace::Open { next, rate } => {
                let slot = next.fetch_add(1, Ordering::Relaxed);
                let due = start + Duration::from_secs_f64(slot as f64 / rate);
                if due >= deadline {
                    break;
                }
                tokio::time::sleep_until(due).await;
                due
            }
        };
        let Some(bearer) = pool.take() else {
            break;
        };
        let sent = Instant::now();
        let outcome = conn.send(&shape, bearer).await;
        let done = Instant::now();
        tally.last_done = Some(done);
        match outcome {
            Ok(((status, bytes), reopened)) => {
                if reopened {
                    tally.reconnects += 1;
                }
                *tally.statuses.entry(status).or_default() += 1;
                if status == 200 && contains(&bytes, &shape.expect) {
                    tally.ok += 1;
                    let latency = micros(done.duration_since(scheduled));
                    tally.latency.saturating_record(latency);
                    tally.second(start, done, latency);
                    tally
                        .service
                        .saturating_record(micros(done.duration_since(sent)));
                } else {
                    if status == 200 {
                        tally.bad_bodies += 1;
                    }
                    tally.error(format!("{status} {}", String::from_utf8_lossy(&bytes)));
                }
            }
            Err(error) => {
                tally.io_errors += 1;
                tally.error(format!("io: {error:#}"));
                // Do not spin on a refused connection.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    Ok(tally)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

fn percentiles(h: &Histogram<u64>) -> Value {
    if h.is_empty() {
        return Value::Null;
    }
    json!({
        "p50": h.value_at_quantile(0.50),
        "p90": h.value_at_quantile(0.90),
        "p99": h.value_at_quantile(0.99),
        "p999": h.value_at_quantile(0.999),
        "max": h.max(),
        "mean": (h.mean() * 10.0).round() / 10.0,
    })
}

fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

async fn run(args: &Args) -> anyhow::Result<Value> {
    let scenario = Scenario::load(args.scenario.as_deref().context("--scenario is needed")?)?;
    let resource = match &args.resource {
        Some(r) => r.clone(),
        None => scenario.text("resource")?.to_owned(),
    };
    let signing = Instant::now();
    let pool = Arc::new(sign_pool(args, &scenario, &resource)?);
    let signing_s = signing.elapsed().as_secs_f64();
    let shape = Arc::new(Shape {
        addr: args.addr,
        path: args.path.clone(),
        host: HeaderValue::from_str(&args.addr.to_string())?,
        resource: HeaderValue::from_str(&resource)?,
        expect: args.expect.as_bytes().to_vec(),
    });
    // Open every connection before the clock starts.
    let mut conns = Vec::with_capacity(args.connections);
    for _ in 0..args.connections {
        conns.push(Conn {
            sender: Some(open(args.addr).await?),
        });
    }
    let pace = match args.rate {
        None => Pace::Closed,
        Some(rate) => Pace::Open {
            next: Arc::new(AtomicU64::new(0)),
            rate,
        },
    };
    let before: Vec<u64> = args.watch.iter().map(Watch::ticks).collect();
    let self_before = procstat::self_ticks();
    let machine_before = procstat::machine_busy_ticks();
    let steal_before = procstat::machine_steal_ticks();
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(args.duration);
    let mut handles = Vec::with_capacity(conns.len());
    for conn in conns {
        handles.push(tokio::spawn(worker(
            conn,
            Arc::clone(&shape),
            Arc::clone(&pool),
            pace.clone(),
            start,
            deadline,
        )));
    }
    let mut total = Tally::new()?;
    for handle in handles {
        total.merge(handle.await??)?;
    }
    let exhausted = pool.exhausted();
    // A run cut short by the mandate pool is measured until its last answer.
    let end = match total.last_done {
        Some(last) if exhausted => last,
        Some(last) => last.max(deadline),
        None => Instant::now().max(deadline),
    };
    let elapsed = end.duration_since(start).as_secs_f64();
    let self_after = procstat::self_ticks();
    let machine_after = procstat::machine_busy_ticks();
    let steal_after = procstat::machine_steal_ticks();
    let after: Vec<u64> = args.watch.iter().map(Watch::ticks).collect();

    let ok = total.ok;
    let per_request = |ticks: u64| {
        if ok == 0 {
            Value::Null
        } else {
            json!((procstat::ticks_to_us(ticks) as f64 / ok as f64 * 10.0).round() / 10.0)
        }
    };
    let cpu_entry = |ticks: u64| {
        json!({
            "cpu_s": procstat::ticks_to_us(ticks) as f64 / 1e6,
            "util": round3(procstat::ticks_to_us(ticks) as f64 / 1e6 / elapsed),
            "us_per_request": per_request(ticks),
        })
    };
    let mut cpu = serde_json::Map::new();
    for ((watch, b), a) in args.watch.iter().zip(&before).zip(&after) {
        cpu.insert(watch.name.clone(), cpu_entry(a.saturating_sub(*b)));
    }
    let loadgen = self_after.saturating_sub(self_before);
    cpu.insert("loadgen".to_owned(), cpu_entry(loadgen));
    let watched: u64 = after
        .iter()
        .zip(&before)
        .map(|(a, b)| a.saturating_sub(*b))
        .sum::<u64>()
        + loadgen;
    let foreign = machine_after
        .saturating_sub(machine_before)
        .saturating_sub(watched);
    let foreign_util = procstat::ticks_to_us(foreign) as f64 / 1e6 / elapsed;
    let steal_util =
        procstat::ticks_to_us(steal_after.saturating_sub(steal_before)) as f64 / 1e6 / elapsed;

    let answered: u64 = total.statuses.values().sum();
    let requests = answered + total.io_errors;
    let errors = requests - ok;
    let non_ok = answered - ok - total.bad_bodies;
    let throughput = ok as f64 / elapsed;
    let mut flags = Vec::new();
    if non_ok > 0 {
        flags.push("non-200 responses".to_owned());
    }
    if total.bad_bodies > 0 {
        flags.push("200 without the stub's body".to_owned());
    }
    if total.io_errors > 0 {
        flags.push("i/o errors".to_owned());
    }
    if let Some(rate) = args.rate
        && throughput < rate * 0.98
    {
        flags.push(format!(
            "rate not reached ({throughput:.0}/s of {rate:.0}/s)"
        ));
    }
    if exhausted && args.rate.is_some() {
        flags.push("mandates exhausted".to_owned());
    }
    Ok(json!({
        "label": args.label,
        "target": args.target,
        "phase": args.phase,
        "round": args.round,
        "mode": if args.rate.is_some() { "open" } else { "closed" },
        "resource": resource,
        "connections": args.connections,
        "duration_s": args.duration,
        "elapsed_s": round3(elapsed),
        "target_rate": args.rate,
        "mandates": if args.reuse_token { Value::from("reused") } else { Value::from(pool.tokens.len()) },
        "fresh_records": args.fresh_records.is_some(),
        "signing_s": round3(signing_s),
        "mandates_exhausted": exhausted,
        "requests": requests,
        "ok": ok,
        "throughput": (throughput * 10.0).round() / 10.0,
        "latency_us": percentiles(&total.latency),
        "service_us": percentiles(&total.service),
        "statuses": total.statuses,
        "io_errors": total.io_errors,
        "reconnects": total.reconnects,
        "errors": errors,
        "sample_error": total.sample_error,
        "flagged": !flags.is_empty(),
        "flags": flags,
        "cpu": cpu,
        "foreign_util": round3(foreign_util),
        "steal_util": round3(steal_util),
        "timeline": if args.timeline {
            json!(total.seconds.iter().map(|(n, max)| json!([n, max])).collect::<Vec<_>>())
        } else {
            Value::Null
        },
    }))
}

/// `VmRSS` in KiB of the group (children included for `name=+pid`).
fn rss_kb(watch: &Watch) -> u64 {
    let mut pids: Vec<String> = watch.pids.iter().map(u32::to_string).collect();
    if watch.children
        && let Ok(entries) = std::fs::read_dir("/proc")
    {
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if !name.bytes().all(|b| b.is_ascii_digit()) {
                continue;
            }
            if let Some((ppid, _)) = procstat::stat(name)
                && watch.pids.contains(&ppid)
            {
                pids.push(name.to_owned());
            }
        }
    }
    pids.iter()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/status")).ok())
        .filter_map(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .sum()
}

/// Idle mode: N keep-alive connections held open while the server's memory is sampled.
async fn idle(args: &Args, n: usize) -> anyhow::Result<Value> {
    let rss = args.rss.clone().context("--idle needs --rss")?;
    let rss_before = rss_kb(&rss);
    let closed = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(tokio::sync::Semaphore::new(256));
    let mut tasks = tokio::task::JoinSet::new();
    let host = HeaderValue::from_str(&args.addr.to_string())?;
    let opening = Instant::now();
    for _ in 0..n {
        let gate = Arc::clone(&gate);
        let closed = Arc::clone(&closed);
        let addr = args.addr;
        let path = args.idle_path.clone();
        let host = host.clone();
        tasks.spawn(async move {
            let _permit = gate.acquire_owned().await?;
            let stream = tokio::net::TcpStream::connect(addr).await?;
            stream.set_nodelay(true)?;
            let (mut sender, connection) =
                hyper::client::conn::http1::handshake::<_, Full<Bytes>>(TokioIo::new(stream))
                    .await?;
            tokio::spawn(async move {
                let _closed = connection.await;
                closed.fetch_add(1, Ordering::Relaxed);
            });
            let request = http::Request::builder()
                .uri(path.as_str())
                .header(http::header::HOST, host)
                .body(Full::new(Bytes::new()))?;
            let response = sender.send_request(request).await?;
            let status = response.status().as_u16();
            let _body = response.into_body().collect().await?;
            anyhow::ensure!(status == 200, "status {status}");
            Ok::<_, anyhow::Error>(sender)
        });
    }
    let mut held = Vec::with_capacity(n);
    let mut failed = 0_u64;
    let mut sample_error = None;
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(Ok(sender)) => held.push(sender),
            Ok(Err(error)) => {
                failed += 1;
                sample_error.get_or_insert_with(|| format!("{error:#}"));
            }
            Err(error) => {
                failed += 1;
                sample_error.get_or_insert_with(|| error.to_string());
            }
        }
    }
    let open_s = opening.elapsed().as_secs_f64();
    let opened = held.len();
    let mut samples = Vec::new();
    let mut rss_max = 0;
    let hold_start = Instant::now();
    for second in 0..=args.hold {
        tokio::time::sleep_until(hold_start + Duration::from_secs(second)).await;
        let kb = rss_kb(&rss);
        rss_max = rss_max.max(kb);
        let still_open = opened.saturating_sub(closed.load(Ordering::Relaxed));
        samples.push(json!([second, kb, still_open]));
    }
    let open_at_end = opened.saturating_sub(closed.load(Ordering::Relaxed));
    drop(held);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_after = rss_kb(&rss);
    Ok(json!({
        "label": args.label,
        "target": args.target,
        "phase": args.phase,
        "mode": "idle",
        "connections": n,
        "opened": opened,
        "failed": failed,
        "open_s": round3(open_s),
        "hold_s": args.hold,
        "open_at_end": open_at_end,
        "rss_kb": {
            "before": rss_before,
            "max": rss_max,
            "after_close": rss_after,
        },
        "samples": samples,
        "sample_error": sample_error,
        "flagged": failed > 0 || open_at_end < opened,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scenario(key: &ZoneSigningKey) -> Scenario {
        let raw = json!({
            "issuer": "http://sts.bench.invalid", "zone_id": "bench", "client_id": "agent-app",
            "sid": "bench-record", "record_prefix": "bench-rec-", "agent_session_id": "s-target",
            "delegation_edge_id": "e1", "scope": "read", "resource": "resource://echo",
        });
        Scenario {
            raw,
            key: key.clone(),
            kid: "kid-1".to_owned(),
        }
    }

    #[test]
    fn a_mandate_verifies_and_carries_the_gateway_claims() {
        let key = ZoneSigningKey::generate();
        let s = scenario(&key);
        let header = s
            .mandate("resource://echo", "bench-rec-7", 4_000_000_000)
            .unwrap();
        let token = header.to_str().unwrap().strip_prefix("Bearer ").unwrap();
        let jwt = control_crypto::UnverifiedJwt::parse(token).unwrap();
        assert_eq!(jwt.header().kid.as_deref(), Some("kid-1"));
        let claims: Value =
            serde_json::from_slice(&jwt.verify(&key.public_key()).unwrap()).unwrap();
        assert_eq!(claims["use"], "gateway");
        assert_eq!(claims["aud"], json!(["http://sts.bench.invalid"]));
        assert_eq!(claims["sid"], "bench-rec-7");
        assert_eq!(claims["root_sid"], "bench-rec-7");
        assert_eq!(claims["delegation_edge_id"], "e1");
        assert_eq!(claims["exp"], 4_000_000_000_u64);
    }

    #[test]
    fn every_mandate_has_its_own_jti_and_the_pool_hands_each_out_once() {
        let key = ZoneSigningKey::generate();
        let s = scenario(&key);
        let a = s.mandate("resource://echo", "r", 4_000_000_000).unwrap();
        let b = s.mandate("resource://echo", "r", 4_000_000_000).unwrap();
        assert_ne!(a, b);
        let pool = Pool {
            tokens: vec![a.clone(), b.clone()],
            next: AtomicUsize::new(0),
            reuse: false,
        };
        assert_eq!(pool.take(), Some(a.clone()));
        assert!(!pool.exhausted());
        assert_eq!(pool.take(), Some(b));
        assert!(pool.exhausted());
        assert_eq!(pool.take(), None);
        let reused = Pool {
            tokens: vec![a.clone()],
            next: AtomicUsize::new(0),
            reuse: true,
        };
        assert_eq!(reused.take(), Some(a.clone()));
        assert_eq!(reused.take(), Some(a));
        assert!(!reused.exhausted());
    }

    #[test]
    fn reads_its_own_resident_memory() {
        let me: Watch = format!("me={}", std::process::id()).parse().unwrap();
        assert!(rss_kb(&me) > 0);
    }
}
