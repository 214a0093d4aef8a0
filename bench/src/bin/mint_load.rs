//! `mint_load`: load generator for `POST /oauth/2/token` (bootstrap or delegated mints).
//!
//! Two modes, both over keep-alive HTTP/1.1 connections opened before the clock starts:
//!
//! - **closed loop** (default): `--connections N` workers each send the next request as
//!   soon as the previous answer arrives, for `--duration` seconds: maximum throughput.
//! - **open loop** (`--rate R`): request *i* is due at `start + i/R`; whichever worker is
//!   free takes the next due slot, sleeps until its time and sends. Latency is measured
//!   from the *scheduled* time, so a stalled server is charged for the requests it
//!   delayed (no coordinated omission); `service_us` is measured from the actual send.
//!   Tokio's timer has 1 ms granularity, so a send may start up to ~1 ms after its slot;
//!   that slack is included in `latency_us` (compare with `service_us`).
//!
//! Every response must be a 200 whose body carries `access_token`; anything else is
//! counted by status (`statuses`), I/O failures under `io_errors`, and the run is
//! `flagged`. One JSON line goes to stdout.
//!
//! `--watch name=pid[,pid]` (or `name=+pid` to add the direct children, e.g. the
//! postmaster's backends) samples those processes' CPU time over the measured window and
//! reports CPU microseconds per successful mint. `foreign_util` is the CPU (in CPUs) that
//! the rest of the machine used during the run: other people's work on a shared machine;
//! `steal_util` the CPU the hypervisor took away from this virtual machine. `--timeline`
//! adds `[answers, worst latency µs]` for each second of the run.

use bench::tally::Tally;
use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use anyhow::Context as _;
use bench::{
    MintKind,
    procstat::{self, Watch},
};
use bytes::Bytes;
use clap::Parser;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt as _, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::time::Instant;

#[derive(Debug, Parser)]
#[command(about = "Load generator for STS token exchanges; prints one JSON line")]
struct Args {
    /// STS address.
    #[arg(long, default_value = "127.0.0.1:8080")]
    addr: SocketAddr,
    /// bootstrap or delegated.
    #[arg(long)]
    kind: MintKind,
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
    /// Also report, per second of the run, the answers and the worst latency (to find
    /// periodic stalls).
    #[arg(long)]
    timeline: bool,
    /// Free text copied into the result (run number, series name).
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
    let result = runtime.block_on(run(&args))?;
    println!("{result}");
    Ok(())
}

/// One keep-alive connection, reopened after an I/O failure.
struct Conn {
    addr: SocketAddr,
    sender: Option<SendRequest<Full<Bytes>>>,
}

impl Conn {
    async fn open(addr: SocketAddr) -> anyhow::Result<SendRequest<Full<Bytes>>> {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        stream.set_nodelay(true)?;
        let (sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            let _closed = connection.await;
        });
        Ok(sender)
    }

    /// Sends one request; `Ok((status, body))` or an I/O error (the connection is dropped
    /// and reopened by the next call).
    async fn send(&mut self, body: &Bytes) -> anyhow::Result<(u16, Bytes)> {
        let mut sender = match self.sender.take() {
            Some(sender) => sender,
            None => Self::open(self.addr).await?,
        };
        sender.ready().await?;
        let request = http::Request::builder()
            .method(http::Method::POST)
            .uri("/oauth/2/token")
            .header(http::header::HOST, self.addr.to_string())
            .header(
                http::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .body(Full::new(body.clone()))?;
        let response = sender.send_request(request).await?;
        let status = response.status().as_u16();
        let bytes = response.into_body().collect().await?.to_bytes();
        self.sender = Some(sender);
        Ok((status, bytes))
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
    body: Bytes,
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
        let sent = Instant::now();
        let outcome = conn.send(&body).await;
        let done = Instant::now();
        tally.last_done = Some(done);
        match outcome {
            Ok((200, bytes)) if contains(&bytes, b"\"access_token\"") => {
                tally.ok += 1;
                *tally.statuses.entry(200).or_default() += 1;
                let latency = micros(done.duration_since(scheduled));
                tally.latency.saturating_record(latency);
                tally.second(start, done, latency);
                tally
                    .service
                    .saturating_record(micros(done.duration_since(sent)));
            }
            Ok((status, bytes)) => {
                *tally.statuses.entry(status).or_default() += 1;
                if status == 200 {
                    tally.bad_bodies += 1;
                }
                tally.error(format!("{status} {}", String::from_utf8_lossy(&bytes)));
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
    haystack.windows(needle.len()).any(|w| w == needle)
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

async fn run(args: &Args) -> anyhow::Result<Value> {
    let body = Bytes::from(args.kind.body());
    // Open every connection before the clock starts.
    let mut conns = Vec::with_capacity(args.connections);
    for _ in 0..args.connections {
        conns.push(Conn {
            addr: args.addr,
            sender: Some(Conn::open(args.addr).await?),
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
            body.clone(),
            pace.clone(),
            start,
            deadline,
        )));
    }
    let mut total = Tally::new()?;
    for handle in handles {
        total.merge(handle.await??)?;
    }
    let end = total.last_done.unwrap_or_else(Instant::now).max(deadline);
    let elapsed = end.duration_since(start).as_secs_f64();
    let self_after = procstat::self_ticks();
    let machine_after = procstat::machine_busy_ticks();
    let steal_after = procstat::machine_steal_ticks();
    let after: Vec<u64> = args.watch.iter().map(Watch::ticks).collect();

    let ok = total.ok;
    let per_mint = |ticks: u64| {
        if ok == 0 {
            Value::Null
        } else {
            json!((procstat::ticks_to_us(ticks) as f64 / ok as f64 * 10.0).round() / 10.0)
        }
    };
    let cpu_entry = |ticks: u64| {
        json!({
            "cpu_s": procstat::ticks_to_us(ticks) as f64 / 1e6,
            "util": (procstat::ticks_to_us(ticks) as f64 / 1e6 / elapsed * 1000.0).round() / 1000.0,
            "us_per_mint": per_mint(ticks),
        })
    };
    let mut cpu = serde_json::Map::new();
    for ((watch, b), a) in args.watch.iter().zip(&before).zip(&after) {
        cpu.insert(watch.name.clone(), cpu_entry(a.saturating_sub(*b)));
    }
    let loadgen = self_after.saturating_sub(self_before);
    cpu.insert("loadgen".to_owned(), cpu_entry(loadgen));
    // Everything else the machine did meanwhile (other users' builds and benchmarks): a
    // run with a large share here was measured on a loaded machine.
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
        flags.push("200 without access_token".to_owned());
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
    Ok(json!({
        "label": args.label,
        "kind": args.kind.name(),
        "mode": if args.rate.is_some() { "open" } else { "closed" },
        "connections": args.connections,
        "duration_s": args.duration,
        "elapsed_s": (elapsed * 1000.0).round() / 1000.0,
        "target_rate": args.rate,
        "requests": requests,
        "ok": ok,
        "throughput": (throughput * 10.0).round() / 10.0,
        "latency_us": percentiles(&total.latency),
        "service_us": percentiles(&total.service),
        "statuses": total.statuses,
        "io_errors": total.io_errors,
        "errors": errors,
        "sample_error": total.sample_error,
        "flagged": !flags.is_empty(),
        "flags": flags,
        "cpu": cpu,
        "foreign_util": (foreign_util * 1000.0).round() / 1000.0,
        "steal_util": (steal_util * 1000.0).round() / 1000.0,
        "timeline": if args.timeline {
            json!(total.seconds.iter().map(|(n, max)| json!([n, max])).collect::<Vec<_>>())
        } else {
            Value::Null
        },
    }))
}
