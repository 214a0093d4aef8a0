//! `mint_report FILE.jsonl [FOREIGN_MAX]`: summarises `mint_load` result lines as Markdown
//! tables, grouped by `label` in order of first appearance (labels starting with `warmup`
//! are skipped): the median and the min–max of each figure over the runs of a series.
//!
//! Runs during which the rest of the machine used more than `FOREIGN_MAX` CPUs (default
//! 0.1; `foreign_util + steal_util` of `mint_load`) were taken on a loaded machine and are left out of
//! the medians, as long as at least three clean runs remain in the series; otherwise all
//! runs are used and the table says so.

use std::collections::BTreeMap;

use anyhow::Context as _;
use serde_json::Value;

fn main() -> anyhow::Result<()> {
    let path = std::env::args()
        .nth(1)
        .context("usage: mint_report RESULTS.jsonl [FOREIGN_MAX]")?;
    let foreign_max: f64 = match std::env::args().nth(2) {
        Some(raw) => raw.parse().context("FOREIGN_MAX must be a number")?,
        None => 0.1,
    };
    let text = std::fs::read_to_string(&path).with_context(|| path.clone())?;
    let mut order: Vec<String> = Vec::new();
    let mut series: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let Ok(run) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        let label = run["label"].as_str().unwrap_or("").to_owned();
        if label.starts_with("warmup") {
            continue;
        }
        if !series.contains_key(&label) {
            order.push(label.clone());
        }
        series.entry(label).or_default().push(run);
    }
    // Leave out the runs taken on a loaded machine where enough clean ones remain.
    let mut all_runs: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    let mut fallback: Vec<String> = Vec::new();
    for (label, runs) in &mut series {
        all_runs.insert(label.clone(), runs.clone());
        let clean: Vec<Value> = runs
            .iter()
            .filter(|r| disturbance(r) <= foreign_max)
            .cloned()
            .collect();
        if clean.len() >= 3 || clean.len() == runs.len() {
            *runs = clean;
        } else {
            fallback.push(label.clone());
        }
    }

    println!(
        "| series | runs used / all | flagged | mints/s median [min–max] | p50 µs median [min–max] | p99 µs median [min–max] | max µs median | errors | foreign+steal CPU median [max] |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for label in &order {
        let runs = &series[label];
        let all = &all_runs[label];
        let flagged = all.iter().filter(|r| r["flagged"] == true).count();
        let errors: u64 = all.iter().map(|r| r["errors"].as_u64().unwrap_or(0)).sum();
        let used = if fallback.contains(label) {
            format!(
                "{} / {} (too few clean runs: all used)",
                runs.len(),
                all.len()
            )
        } else {
            format!("{} / {}", runs.len(), all.len())
        };
        let mut foreign: Vec<f64> = all.iter().map(disturbance).collect();
        foreign.sort_by(f64::total_cmp);
        let foreign = match (median(&foreign), foreign.last()) {
            (Some(m), Some(hi)) => format!("{m:.2} [{hi:.2}]"),
            _ => "–".to_owned(),
        };
        println!(
            "| {label} | {used} | {flagged} | {} | {} | {} | {} | {errors} | {foreign} |",
            summary(runs, &["throughput"], 0),
            summary(runs, &["latency_us", "p50"], 0),
            summary(runs, &["latency_us", "p99"], 0),
            median_of(runs, &["latency_us", "max"]).map_or("–".to_owned(), |v| format!("{v:.0}")),
        );
    }
    println!();
    println!(
        "Runs used: those during which the rest of the machine plus the hypervisor's steal took at most {foreign_max} CPU (`foreign+steal`, in CPUs), when at least three such runs remain; flagged and errors count all runs."
    );

    println!();
    println!(
        "CPU per successful mint, µs (median over runs), and utilisation of one CPU during the run (median):"
    );
    println!();
    let mut parties: Vec<String> = Vec::new();
    for label in &order {
        for run in &series[label] {
            if let Some(cpu) = run["cpu"].as_object() {
                for name in cpu.keys() {
                    if !parties.contains(name) {
                        parties.push(name.clone());
                    }
                }
            }
        }
    }
    let mut header = "| series |".to_owned();
    let mut rule = "|---|".to_owned();
    for party in &parties {
        header.push_str(&format!(" {party} µs/mint (util) |"));
        rule.push_str("---|");
    }
    println!("{header}");
    println!("{rule}");
    for label in &order {
        let runs = &series[label];
        let mut row = format!("| {label} |");
        for party in &parties {
            let per = median_of(runs, &["cpu", party, "us_per_mint"]);
            let util = median_of(runs, &["cpu", party, "util"]);
            match (per, util) {
                (Some(per), Some(util)) => {
                    row.push_str(&format!(" {per:.0} ({:.0} %) |", util * 100.0))
                }
                _ => row.push_str(" – |"),
            }
        }
        println!("{row}");
    }

    let open: Vec<&String> = order
        .iter()
        .filter(|l| series[*l].iter().any(|r| r["mode"] == "open"))
        .collect();
    if !open.is_empty() {
        println!();
        println!(
            "Open loop, service time (from the actual send, without the scheduler's ≤1 ms timer slack):"
        );
        println!();
        println!(
            "| series | achieved/s median | service p50 µs median | service p99 µs median [min–max] |"
        );
        println!("|---|---|---|---|");
        for label in open {
            let runs = &series[label];
            println!(
                "| {label} | {} | {} | {} |",
                median_of(runs, &["throughput"]).map_or("–".to_owned(), |v| format!("{v:.0}")),
                median_of(runs, &["service_us", "p50"])
                    .map_or("–".to_owned(), |v| format!("{v:.0}")),
                summary(runs, &["service_us", "p99"], 0),
            );
        }
    }
    let samples: Vec<String> = order
        .iter()
        .flat_map(|l| all_runs[l].iter())
        .filter_map(|r| {
            r["sample_error"]
                .as_str()
                .map(|e| format!("- {}: {e}", r["label"].as_str().unwrap_or("")))
        })
        .collect();
    if !samples.is_empty() {
        println!();
        println!("Error samples (first error of each flagged run):");
        println!();
        for s in samples {
            println!("{s}");
        }
    }
    Ok(())
}

/// CPUs taken by others during a run: other processes plus hypervisor steal.
fn disturbance(run: &Value) -> f64 {
    run["foreign_util"].as_f64().unwrap_or(0.0) + run["steal_util"].as_f64().unwrap_or(0.0)
}

fn get<'a>(run: &'a Value, path: &[&str]) -> Option<f64> {
    let mut v: &'a Value = run;
    for key in path {
        v = v.get(key)?;
    }
    v.as_f64()
}

fn values(runs: &[Value], path: &[&str]) -> Vec<f64> {
    let mut v: Vec<f64> = runs.iter().filter_map(|r| get(r, path)).collect();
    v.sort_by(f64::total_cmp);
    v
}

fn median(sorted: &[f64]) -> Option<f64> {
    match sorted.len() {
        0 => None,
        n if n % 2 == 1 => Some(sorted[n / 2]),
        n => Some((sorted[n / 2 - 1] + sorted[n / 2]) / 2.0),
    }
}

fn median_of(runs: &[Value], path: &[&str]) -> Option<f64> {
    median(&values(runs, path))
}

fn summary(runs: &[Value], path: &[&str], decimals: usize) -> String {
    let v = values(runs, path);
    match (median(&v), v.first(), v.last()) {
        (Some(m), Some(lo), Some(hi)) => {
            format!("{m:.decimals$} [{lo:.decimals$}–{hi:.decimals$}]")
        }
        _ => "–".to_owned(),
    }
}
