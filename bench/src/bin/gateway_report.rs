//! `gateway_report FILE.jsonl [FOREIGN_MAX] [RSS_CONNECTIONS]`: summarises the
//! `gateway_load` result lines of one `bench/load/gateway.sh` run as Markdown.
//!
//! Series are grouped by `label` in order of first appearance (labels starting with
//! `warmup` are skipped). Each figure is the median of the runs with the min–max. Figures
//! that compare two targets (added latency, throughput ratio) are computed **per round**
//! (the targets of one round ran back to back) and then summarised, so a slow period of the
//! machine affects both sides of a pair.
//!
//! The targets' table covers issue 5 (governed against direct and nginx) and, when the run
//! has the `governed+plugin` series, issue 6: its maximum throughput against `governed`'s
//! of the same round (≥ 0.80) and, for information, the p50 latency the plugin adds at the
//! fixed rate.
//!
//! Runs during which the rest of the machine used more than `FOREIGN_MAX` CPUs (default
//! 0.1; `foreign_util + steal_util`) are left out of the medians and of the pairs, as long as
//! at least three clean runs (or pairs) remain; otherwise all are used and the table says so.

use std::collections::BTreeMap;

use anyhow::Context as _;
use serde_json::Value;

/// The targets in ablation order.
const ORDER: [&str; 7] = [
    "direct",
    "nginx",
    "passthrough",
    "governed",
    "governed+plugin",
    "governed+rl",
    "governed+fresh",
];

/// Issue 6: governed throughput with one plugin, as a share of governed throughput without.
const PLUGIN_THROUGHPUT_SHARE: f64 = 0.80;

fn main() -> anyhow::Result<()> {
    let path = std::env::args()
        .nth(1)
        .context("usage: gateway_report RESULTS.jsonl [FOREIGN_MAX] [RSS_CONNECTIONS]")?;
    let foreign_max: f64 = match std::env::args().nth(2) {
        Some(raw) => raw.parse().context("FOREIGN_MAX must be a number")?,
        None => 0.1,
    };
    let rss_connections: u64 = match std::env::args().nth(3) {
        Some(raw) => raw.parse().context("RSS_CONNECTIONS must be a number")?,
        None => 10_000,
    };
    let text = std::fs::read_to_string(&path).with_context(|| path.clone())?;
    let runs: Vec<Value> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|r| !s(r, "label").starts_with("warmup"))
        .collect();
    let report = Report::new(runs, foreign_max);
    report.headline(rss_connections);
    report.throughput();
    report.fixed_rate();
    report.cpu();
    report.idle();
    report.errors();
    Ok(())
}

fn s<'a>(run: &'a Value, key: &str) -> &'a str {
    run[key].as_str().unwrap_or("")
}

/// CPUs taken by others during a run: other processes plus hypervisor steal.
fn disturbance(run: &Value) -> f64 {
    run["foreign_util"].as_f64().unwrap_or(0.0) + run["steal_util"].as_f64().unwrap_or(0.0)
}

fn get(run: &Value, path: &[&str]) -> Option<f64> {
    let mut v = run;
    for key in path {
        v = v.get(key)?;
    }
    v.as_f64()
}

fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(f64::total_cmp);
    v
}

fn median(sorted: &[f64]) -> Option<f64> {
    match sorted.len() {
        0 => None,
        n if n % 2 == 1 => sorted.get(n / 2).copied(),
        n => Some((sorted.get(n / 2 - 1)? + sorted.get(n / 2)?) / 2.0),
    }
}

/// `median [min–max]` with `decimals`, or `–`.
fn summary(values: Vec<f64>, decimals: usize) -> String {
    let v = sorted(values);
    match (median(&v), v.first(), v.last()) {
        (Some(m), Some(lo), Some(hi)) => {
            format!("{m:.decimals$} [{lo:.decimals$}–{hi:.decimals$}]")
        }
        _ => "–".to_owned(),
    }
}

fn median_text(values: Vec<f64>, decimals: usize) -> String {
    median(&sorted(values)).map_or("–".to_owned(), |m| format!("{m:.decimals$}"))
}

/// A series: the runs of one label.
struct Series {
    label: String,
    /// Every run.
    all: Vec<Value>,
    /// The runs the medians use.
    used: Vec<Value>,
    /// Too few clean runs: all are used.
    fallback: bool,
}

impl Series {
    fn first(&self) -> Option<&Value> {
        self.all.first()
    }

    fn values(&self, path: &[&str]) -> Vec<f64> {
        self.used.iter().filter_map(|r| get(r, path)).collect()
    }

    fn used_text(&self) -> String {
        if self.fallback {
            format!(
                "{} / {} (too few clean runs: all used)",
                self.used.len(),
                self.all.len()
            )
        } else {
            format!("{} / {}", self.used.len(), self.all.len())
        }
    }

    fn flagged(&self) -> usize {
        self.all.iter().filter(|r| r["flagged"] == true).count()
    }

    fn errors(&self) -> u64 {
        self.all
            .iter()
            .map(|r| r["errors"].as_u64().unwrap_or(0))
            .sum()
    }

    fn foreign(&self) -> String {
        let v = sorted(self.all.iter().map(disturbance).collect());
        match (median(&v), v.last()) {
            (Some(m), Some(hi)) => format!("{m:.2} [{hi:.2}]"),
            _ => "–".to_owned(),
        }
    }
}

struct Report {
    series: Vec<Series>,
    runs: Vec<Value>,
    foreign_max: f64,
}

impl Report {
    fn new(runs: Vec<Value>, foreign_max: f64) -> Self {
        let mut order: Vec<String> = Vec::new();
        let mut grouped: BTreeMap<String, Vec<Value>> = BTreeMap::new();
        for run in &runs {
            let label = s(run, "label").to_owned();
            if !grouped.contains_key(&label) {
                order.push(label.clone());
            }
            grouped.entry(label).or_default().push(run.clone());
        }
        let series = order
            .into_iter()
            .map(|label| {
                let all = grouped.remove(&label).unwrap_or_default();
                let clean: Vec<Value> = all
                    .iter()
                    .filter(|r| disturbance(r) <= foreign_max)
                    .cloned()
                    .collect();
                let fallback = clean.len() < 3 && clean.len() != all.len();
                let used = if fallback { all.clone() } else { clean };
                Series {
                    label,
                    all,
                    used,
                    fallback,
                }
            })
            .collect();
        Self {
            series,
            runs,
            foreign_max,
        }
    }

    fn of_mode<'a>(&'a self, mode: &'a str) -> impl Iterator<Item = &'a Series> + 'a {
        self.series
            .iter()
            .filter(move |se| se.first().is_some_and(|r| s(r, "mode") == mode))
    }

    fn find(&self, phase: &str, mode: &str, target: &str) -> Option<&Series> {
        self.series.iter().find(|se| {
            se.first().is_some_and(|r| {
                s(r, "phase") == phase && s(r, "mode") == mode && s(r, "target") == target
            })
        })
    }

    /// `f(a, b)` for each round in which `phase`/`mode` ran both targets; clean pairs when
    /// at least three remain. The flag says whether unclean pairs had to be used.
    fn paired(
        &self,
        phase: &str,
        mode: &str,
        a: &str,
        b: &str,
        f: impl Fn(&Value, &Value) -> Option<f64>,
    ) -> (Vec<f64>, bool) {
        let pick = |target: &str| -> BTreeMap<u64, &Value> {
            self.runs
                .iter()
                .filter(|r| {
                    s(r, "phase") == phase && s(r, "mode") == mode && s(r, "target") == target
                })
                .filter_map(|r| r["round"].as_u64().map(|round| (round, r)))
                .collect()
        };
        let (left, right) = (pick(a), pick(b));
        let mut all = Vec::new();
        let mut clean = Vec::new();
        for (round, ra) in &left {
            let Some(rb) = right.get(round) else { continue };
            let Some(v) = f(ra, rb) else { continue };
            all.push(v);
            if disturbance(ra) <= self.foreign_max && disturbance(rb) <= self.foreign_max {
                clean.push(v);
            }
        }
        if clean.len() >= 3 || clean.len() == all.len() {
            (clean, false)
        } else {
            (all, true)
        }
    }

    /// `governed+plugin` req/s ÷ `governed` req/s of the same round (pinned phase).
    fn plugin_throughput_ratio(&self) -> (Vec<f64>, bool) {
        self.paired("pinned", "closed", "governed+plugin", "governed", |p, g| {
            Some(get(p, &["throughput"])? / get(g, &["throughput"])?)
        })
    }

    /// `governed+plugin` p50 − `governed` p50 at the fixed rate of the same round (pinned
    /// phase), µs.
    fn plugin_added_p50(&self) -> (Vec<f64>, bool) {
        self.paired("pinned", "open", "governed+plugin", "governed", |p, g| {
            Some(get(p, &["latency_us", "p50"])? - get(g, &["latency_us", "p50"])?)
        })
    }

    fn headline(&self, rss_connections: u64) {
        println!("### Against the targets (pinned phase: proxy on one core)");
        println!();
        println!("| figure | measured: median [min–max] over rounds | target | met |");
        println!("|---|---|---|---|");
        let open = self.find("pinned", "open", "governed");
        let rate = open
            .and_then(Series::first)
            .and_then(|r| r["target_rate"].as_f64());
        let rate_text = rate.map_or("the fixed rate".to_owned(), |r| format!("{r:.0}/s"));
        for (quantile, limit) in [("p50", 150.0), ("p99", 1000.0)] {
            let (added, fallback) = self.paired("pinned", "open", "governed", "direct", |g, d| {
                Some(get(g, &["latency_us", quantile])? - get(d, &["latency_us", quantile])?)
            });
            let met = median(&sorted(added.clone())).map_or("–", |m| verdict(m <= limit));
            println!(
                "| governed added latency {quantile} at {rate_text} (governed − direct, same round) | {} µs{} | ≤ {limit:.0} µs | {met} |",
                summary(added, 0),
                loaded(fallback),
            );
        }
        let (ratio, fallback) = self.paired("pinned", "closed", "governed", "nginx", |g, n| {
            Some(get(g, &["throughput"])? / get(n, &["throughput"])?)
        });
        let met = median(&sorted(ratio.clone())).map_or("–", |m| verdict(m >= 0.5));
        println!(
            "| governed / nginx maximum throughput, same core | {}{} | ≥ 0.50 | {met} |",
            summary(ratio, 2),
            loaded(fallback),
        );
        if self.find("pinned", "closed", "governed+plugin").is_some() {
            let (ratio, fallback) = self.plugin_throughput_ratio();
            let met = median(&sorted(ratio.clone()))
                .map_or("–", |m| verdict(m >= PLUGIN_THROUGHPUT_SHARE));
            println!(
                "| governed+plugin / governed maximum throughput, same core | {}{} | ≥ {PLUGIN_THROUGHPUT_SHARE:.2} | {met} |",
                summary(ratio, 2),
                loaded(fallback),
            );
        }
        if self.find("pinned", "open", "governed+plugin").is_some() {
            let (added, fallback) = self.plugin_added_p50();
            println!(
                "| added latency of the plugin p50 at {rate_text} (governed+plugin − governed, same round) | {} µs{} | — (information) | — |",
                summary(added, 0),
                loaded(fallback),
            );
        }
        if let (Some(rate), Some(max)) = (
            rate,
            self.find("pinned", "closed", "governed")
                .and_then(|se| median(&sorted(se.values(&["throughput"])))),
        ) {
            println!(
                "| fixed rate as a share of the governed maximum | {:.0} % ({rate:.0}/s of {max:.0}/s) | 50 % | {} |",
                rate / max * 100.0,
                verdict((rate / max - 0.5).abs() <= 0.1),
            );
        }
        for run in self
            .runs
            .iter()
            .filter(|r| s(r, "mode") == "idle" && s(r, "target") == "governed")
        {
            let max_mb = get(run, &["rss_kb", "max"]).unwrap_or(0.0) / 1024.0;
            let opened = run["opened"].as_u64().unwrap_or(0);
            let open_end = run["open_at_end"].as_u64().unwrap_or(0);
            let complete = opened >= rss_connections && open_end >= rss_connections;
            println!(
                "| gateway RSS with {rss_connections} idle keep-alive connections | {max_mb:.1} MB (max while held; {opened} opened, {open_end} still open after {} s) | ≤ 64 MB | {} |",
                run["hold_s"].as_u64().unwrap_or(0),
                if complete {
                    verdict(max_mb <= 64.0)
                } else {
                    "not measured as specified (connections closed)"
                },
            );
        }
        println!();
        println!(
            "Runs used: those during which the rest of the machine plus the hypervisor's steal took at most {} CPU, when at least three remain.",
            self.foreign_max
        );
        println!();
    }

    fn throughput(&self) {
        println!("### Maximum throughput (closed loop)");
        println!();
        println!(
            "| series | runs used / all | flagged | req/s median [min–max] | ratio to nginx, same round | proxy util | other parties util | errors | foreign+steal CPU median [max] |"
        );
        println!("|---|---|---|---|---|---|---|---|---|");
        for se in self.of_mode("closed") {
            let Some(first) = se.first() else { continue };
            let (phase, target) = (s(first, "phase"), s(first, "target"));
            let ratio = if target == "nginx" {
                "1".to_owned()
            } else {
                let (r, _) = self.paired(phase, "closed", target, "nginx", |a, n| {
                    Some(get(a, &["throughput"])? / get(n, &["throughput"])?)
                });
                summary(r, 2)
            };
            let others: Vec<f64> = se
                .used
                .iter()
                .filter_map(|r| r["cpu"].as_object())
                .map(|cpu| {
                    cpu.iter()
                        .filter(|(name, _)| name.as_str() != "proxy")
                        .filter_map(|(_, v)| v["util"].as_f64())
                        .sum()
                })
                .collect();
            println!(
                "| {} | {} | {} | {} | {ratio} | {} | {} | {} | {} |",
                se.label,
                se.used_text(),
                se.flagged(),
                summary(se.values(&["throughput"]), 0),
                median_text(se.values(&["cpu", "proxy", "util"]), 2),
                median_text(others, 2),
                se.errors(),
                se.foreign(),
            );
        }
        println!();
        println!(
            "Latencies of the closed loop are queueing-dominated (about connections / throughput) and are left out. `proxy util` is the system under test's CPU over the run (1.0 = one CPU busy); `other parties util` adds the load generator, the stub, Redis and Postgres: in the pinned phase they share CPU 0, so a value near 1.0 there means CPU 0, not the proxy, capped the run."
        );
        println!();
    }

    fn fixed_rate(&self) {
        let open: Vec<&Series> = self.of_mode("open").collect();
        if open.is_empty() {
            return;
        }
        println!("### Fixed rate (open loop): latency from the scheduled send");
        println!();
        println!(
            "| series | runs used / all | flagged | achieved/s | p50 µs | p99 µs | p99.9 µs | max µs | added p50 vs direct, same round | added p99 vs direct | service p50 / p99 µs |"
        );
        println!("|---|---|---|---|---|---|---|---|---|---|---|");
        for se in open {
            let Some(first) = se.first() else { continue };
            let (phase, target) = (s(first, "phase"), s(first, "target"));
            let added = |quantile: &'static str| {
                if target == "direct" {
                    return "–".to_owned();
                }
                let (v, _) = self.paired(phase, "open", target, "direct", |a, d| {
                    Some(get(a, &["latency_us", quantile])? - get(d, &["latency_us", quantile])?)
                });
                summary(v, 0)
            };
            println!(
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} / {} |",
                se.label,
                se.used_text(),
                se.flagged(),
                median_text(se.values(&["throughput"]), 0),
                summary(se.values(&["latency_us", "p50"]), 0),
                summary(se.values(&["latency_us", "p99"]), 0),
                median_text(se.values(&["latency_us", "p999"]), 0),
                median_text(se.values(&["latency_us", "max"]), 0),
                added("p50"),
                added("p99"),
                median_text(se.values(&["service_us", "p50"]), 0),
                median_text(se.values(&["service_us", "p99"]), 0),
            );
        }
        println!();
        println!(
            "The scheduled-time latency includes up to ≈1 ms of tokio timer slack in the load generator (the same for every target, so it cancels in the added figures); the service columns measure from the actual send."
        );
        println!();
    }

    fn cpu(&self) {
        let closed: Vec<&Series> = self.of_mode("closed").collect();
        if closed.is_empty() {
            return;
        }
        let mut parties: Vec<String> = Vec::new();
        for se in &closed {
            for run in &se.used {
                if let Some(cpu) = run["cpu"].as_object() {
                    for name in cpu.keys() {
                        if !parties.contains(name) {
                            parties.push(name.clone());
                        }
                    }
                }
            }
        }
        println!("### CPU per successful request (maximum-throughput series), µs, median");
        println!();
        let mut header = "| series |".to_owned();
        let mut rule = "|---|".to_owned();
        for party in &parties {
            header.push_str(&format!(" {party} (util) |"));
            rule.push_str("---|");
        }
        println!("{header} all parties |");
        println!("{rule}---|");
        for se in &closed {
            let mut row = format!("| {} |", se.label);
            let mut total = 0.0;
            for party in &parties {
                let per = median(&sorted(se.values(&["cpu", party, "us_per_request"])));
                let util = median(&sorted(se.values(&["cpu", party, "util"])));
                match (per, util) {
                    (Some(per), Some(util)) => {
                        total += per;
                        row.push_str(&format!(" {per:.1} ({:.0} %) |", util * 100.0));
                    }
                    _ => row.push_str(" – |"),
                }
            }
            println!("{row} {total:.1} |");
        }
        println!();
        println!(
            "CPU time comes from `/proc/<pid>/stat` in 10 ms ticks over the run. `proxy` is the system under test (absent for `direct`), `upstream` the nginx stub (master and worker), `postgres` the postmaster and all its children, `loadgen` the load generator."
        );
        println!();
        println!(
            "Ablation, proxy CPU µs per request (median of the pinned maximum-throughput runs) and the step's delta (each `governed+…` step against `governed`):"
        );
        println!();
        println!("| step | proxy µs/request | delta | all parties µs/request |");
        println!("|---|---|---|---|");
        let mut previous: Option<f64> = None;
        let mut governed: Option<f64> = None;
        for target in ORDER {
            let Some(se) = self.find("pinned", "closed", target) else {
                continue;
            };
            let proxy = if target == "direct" {
                Some(0.0)
            } else {
                median(&sorted(se.values(&["cpu", "proxy", "us_per_request"])))
            };
            let all: f64 = parties
                .iter()
                .filter_map(|p| median(&sorted(se.values(&["cpu", p, "us_per_request"]))))
                .sum();
            // The `governed+…` steps each add one thing to `governed`, not to each other.
            let base = if target.starts_with("governed+") {
                governed
            } else {
                previous
            };
            let delta = match (proxy, base) {
                (Some(p), Some(q)) => format!("{:+.1}", p - q),
                _ => "–".to_owned(),
            };
            if target == "governed" {
                governed = proxy;
            }
            println!(
                "| {target} | {} | {delta} | {all:.1} |",
                proxy.map_or("–".to_owned(), |p| format!("{p:.1}")),
            );
            previous = proxy.or(previous);
        }
        println!();
    }

    fn idle(&self) {
        let idle: Vec<&Value> = self
            .runs
            .iter()
            .filter(|r| s(r, "mode") == "idle")
            .collect();
        if idle.is_empty() {
            return;
        }
        println!("### Idle keep-alive connections: resident memory of the proxy");
        println!();
        println!(
            "| target | opened / asked | RSS before MB | RSS max while held MB | RSS after closing MB | still open at the end of the hold | all still open until | open time s |"
        );
        println!("|---|---|---|---|---|---|---|---|");
        for run in idle {
            let mb = |key: &str| get(run, &["rss_kb", key]).map_or(0.0, |kb| kb / 1024.0);
            let opened = run["opened"].as_u64().unwrap_or(0);
            let samples = run["samples"].as_array().cloned().unwrap_or_default();
            let first_drop = samples
                .iter()
                .find(|sample| sample[2].as_u64().is_some_and(|open| open < opened))
                .and_then(|sample| sample[0].as_u64());
            let until = match first_drop {
                Some(second) => format!("fewer at {second} s"),
                None => "the end".to_owned(),
            };
            println!(
                "| {} | {} / {} | {:.1} | {:.1} | {:.1} | {} after {} s | {until} | {} |",
                s(run, "target"),
                run["opened"],
                run["connections"],
                mb("before"),
                mb("max"),
                mb("after_close"),
                run["open_at_end"],
                run["hold_s"],
                run["open_s"],
            );
        }
        println!();
        println!(
            "Each connection carried one `GET /health` (answered by the gateway itself; proxied to the stub by nginx and the passthrough), then stayed idle. `still open` counts the connections the server had not closed; seconds count from the end of the opening, which took `open time`. RSS is sampled once a second; `after closing` is 2 s after the client closed its side (freed memory the allocator keeps is still counted)."
        );
        println!();
    }

    fn errors(&self) {
        let samples: Vec<String> = self
            .runs
            .iter()
            .filter_map(|r| {
                r["sample_error"]
                    .as_str()
                    .map(|e| format!("- {}: {e}", s(r, "label")))
            })
            .collect();
        if samples.is_empty() {
            return;
        }
        println!("### Error samples (first error of each run that had one)");
        println!();
        for line in samples {
            println!("{line}");
        }
        println!();
    }
}

fn verdict(ok: bool) -> &'static str {
    if ok { "yes" } else { "no" }
}

/// The note of a figure that had to use loaded rounds.
fn loaded(fallback: bool) -> &'static str {
    if fallback {
        " (loaded rounds included)"
    } else {
        ""
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn run(target: &str, round: u64, throughput: f64, foreign: f64) -> Value {
        json!({
            "label": format!("{target} max, pinned"), "target": target, "phase": "pinned",
            "mode": "closed", "round": round, "throughput": throughput,
            "foreign_util": foreign, "steal_util": 0.0,
        })
    }

    #[test]
    fn ratios_pair_the_targets_of_one_round_and_skip_loaded_rounds() {
        let runs = vec![
            run("nginx", 1, 100.0, 0.0),
            run("governed", 1, 50.0, 0.0),
            run("nginx", 2, 200.0, 0.0),
            run("governed", 2, 40.0, 0.0),
            run("nginx", 3, 100.0, 0.0),
            run("governed", 3, 30.0, 0.0),
            run("nginx", 4, 100.0, 0.5),
            run("governed", 4, 90.0, 0.0),
            run("governed", 5, 90.0, 0.0),
        ];
        let report = Report::new(runs, 0.1);
        let (ratios, fallback) = report.paired("pinned", "closed", "governed", "nginx", |g, n| {
            Some(get(g, &["throughput"])? / get(n, &["throughput"])?)
        });
        assert!(!fallback);
        assert_eq!(sorted(ratios), vec![0.2, 0.3, 0.5]);
    }

    fn open_run(target: &str, round: u64, p50: f64) -> Value {
        json!({
            "label": format!("{target} @1000/s, pinned"), "target": target, "phase": "pinned",
            "mode": "open", "round": round, "latency_us": {"p50": p50, "p99": p50 * 3.0},
            "foreign_util": 0.0, "steal_util": 0.0,
        })
    }

    #[test]
    fn the_plugin_ratio_pairs_governed_plus_plugin_with_governed_of_the_same_round() {
        let runs = vec![
            run("governed", 1, 1000.0, 0.0),
            run("governed+plugin", 1, 900.0, 0.0),
            run("governed", 2, 2000.0, 0.0),
            run("governed+plugin", 2, 1500.0, 0.0),
            run("governed+rl", 2, 100.0, 0.0),
            run("governed", 3, 1000.0, 0.0),
            run("governed+plugin", 3, 800.0, 0.0),
            run("governed+plugin", 4, 5000.0, 0.0),
        ];
        let report = Report::new(runs, 0.1);
        let (ratios, fallback) = report.plugin_throughput_ratio();
        assert!(!fallback);
        assert_eq!(sorted(ratios.clone()), vec![0.75, 0.8, 0.9]);
        let m = median(&sorted(ratios)).unwrap();
        assert!(m >= PLUGIN_THROUGHPUT_SHARE);
    }

    #[test]
    fn the_plugin_added_latency_is_the_p50_difference_of_the_same_round() {
        let runs = vec![
            open_run("direct", 1, 100.0),
            open_run("governed", 1, 700.0),
            open_run("governed+plugin", 1, 730.0),
            open_run("governed", 2, 650.0),
            open_run("governed+plugin", 2, 690.0),
            run("governed+plugin", 1, 500.0, 0.0),
        ];
        let report = Report::new(runs, 0.1);
        let (added, fallback) = report.plugin_added_p50();
        assert!(!fallback);
        assert_eq!(sorted(added), vec![30.0, 40.0]);
    }

    #[test]
    fn medians_and_summaries() {
        assert_eq!(median(&[1.0, 2.0, 10.0]), Some(2.0));
        assert_eq!(median(&[1.0, 3.0]), Some(2.0));
        assert_eq!(median(&[]), None);
        assert_eq!(summary(vec![3.0, 1.0, 2.0], 0), "2 [1–3]");
        assert_eq!(summary(Vec::new(), 0), "–");
    }

    #[test]
    fn a_series_falls_back_to_all_runs_when_fewer_than_three_are_clean() {
        let runs = vec![
            run("nginx", 1, 100.0, 0.5),
            run("nginx", 2, 100.0, 0.5),
            run("nginx", 3, 100.0, 0.0),
        ];
        let report = Report::new(runs, 0.1);
        let series = report.find("pinned", "closed", "nginx").unwrap();
        assert!(series.fallback);
        assert_eq!(series.used.len(), 3);
    }
}
