//! `audit.chain` (storage §5, §8.6) and `audit.stream` (§6.5, §8.5).
//!
//! `audit.chain` verifies the newest [`WINDOW_ROWS`] rows of every zone's chain with the
//! ledger's own verifier (`control_audit::verify`), keyed with the keys the audit service
//! loads, and names the likely cause of what it finds: a wrong `AUDIT_HMAC_KEY` (rows chained
//! under a key id no configured key has), missing rows (sequence gaps: a partial restore), or
//! altered rows. It also checks that the current month's partition and the three after it
//! exist, and that the default partition is attached and empty.
//!
//! `audit.stream` reads the group `audit-ingestor` of `caracal.audit.events` (lag, pending
//! entries) and the dead letters of `caracal.audit.events.dlq`.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use chrono::{DateTime, Datelike, Months, Utc};
use control_audit::{
    config::{LedgerKeys, read_keyring},
    dlq,
    verify::{AuditRow, ChainRow, Finding, FindingKind, Keyring, Link, Verifier, duplicate},
};
use control_crypto::HmacKey;
use control_events::streams::{AUDIT_DLQ, AUDIT_EVENTS, AUDIT_INGESTOR_GROUP};
use control_store::{
    audit::{
        partitions,
        rows::{self, RowFilter},
    },
    ops::doctor as store,
    settings::Lookup,
};

use super::{
    CheckError, Context, age,
    redis_link::{self, RedisLink},
    report::{Check, Findings},
};

/// Rows verified at the head of each zone's chain.
pub(crate) const WINDOW_ROWS: i64 = 500;
/// Zones whose chains are verified (in zone id order).
const MAX_ZONES: i64 = 1000;
/// Months of partitions expected ahead of the current one (storage §5.2).
const MONTHS_AHEAD: u32 = 3;
/// A lag beyond this fails (storage §6.5).
const LAG_FAIL: usize = 100_000;
/// A lag beyond this warns.
const LAG_WARN: usize = 10_000;
/// A pending entry idle longer than this warns (the claim loop takes entries idle 30 s).
const PENDING_IDLE_WARN_MS: usize = 300_000;
/// Dead letters read to summarise their reasons.
const DLQ_SAMPLE: usize = 1000;

/// The audit keys the ledger loads (storage §8.3), from the same variables.
fn ledger_keys(lookup: Lookup<'_>) -> Result<LedgerKeys, String> {
    let key = |var: &str| HmacKey::from_lookup(var, lookup).map_err(|e| e.to_string());
    let producer = key("AUDIT_HMAC_KEY")?;
    let producer_previous = key("AUDIT_HMAC_KEY_PREVIOUS")?;
    let chain = key("AUDIT_CHAIN_HMAC_KEY")?.or_else(|| producer.clone());
    let retired = match lookup("AUDIT_HMAC_KEYRING_FILE") {
        Some(path) => read_keyring(&path).map_err(|e| e.to_string())?,
        None => Vec::new(),
    };
    Ok(LedgerKeys {
        producer,
        producer_previous,
        chain,
        retired,
    })
}

/// The chain key ids of the audit keys configured through `lookup` (restore verification
/// compares them with a backup's).
pub(crate) fn configured_key_ids(lookup: Lookup<'_>) -> Result<Vec<String>, String> {
    ledger_keys(lookup).map(|keys| key_ids(&keys))
}

/// The ids of the configured keys, for the finding.
fn key_ids(keys: &LedgerKeys) -> Vec<String> {
    let mut ids: Vec<String> = keys
        .chain
        .iter()
        .chain(keys.producer.iter())
        .chain(keys.producer_previous.iter())
        .chain(keys.retired.iter())
        .map(|key| key.chain_key_id().to_owned())
        .collect();
    ids.sort();
    ids.dedup();
    ids
}

/// `audit_events_yYYYYmMM` for the month of `now` and the [`MONTHS_AHEAD`] after it (UTC).
pub(crate) fn expected_partitions(now: DateTime<Utc>) -> Vec<String> {
    (0..=MONTHS_AHEAD)
        .filter_map(|ahead| now.checked_add_months(Months::new(ahead)))
        .map(|month| format!("audit_events_y{:04}m{:02}", month.year(), month.month()))
        .collect()
}

/// Runs `audit.chain`.
pub(crate) async fn chain(cx: &mut Context<'_>) -> Result<Check, CheckError> {
    let mut findings = Findings::new("audit.chain");

    // Partitions.
    let existing: HashSet<String> = partitions::names(&mut cx.db).await?.into_iter().collect();
    let expected = expected_partitions(cx.db_now);
    let missing: Vec<&String> = expected.iter().filter(|p| !existing.contains(*p)).collect();
    if missing.is_empty() {
        findings.ok(format!(
            "partitions {} exist",
            expected
                .first()
                .zip(expected.last())
                .map_or_else(String::new, |(a, b)| format!("{a} to {b}"))
        ));
    } else {
        findings.fail(
            format!(
                "missing audit partition(s) {} (the current month and the {MONTHS_AHEAD} after it must exist); events of those months land in audit_events_default",
                missing.iter().map(|p| p.as_str()).collect::<Vec<_>>().join(", ")
            ),
            "run `caracal migrate` (it creates them), and check that an audit service runs: its retention leader creates them every AUDIT_PARTITION_INTERVAL_HOURS",
        );
    }
    let default = store::default_partition(&mut cx.db).await?;
    if !default.attached {
        findings.fail(
            "audit_events_default is not attached as the default partition: events outside the monthly partitions are refused",
            "attach it as caracal_owner: ALTER TABLE caracal.audit_events ATTACH PARTITION caracal.audit_events_default DEFAULT",
        );
    } else if default.rows > 0 {
        findings.warn(
            format!("{} row(s) are in audit_events_default", default.rows),
            "create the missing months' partitions (`caracal migrate`, or the audit retention leader): creating a month moves its rows out of the default partition",
        );
    }

    // Keys.
    let keys = match ledger_keys(cx.lookup) {
        Ok(keys) => keys,
        Err(error) => {
            findings.fail(
                error,
                "fix the audit key variable named above (hex, at least 32 bytes)",
            );
            LedgerKeys::default()
        }
    };
    let configured = key_ids(&keys);
    let keyring = Keyring::from_ledger_keys(&keys);

    // The newest rows of every chain.
    let heads = store::chain_heads(&mut cx.db, MAX_ZONES).await?;
    let mut verifier = Verifier::new(keyring);
    let mut found: Vec<Finding> = Vec::new();
    let mut unknown_ids: BTreeSet<String> = BTreeSet::new();
    for head in &heads {
        let filter = RowFilter {
            zone: Some(head.zone_id.clone()),
            from_seq: Some((head.chain_seq - WINDOW_ROWS + 1).max(1)),
            ..RowFilter::default()
        };
        let page = rows::page(&mut cx.db, &filter, None, WINDOW_ROWS).await?;
        let ids: Vec<String> = page.iter().map(|row| row.id.clone()).collect();
        let repeated: HashSet<String> = rows::repeated_ids(&mut cx.db, &ids)
            .await?
            .into_iter()
            .collect();
        for stored in page {
            let row = AuditRow::from(stored);
            if verifier.needs_predecessor(&row) {
                let seq = row.chain_seq - 1;
                if let Some(previous) = rows::row(&mut cx.db, &row.zone_id, seq).await? {
                    verifier.seed(&row.zone_id, Link::of(&AuditRow::from(previous)));
                } else if let Some(anchor) = rows::anchor(&mut cx.db, &row.zone_id, seq).await? {
                    verifier.seed(
                        &row.zone_id,
                        Link::anchor(
                            anchor.chain_seq,
                            anchor.content_sha256,
                            anchor.chain_hmac.is_some(),
                        ),
                    );
                }
            }
            for finding in verifier.check(&row) {
                if finding.kind == FindingKind::UnknownKeyId
                    && let Some(key_id) = row.chain_key_id()
                {
                    unknown_ids.insert(key_id.to_owned());
                }
                found.push(finding);
            }
            if repeated.contains(&row.id) {
                found.push(duplicate(&row));
            }
        }
    }
    explain(&mut findings, &found, &unknown_ids, &configured);
    let tally = verifier.tally();
    if configured.is_empty() && tally.hmac_skipped > 0 {
        findings.warn(
            "no audit key is configured here, so chain HMACs and ingest signatures were not checked",
            "run caracal doctor with the audit service's AUDIT_HMAC_KEY (and AUDIT_CHAIN_HMAC_KEY, AUDIT_HMAC_KEYRING_FILE when it uses them)",
        );
    }
    findings.ok(format!(
        "verified the newest {} row(s) of {} zone chain(s) ({} HMACs)",
        tally.rows,
        heads.len(),
        tally.hmac_verified
    ));

    // What the tamper sweep recorded lately.
    let since = cx.db_now - chrono::Duration::hours(24);
    let alerts = store::alerts_since(&mut cx.db, since).await?;
    if !alerts.is_empty() {
        let total: i64 = alerts.iter().map(|a| a.alerts).sum();
        let kinds: Vec<String> = alerts
            .iter()
            .map(|a| format!("{}: {}", a.kind, a.alerts))
            .collect();
        findings.warn(
            format!("the audit service recorded {total} tamper or ingest alert(s) in the last 24 h ({})", kinds.join(", ")),
            "read them in caracal.audit_ingest_alerts and run `caracal audit verify --database-url …` for the full report",
        );
    }
    Ok(findings.finish())
}

/// Turns verifier findings into causes.
fn explain(
    findings: &mut Findings,
    found: &[Finding],
    unknown_ids: &BTreeSet<String>,
    configured: &[String],
) {
    let mut by_kind: BTreeMap<FindingKind, Vec<&Finding>> = BTreeMap::new();
    for finding in found {
        by_kind.entry(finding.kind).or_default().push(finding);
    }
    let first = |kind: FindingKind| {
        by_kind
            .get(&kind)
            .and_then(|list| list.first())
            .map(|f| format!("zone {} chain_seq {}", f.zone_id, f.chain_seq))
            .unwrap_or_default()
    };
    let count = |kinds: &[FindingKind]| -> usize {
        kinds
            .iter()
            .map(|k| by_kind.get(k).map_or(0, Vec::len))
            .sum()
    };
    let verify_fix =
        "run `caracal audit verify --database-url <maintenance URL>` for every finding";

    let unknown = count(&[FindingKind::UnknownKeyId]);
    if unknown > 0 {
        let ids: Vec<&String> = unknown_ids.iter().collect();
        findings.fail(
            format!(
                "wrong AUDIT_HMAC_KEY: {unknown} row(s) are chained under key id {} that no configured key has (configured: {})",
                ids.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", "),
                if configured.is_empty() { "none".to_owned() } else { configured.join(", ") }
            ),
            format!(
                "give the audit service (and doctor) the key whose chain_key_id is {} as AUDIT_CHAIN_HMAC_KEY or AUDIT_HMAC_KEY; a retired key goes into AUDIT_HMAC_KEYRING_FILE",
                ids.first().map_or("", |s| s.as_str())
            ),
        );
    }
    let gaps = count(&[FindingKind::SequenceGap]);
    if gaps > 0 {
        findings.fail(
            format!(
                "missing rows: {gaps} gap(s) in the chain (first at {}): a partial restore, or rows deleted without an anchor",
                first(FindingKind::SequenceGap)
            ),
            format!("restore the complete database (every audit partition) from the backup; {verify_fix}"),
        );
    }
    let forged = count(&[
        FindingKind::HmacMismatch,
        FindingKind::IngestSignatureMismatch,
    ]);
    if forged > 0 {
        let kind = if by_kind.contains_key(&FindingKind::HmacMismatch) {
            FindingKind::HmacMismatch
        } else {
            FindingKind::IngestSignatureMismatch
        };
        findings.fail(
            format!(
                "{forged} row(s) whose chain HMAC or ingest signature does not verify with the configured key of their chain_key_id (first at {}): the rows or their chain columns were altered",
                first(kind)
            ),
            format!("{verify_fix}; restore the affected rows from a backup or an export"),
        );
    }
    let altered = count(&[
        FindingKind::ContentMismatch,
        FindingKind::ChainBreak,
        FindingKind::DuplicateEventId,
    ]);
    if altered > 0 {
        let kinds: Vec<String> = [
            FindingKind::ContentMismatch,
            FindingKind::ChainBreak,
            FindingKind::DuplicateEventId,
        ]
        .iter()
        .filter_map(|k| {
            by_kind
                .get(k)
                .map(|list| format!("{}: {}", k.as_str(), list.len()))
        })
        .collect();
        findings.fail(
            format!("{altered} row(s) altered ({})", kinds.join(", ")),
            format!("{verify_fix}; restore the affected rows from a backup or an export"),
        );
    }
}

/// Runs `audit.stream`.
pub(crate) async fn stream(cx: &mut Context<'_>) -> Result<Check, CheckError> {
    let mut findings = Findings::new("audit.stream");
    let mut conn = match cx.audit_redis.conn() {
        Ok(conn) => conn,
        Err(error) => return Ok(unreachable(&cx.audit_redis, &error)),
    };
    let groups = redis_link::groups(&mut conn, AUDIT_EVENTS).await?;
    match groups {
        None => findings.warn(
            format!("{AUDIT_EVENTS} does not exist: no audit ledger has run against this Redis"),
            "start `caracal audit` (or `caracal all`) with this REDIS_URL; it creates the stream and its group",
        ),
        Some(groups) => match groups.iter().find(|g| g.name == AUDIT_INGESTOR_GROUP) {
            None => findings.fail(
                format!("{AUDIT_EVENTS} has no group {AUDIT_INGESTOR_GROUP}: nothing moves events into the ledger"),
                "start `caracal audit`; it creates the group at the start of the stream, so nothing produced meanwhile is lost",
            ),
            Some(group) => {
                match group.lag {
                    Some(lag) if lag > LAG_FAIL => findings.fail(
                        format!("consumer lag {lag} entries (over {LAG_FAIL}): the ledger is far behind or stopped, and the stream cannot be trimmed"),
                        "check the audit service's /ready and logs; add ledger workers (AUDIT_WORKERS) or replicas",
                    ),
                    Some(lag) if lag > LAG_WARN => findings.warn(
                        format!("consumer lag {lag} entries"),
                        "check that the audit service keeps up (AUDIT_WORKERS, database latency)",
                    ),
                    Some(lag) => findings.ok(format!("group {AUDIT_INGESTOR_GROUP}: lag {lag}")),
                    None => findings.ok(format!("group {AUDIT_INGESTOR_GROUP}: lag unknown (Redis before 7.0)")),
                }
                if group.pending > 0 {
                    let idle = redis_link::oldest_pending_idle_ms(&mut conn, AUDIT_EVENTS, AUDIT_INGESTOR_GROUP).await?;
                    match idle {
                        Some(idle) if idle > PENDING_IDLE_WARN_MS => findings.warn(
                            format!(
                                "{} pending entries, the oldest idle for {}: a ledger consumer stopped without acknowledging",
                                group.pending,
                                age(idle as f64 / 1000.0)
                            ),
                            "check that an audit service runs: its claim loop takes over entries idle for AUDIT_CLAIM_IDLE_SECS",
                        ),
                        _ => findings.ok(format!("{} pending", group.pending)),
                    }
                } else {
                    findings.ok("0 pending");
                }
            }
        },
    }

    // Dead letters.
    let length = redis_link::stream_length(&mut conn, AUDIT_DLQ).await?;
    if length == 0 {
        findings.ok("no dead letters");
    } else {
        let letters = dlq::list(&mut conn, None, DLQ_SAMPLE).await?;
        let retryable = letters.iter().filter(|l| l.replayable()).count();
        let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
        for letter in &letters {
            let reason = letter
                .fields
                .get("reason")
                .map_or("unknown", String::as_str);
            let prefix = reason.split(':').next().unwrap_or(reason).to_owned();
            *reasons.entry(prefix).or_default() += 1;
        }
        let reasons: Vec<String> = reasons.iter().map(|(r, n)| format!("{r}: {n}")).collect();
        let finding = format!(
            "{length} dead letter(s) on {AUDIT_DLQ} (of the first {}: {retryable} retryable; {})",
            letters.len(),
            reasons.join(", ")
        );
        let fix = "inspect them with `caracal audit dlq list`; put retryable ones back with `caracal audit dlq replay`; purge handled evidence with `caracal audit dlq purge --before <time>`";
        if retryable > 0 {
            findings.fail(finding, fix);
        } else {
            findings.warn(finding, fix);
        }
    }
    Ok(findings.finish())
}

/// The check of a Redis that cannot be reached.
pub(crate) fn unreachable_check(id: &'static str, link: &RedisLink, error: &str) -> Check {
    super::report::failed(
        id,
        format!("Redis ({}) cannot be reached: {error}", link.var),
        format!("check that Redis is up and that {} points at it", link.var),
    )
}

fn unreachable(link: &RedisLink, error: &str) -> Check {
    unreachable_check("audit.stream", link, error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn four_partitions_are_expected_across_a_year_end() {
        let now = DateTime::parse_from_rfc3339("2026-11-30T23:59:59Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(
            expected_partitions(now),
            vec![
                "audit_events_y2026m11",
                "audit_events_y2026m12",
                "audit_events_y2027m01",
                "audit_events_y2027m02",
            ]
        );
    }
}
