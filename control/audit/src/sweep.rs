//! The tamper sweep (storage §8.6): reads the ledger across zones in `(zone_id, chain_seq)`
//! pages, runs every check of [`crate::verify`] on each row, records findings in
//! `audit_ingest_alerts` and the `caracal_audit_tamper_*` counters. The leader loop calls
//! [`run_once`] hourly over a rolling window and fully at start-up and every
//! `AUDIT_TAMPER_FULL_INTERVAL_HOURS`; only its alerts are written, nothing else.
//!
//! A window's first row in each zone is checked against the row `chain_seq − 1` fetched
//! explicitly (or the anchor retention left for it), so a rolling sweep still sees a break
//! at its edge. Reads run in short cross-zone transactions, one per page; the pace is held
//! to `AUDIT_TAMPER_MAX_ROWS_PER_SEC`.

use std::{
    collections::{BTreeMap, HashSet},
    sync::atomic::Ordering,
    time::Duration,
};

use chrono::Utc;
use control_model::ZoneId;
use control_store::{
    StoreError,
    audit::{
        ledger,
        rows::{self, RowFilter, StoredAuditRow},
    },
    zone::{cross_zone_read, global_tx, zone_tx},
};
use serde::Serialize;
use sqlx::{PgConnection, PgPool};

use crate::{
    config::LedgerKeys,
    metrics::Metrics,
    verify::{AuditRow, Finding, FindingKind, Keyring, Link, Verifier, duplicate},
};

/// Rows per page.
const PAGE_ROWS: u64 = 1000;

/// Which rows a sweep reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SweepScope {
    /// Rows ingested within this long before now (`AUDIT_TAMPER_ROLLING_HOURS`), each zone's
    /// first one checked against its predecessor.
    Rolling(Duration),
    /// Every row.
    Full,
}

/// What one sweep did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SweepReport {
    /// Rows checked.
    pub rows_checked: u64,
    /// Findings (each also an alert, unless already recorded).
    pub findings: u64,
    /// Findings by kind.
    pub by_kind: BTreeMap<String, u64>,
    /// Alerts newly written (a finding already recorded is kept once).
    pub alerts_written: u64,
    /// Chain HMACs verified.
    pub hmac_verified: u64,
    /// Chain HMACs not checked (no key, or rows of an unkeyed chain).
    pub hmac_skipped: u64,
    /// Ingest signatures not checked.
    pub signatures_skipped: u64,
    /// Gaps bridged by retention anchors.
    pub anchors_used: u64,
    /// The first finding, by `(zone_id, chain_seq)`.
    pub first_finding: Option<Finding>,
}

/// Sweeps once.
///
/// # Errors
///
/// A database error ends the sweep; the alerts of the pages before it are kept.
pub async fn run_once(
    pool: &PgPool,
    keys: &LedgerKeys,
    metrics: &Metrics,
    scope: SweepScope,
    rows_per_sec: u64,
) -> Result<SweepReport, StoreError> {
    let filter = RowFilter {
        since: match scope {
            // A window too long to subtract covers everything.
            SweepScope::Rolling(window) => chrono::Duration::from_std(window)
                .ok()
                .and_then(|window| Utc::now().checked_sub_signed(window)),
            SweepScope::Full => None,
        },
        ..RowFilter::default()
    };
    let rate = rows_per_sec.max(1);
    let page_rows = i64::try_from(PAGE_ROWS.min(rate)).unwrap_or(1);
    let mut verifier = Verifier::new(Keyring::from_ledger_keys(keys));
    let mut report = SweepReport::default();
    let started = tokio::time::Instant::now();
    let mut cursor: Option<rows::Cursor> = None;
    loop {
        let mut read = cross_zone_read(pool).await?;
        let page = rows::page(&mut read, &filter, cursor.as_ref(), page_rows).await?;
        let Some(last) = page.last() else {
            read.finish().await?;
            break;
        };
        cursor = Some((last.zone_id.clone(), last.chain_seq));
        let checked = u64::try_from(page.len()).unwrap_or(u64::MAX);
        let findings = check_stored_page(&mut read, &mut verifier, page).await?;
        read.finish().await?;
        report.rows_checked += checked;
        metrics.tamper_checked.fetch_add(checked, Ordering::Relaxed);
        record(pool, metrics, findings, &mut report).await?;
        // Hold the pace: `rows_checked` rows may take no less than rows_checked / rate s.
        let due = Duration::from_millis(report.rows_checked.saturating_mul(1000) / rate);
        tokio::time::sleep_until(started + due).await;
    }
    let tally = verifier.tally();
    report.hmac_verified = tally.hmac_verified;
    report.hmac_skipped = tally.hmac_skipped;
    report.signatures_skipped = tally.signatures_skipped;
    report.anchors_used = tally.anchors_used;
    if report.findings > 0 {
        tracing::warn!(
            findings = report.findings,
            rows = report.rows_checked,
            first_zone = report.first_finding.as_ref().map(|f| f.zone_id.as_str()),
            first_chain_seq = report.first_finding.as_ref().map(|f| f.chain_seq),
            first_kind = report.first_finding.as_ref().map(|f| f.kind.as_str()),
            "audit tamper sweep found tamper evidence"
        );
    }
    Ok(report)
}

/// Checks one page of stored rows (in `(zone_id, chain_seq)` order) on `conn`, a cross-zone
/// read: a zone's row whose predecessor was not the last row seen is checked against the
/// row `chain_seq − 1` or its anchor, fetched here; ids stored more than once are findings.
///
/// # Errors
///
/// Database errors.
pub(crate) async fn check_stored_page(
    conn: &mut PgConnection,
    verifier: &mut Verifier,
    page: Vec<StoredAuditRow>,
) -> Result<Vec<Finding>, sqlx::Error> {
    let ids: Vec<String> = page.iter().map(|row| row.id.clone()).collect();
    let repeated: HashSet<String> = rows::repeated_ids(conn, &ids).await?.into_iter().collect();
    let mut findings = Vec::new();
    for stored in page {
        let row = AuditRow::from(stored);
        if verifier.needs_predecessor(&row) {
            let seq = row.chain_seq - 1;
            if let Some(previous) = rows::row(conn, &row.zone_id, seq).await? {
                verifier.seed(
                    &row.zone_id,
                    Link {
                        chain_seq: previous.chain_seq,
                        keyed: previous.chain_hmac.is_some(),
                        content_sha256: previous.content_sha256,
                        origin: crate::verify::LinkOrigin::Row,
                    },
                );
            } else if let Some(anchor) = rows::anchor(conn, &row.zone_id, seq).await? {
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
        findings.extend(verifier.check(&row));
        if repeated.contains(&row.id) {
            findings.push(duplicate(&row));
        }
    }
    Ok(findings)
}

/// Writes a page's findings as alerts, each zone's in a transaction scoped to it, and
/// counts them.
async fn record(
    pool: &PgPool,
    metrics: &Metrics,
    findings: Vec<Finding>,
    report: &mut SweepReport,
) -> Result<(), StoreError> {
    let mut by_zone: BTreeMap<String, Vec<ledger::Alert>> = BTreeMap::new();
    for finding in findings {
        count(metrics, finding.kind);
        report.findings += 1;
        *report
            .by_kind
            .entry(finding.kind.as_str().to_owned())
            .or_default() += 1;
        by_zone
            .entry(finding.zone_id.clone())
            .or_default()
            .push(finding.to_alert());
        if report.first_finding.is_none() {
            report.first_finding = Some(finding);
        }
    }
    for (zone, alerts) in by_zone {
        // The alerts table has no row-level security; a zone id the model refuses (only a
        // changed row can hold one) is written in a global transaction instead.
        let written = match ZoneId::parse(&zone) {
            Ok(zone) => {
                let mut tx = zone_tx(pool, &zone).await?;
                let written = ledger::insert_alerts(&mut tx, &alerts).await?;
                tx.commit().await?;
                written
            }
            Err(_malformed) => {
                let mut tx = global_tx(pool).await?;
                let written = ledger::insert_alerts(&mut tx, &alerts).await?;
                tx.finish().await?;
                written
            }
        };
        report.alerts_written += written;
    }
    Ok(())
}

/// Bumps the counter of `kind`.
fn count(metrics: &Metrics, kind: FindingKind) {
    let counter = match kind {
        FindingKind::ContentMismatch => &metrics.tamper_mismatch,
        FindingKind::ChainBreak => &metrics.tamper_chain_breaks,
        FindingKind::SequenceGap => &metrics.tamper_gaps,
        FindingKind::HmacMismatch
        | FindingKind::UnknownKeyId
        | FindingKind::IngestSignatureMismatch => &metrics.tamper_hmac_failures,
        FindingKind::DuplicateEventId => &metrics.tamper_other,
    };
    counter.fetch_add(1, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_a_counter() {
        let metrics = Metrics::default();
        for kind in FindingKind::ALL {
            count(&metrics, kind);
        }
        assert_eq!(metrics.tamper_mismatch.load(Ordering::Relaxed), 1);
        assert_eq!(metrics.tamper_chain_breaks.load(Ordering::Relaxed), 1);
        assert_eq!(metrics.tamper_gaps.load(Ordering::Relaxed), 1);
        assert_eq!(metrics.tamper_hmac_failures.load(Ordering::Relaxed), 3);
        assert_eq!(metrics.tamper_other.load(Ordering::Relaxed), 1);
    }
}
