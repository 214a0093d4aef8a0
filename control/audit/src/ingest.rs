//! Chained ingest (storage §8.4, §8.5): entries are checked, grouped by zone, and each
//! zone's events are chained and inserted in one transaction under the zone's chain lock;
//! the batch is acknowledged only after its commits. Invalid entries and tamper on replay
//! go to the dead letters before their acknowledgement; a transient database failure
//! acknowledges nothing and retries; a permanent one is bisected down to the failing event.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
    time::Duration,
};

use chrono::{DateTime, Utc};
use control_crypto::{chain_hmac, ingest_signature};
use control_model::ZoneId;
use control_store::{
    StoreError,
    audit::ledger::{self, Alert, NewRow},
};
use redis::aio::ConnectionLike;
use sqlx::PgPool;
use tokio::sync::watch;

use crate::{
    canonical::{format_time, truncate_to_micros},
    config::{IngestSettings, LedgerKeys},
    dlq,
    entry::{Checked, Entry, Window, check},
    metrics::Metrics,
};

/// What the ingest loops share.
#[derive(Clone)]
pub struct Ledger {
    /// The audit role's pool.
    pub pool: PgPool,
    /// Keys.
    pub keys: LedgerKeys,
    /// Ingest settings.
    pub settings: IngestSettings,
    /// `AUDIT_RETENTION_DAYS`: the oldest accepted `occurred_at`.
    pub retention: Duration,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// This loop's position among the process's ingest loops `(index, count)`: each loop
    /// starts its batch at a different zone, so two loops rarely wait on the same chain
    /// lock at once.
    pub lane: (usize, usize),
}

/// A zone's commit failed.
#[derive(Debug)]
enum ZoneFailure {
    /// Retry the same events later.
    Transient(String),
    /// The events cannot be inserted as they are; the SQLSTATE when there is one.
    Permanent(String),
}

impl From<StoreError> for ZoneFailure {
    fn from(error: StoreError) -> Self {
        if error.is_transient() {
            Self::Transient(error.sqlstate().unwrap_or_else(|| "connection".to_owned()))
        } else {
            Self::Permanent(error.sqlstate().unwrap_or_else(|| "XX000".to_owned()))
        }
    }
}

impl From<sqlx::Error> for ZoneFailure {
    fn from(error: sqlx::Error) -> Self {
        StoreError::from(error).into()
    }
}

/// What one zone's commit did.
#[derive(Debug, Default)]
struct ZoneDone {
    inserted: u64,
    benign: u64,
    /// Positions (in the zone's slice) of duplicates whose content differs.
    tampered: Vec<usize>,
}

/// How a batch ended.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct BatchOutcome {
    /// Entry ids safe to acknowledge.
    pub ack: Vec<String>,
    /// Entries left pending (a dead-letter write failed, or shutdown interrupted a retry).
    pub pending: usize,
}

impl Ledger {
    /// The accepted `occurred_at` window now.
    fn window(&self) -> Window {
        let now = Utc::now();
        let skew = chrono::Duration::from_std(self.settings.max_future_skew).unwrap_or_default();
        let retention = chrono::Duration::from_std(self.retention).unwrap_or_default();
        Window {
            latest: now + skew,
            earliest: now - retention,
        }
    }

    /// Checks, chains and stores `entries` (in stream order); `deliveries` gives the
    /// delivery count of claimed entries (1 when absent). Returns what may be acknowledged.
    ///
    /// # Errors
    ///
    /// None from the database (those are retried or dead-lettered); the caller acknowledges
    /// the returned ids.
    pub async fn process<C: ConnectionLike + Send + Sync>(
        &self,
        writer: &mut C,
        entries: Vec<Entry>,
        deliveries: &HashMap<String, u64>,
        shutdown: &watch::Receiver<bool>,
    ) -> BatchOutcome {
        let mut outcome = BatchOutcome::default();
        let window = self.window();
        let mut zones: BTreeMap<String, Vec<(Entry, Checked)>> = BTreeMap::new();
        for entry in entries {
            let delivered = deliveries.get(&entry.entry_id).copied().unwrap_or(1);
            match check(&entry, &self.keys, window) {
                Ok(checked) => zones
                    .entry(checked.event.zone_id.clone())
                    .or_default()
                    .push((entry, checked)),
                Err(reason) => {
                    self.dead_letter(writer, &entry, &reason, delivered, &mut outcome)
                        .await;
                }
            }
        }
        let mut zones: Vec<(String, Vec<(Entry, Checked)>)> = zones.into_iter().collect();
        let (lane, lanes) = self.lane;
        let count = zones.len();
        zones.rotate_left(lane.saturating_mul(count) / lanes.max(1) % count.max(1));
        for (zone, items) in zones {
            self.chain_zone(writer, &zone, &items, shutdown, &mut outcome)
                .await;
        }
        outcome
    }

    async fn dead_letter<C: ConnectionLike + Send + Sync>(
        &self,
        writer: &mut C,
        entry: &Entry,
        reason: &str,
        deliveries: u64,
        outcome: &mut BatchOutcome,
    ) {
        match dlq::write(writer, entry, reason, deliveries).await {
            Ok(()) => {
                self.metrics.dead_lettered(reason);
                outcome.ack.push(entry.entry_id.clone());
            }
            Err(error) => {
                tracing::warn!(%error, entry = %entry.entry_id, "dead-letter write failed; the entry stays pending");
                outcome.pending += 1;
            }
        }
    }

    /// Chains one zone's events. A permanent failure splits the slice in halves (left
    /// first, keeping stream order) until the failing event stands alone.
    async fn chain_zone<C: ConnectionLike + Send + Sync>(
        &self,
        writer: &mut C,
        zone: &str,
        items: &[(Entry, Checked)],
        shutdown: &watch::Receiver<bool>,
        outcome: &mut BatchOutcome,
    ) {
        let Ok(zone_id) = ZoneId::parse(zone) else {
            for (entry, _) in items {
                self.dead_letter(writer, entry, "invalid_event:member_zone_id", 1, outcome)
                    .await;
            }
            return;
        };
        let mut work = vec![(0, items.len())];
        let mut backoff = Duration::from_millis(100);
        while let Some((start, end)) = work.pop() {
            let slice = &items[start..end];
            match self.commit_zone(&zone_id, slice).await {
                Ok(done) => {
                    backoff = Duration::from_millis(100);
                    self.metrics.committed(done.inserted, done.benign);
                    for (n, (entry, _)) in slice.iter().enumerate() {
                        if done.tampered.contains(&n) {
                            self.dead_letter(writer, entry, "tamper_on_replay", 1, outcome)
                                .await;
                        } else {
                            outcome.ack.push(entry.entry_id.clone());
                        }
                    }
                }
                Err(ZoneFailure::Transient(cause)) => {
                    self.metrics.transient_failure(&cause);
                    if *shutdown.borrow() {
                        outcome.pending +=
                            work.iter().map(|(s, e)| e - s).sum::<usize>() + slice.len();
                        return;
                    }
                    tracing::warn!(zone, cause, "ledger commit failed transiently; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    work.push((start, end));
                }
                Err(ZoneFailure::Permanent(state)) if slice.len() == 1 => {
                    let reason = if state == "23505" {
                        "id_conflict_other_zone".to_owned()
                    } else {
                        format!("pg_permanent_error:{state}")
                    };
                    self.dead_letter(writer, &slice[0].0, &reason, 1, outcome)
                        .await;
                }
                Err(ZoneFailure::Permanent(_)) => {
                    let middle = start + slice.len() / 2;
                    work.push((middle, end));
                    work.push((start, middle));
                }
            }
        }
    }

    /// One zone transaction: lock, head, duplicates, chain, insert, alerts, commit.
    async fn commit_zone(
        &self,
        zone: &ZoneId,
        items: &[(Entry, Checked)],
    ) -> Result<ZoneDone, ZoneFailure> {
        let mut tx = ledger::begin_chain(&self.pool, zone).await?;
        let ids: Vec<String> = items.iter().map(|(_, c)| c.event.id.clone()).collect();
        let times: Vec<DateTime<Utc>> = items.iter().map(|(_, c)| c.event.occurred_at).collect();
        let state = ledger::chain_state(&mut tx, zone.as_str(), &ids, &times).await?;
        let mut known: HashMap<(String, DateTime<Utc>), Vec<u8>> = state
            .existing
            .into_iter()
            .map(|(id, at, hash)| ((id, at), hash))
            .collect();
        let (mut seq, mut prev) = state
            .head
            .map_or((0, None), |h| (h.chain_seq, Some(h.content_sha256)));
        let ingested_at = truncate_to_micros(Utc::now());
        let ingested_text = format_time(ingested_at);
        let chain_key = self.keys.chain.as_ref();
        let mut done = ZoneDone::default();
        let mut rows = Vec::with_capacity(items.len());
        let mut alerts = Vec::new();
        for (n, (_, checked)) in items.iter().enumerate() {
            let event = &checked.event;
            let key = (event.id.clone(), event.occurred_at);
            if let Some(stored) = known.get(&key) {
                if stored.as_slice() == checked.content.sha256.as_slice() {
                    done.benign += 1;
                } else {
                    alerts.push(Alert {
                        event_id: event.id.clone(),
                        zone_id: event.zone_id.clone(),
                        chain_seq: None,
                        kind: "content_mismatch_on_replay".to_owned(),
                        detail: format!(
                            "stored={} incoming={}",
                            hex::encode(stored),
                            hex::encode(checked.content.sha256)
                        ),
                    });
                    done.tampered.push(n);
                }
                continue;
            }
            seq += 1;
            let content = checked.content.sha256.to_vec();
            rows.push(NewRow {
                id: event.id.clone(),
                zone_id: event.zone_id.clone(),
                event_type: event.event_type.clone(),
                request_id: event.request_id.clone(),
                decision: event.decision.clone(),
                policy_set_id: event.policy_set_id.clone(),
                policy_set_version_id: event.policy_set_version_id.clone(),
                manifest_sha: event.manifest_sha.clone(),
                evaluation_status: event.evaluation_status.clone(),
                determining_policies_json: checked.content.determining_policies_json.clone(),
                diagnostics_json: checked.content.diagnostics_json.clone(),
                metadata_json: checked.content.metadata_json.clone(),
                occurred_at: event.occurred_at,
                ingested_at,
                content_sha256: content.clone(),
                prev_content_sha256: prev.clone(),
                chain_seq: seq,
                chain_hmac: chain_key
                    .map(|k| chain_hmac(k, zone.as_str(), seq, prev.as_deref(), &content).to_vec()),
                chain_key_id: chain_key.map(|k| k.chain_key_id().to_owned()),
                ingest_signature: chain_key
                    .map(|k| ingest_signature(k, &content, &ingested_text).to_vec()),
            });
            known.insert(key, content.clone());
            prev = Some(content);
            done.inserted += 1;
        }
        ledger::insert(&mut tx, rows).await?;
        ledger::insert_alerts(&mut tx, &alerts).await?;
        tx.commit().await?;
        Ok(done)
    }
}
