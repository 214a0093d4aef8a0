//! Per-zone policy bundles for the STS (authority §5.2, §5.6, §5.7): built off the request
//! path, swapped in one store, pinned once per exchange.
//!
//! Loading happens at start-up for every bound zone, on a poll of the bindings that heals
//! missed messages, and read-through for a zone first seen on a request. A zone without an
//! active binding gets the deny-all fallback; a binding whose version fails to load keeps
//! the zone's previous bundle, and with none every evaluation in the zone fails (503).

use std::{collections::HashMap, sync::Arc};

use arc_swap::ArcSwap;
use control_events::presence::{LoadState, PolicyStatus, StatusReporter};
use control_model::ZoneId;
use control_policy::{Bundle, BundleSource, PolicyConfig, PolicyDocument};
use control_store::{
    policy_sets::{self, ActiveBinding},
    zone::{cross_zone_read, zone_tx},
};
use sqlx::{PgConnection, PgPool};

use crate::error::StsError;

/// What a zone's slot holds.
#[derive(Clone)]
enum Slot {
    /// The bundle to evaluate with (possibly the deny-all fallback).
    Ready(Arc<Bundle>),
    /// The bound version failed to load and no earlier bundle exists.
    Failed(Arc<str>),
}

/// The bundle cache.
pub(crate) struct Bundles {
    pool: PgPool,
    config: PolicyConfig,
    deny_all: Arc<Bundle>,
    zones: ArcSwap<HashMap<String, Slot>>,
    reporter: StatusReporter,
}

impl Bundles {
    /// Every load attempt of a bound version is reported through `reporter` (authority §5.7).
    pub(crate) fn new(pool: PgPool, config: PolicyConfig, reporter: StatusReporter) -> Self {
        Self {
            pool,
            config,
            deny_all: Arc::new(Bundle::deny_all()),
            zones: ArcSwap::from_pointee(HashMap::new()),
            reporter,
        }
    }

    /// The zone's current bundle, loading it on first sight.
    pub(crate) async fn pinned(&self, zone: &ZoneId) -> Result<Arc<Bundle>, StsError> {
        let slot = self.zones.load().get(zone.as_str()).cloned();
        let slot = match slot {
            Some(slot) => slot,
            None => self.load_zone(zone).await?,
        };
        match slot {
            Slot::Ready(bundle) => Ok(bundle),
            Slot::Failed(error) => Err(StsError::PolicyEngine(format!(
                "no loadable bundle for zone {zone}: {error}"
            ))),
        }
    }

    /// Re-reads one zone's binding and rebuilds its bundle (on `caracal.policy.invalidate`).
    pub(crate) async fn refresh_zone(&self, zone: &ZoneId) -> Result<(), StsError> {
        self.load_zone(zone).await.map(|_slot| ())
    }

    /// Reads the zone's active binding, builds (or falls back) and stores the slot.
    async fn load_zone(&self, zone: &ZoneId) -> Result<Slot, StsError> {
        let mut tx = zone_tx(&self.pool, zone).await?;
        let binding = policy_sets::active_bindings(&mut tx)
            .await?
            .into_iter()
            .next();
        let slot = self.build_slot(&mut tx, zone.as_str(), binding).await;
        tx.commit().await?;
        self.store(zone.as_str(), slot.clone());
        Ok(slot)
    }

    /// Re-reads every active binding and rebuilds the zones whose version changed. Errors
    /// keep the cached bundles (a transient database error must not drop policy).
    pub(crate) async fn refresh_all(&self) -> Result<(), StsError> {
        let mut read = cross_zone_read(&self.pool).await?;
        let bindings = policy_sets::active_bindings(&mut read).await?;
        read.finish().await?;
        let current = self.zones.load_full();
        // Zones that lost their binding fall back to deny-all.
        for zone in current.keys() {
            if !bindings.iter().any(|b| &b.zone_id == zone) && !self.is_deny_all(current.get(zone))
            {
                self.store(zone, Slot::Ready(self.deny_all.clone()));
            }
        }
        for binding in bindings {
            let unchanged = matches!(current.get(&binding.zone_id),
                Some(Slot::Ready(b)) if b.provenance().policy_set_version_id == binding.policy_set_version_id);
            if unchanged {
                continue;
            }
            let Ok(zone) = ZoneId::parse(&binding.zone_id) else {
                continue;
            };
            let mut tx = zone_tx(&self.pool, &zone).await?;
            let zone_name = binding.zone_id.clone();
            let slot = self.build_slot(&mut tx, &zone_name, Some(binding)).await;
            tx.commit().await?;
            self.store(&zone_name, slot);
        }
        Ok(())
    }

    fn is_deny_all(&self, slot: Option<&Slot>) -> bool {
        matches!(slot, Some(Slot::Ready(b)) if Arc::ptr_eq(b, &self.deny_all))
    }

    /// Builds the slot for a binding; on failure keeps the previous bundle if there is one.
    async fn build_slot(
        &self,
        conn: &mut PgConnection,
        zone: &str,
        binding: Option<ActiveBinding>,
    ) -> Slot {
        let Some(binding) = binding else {
            return Slot::Ready(self.deny_all.clone());
        };
        match self.build(conn, &binding).await {
            Ok(bundle) => {
                tracing::info!(zone, version = %binding.policy_set_version_id, "policy bundle loaded");
                self.reporter.report(
                    zone,
                    PolicyStatus::new(
                        &binding.policy_set_version_id,
                        &bundle.provenance().manifest_sha256,
                        LoadState::Loaded,
                        None,
                    ),
                );
                Slot::Ready(Arc::new(bundle))
            }
            Err(error) => {
                tracing::warn!(zone, version = %binding.policy_set_version_id, %error, "policy bundle rejected");
                self.reporter.report(
                    zone,
                    PolicyStatus::new(
                        &binding.policy_set_version_id,
                        "",
                        LoadState::Failed,
                        Some(error.clone()),
                    ),
                );
                match self.zones.load().get(zone) {
                    Some(Slot::Ready(previous)) if !Arc::ptr_eq(previous, &self.deny_all) => {
                        Slot::Ready(previous.clone())
                    }
                    _ => Slot::Failed(Arc::from(error.as_str())),
                }
            }
        }
    }

    async fn build(
        &self,
        conn: &mut PgConnection,
        binding: &ActiveBinding,
    ) -> Result<Bundle, String> {
        let version = policy_sets::set_version(conn, &binding.policy_set_version_id)
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| "active version not found".to_owned())?;
        let manifest: Vec<String> = version
            .manifest_json
            .as_array()
            .ok_or_else(|| "manifest is not an array".to_owned())?
            .iter()
            .map(|entry| {
                entry
                    .get("policy_version_id")
                    .and_then(|v| v.as_str())
                    .map(str::to_owned)
                    .ok_or_else(|| "manifest entry without policy_version_id".to_owned())
            })
            .collect::<Result<_, _>>()?;
        let rows = policy_sets::policy_versions(conn, &manifest)
            .await
            .map_err(|e| e.to_string())?;
        let documents = rows
            .into_iter()
            .map(|row| PolicyDocument {
                id: row.id,
                content: row.content,
                content_sha256: row.content_sha256,
                schema_version: row.schema_version,
            })
            .collect();
        let source = BundleSource {
            policy_set_id: binding.policy_set_id.clone(),
            policy_set_version_id: version.id,
            manifest,
            manifest_sha256: version.manifest_sha256,
            documents,
        };
        let config = self.config;
        tokio::task::spawn_blocking(move || Bundle::build(source, &config))
            .await
            .map_err(|e| format!("bundle build task failed: {e}"))?
            .map_err(|e| e.to_string())
    }

    fn store(&self, zone: &str, slot: Slot) {
        self.zones.rcu(|current| {
            let mut next = HashMap::clone(current);
            next.insert(zone.to_owned(), slot.clone());
            next
        });
    }

    /// Runs [`Bundles::refresh_all`] every `interval` until `shutdown`, the first time one
    /// interval after start.
    pub(crate) async fn poll(
        self: Arc<Self>,
        interval: std::time::Duration,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) {
        // The first round ran before the replica started serving (`start_with_listener`).
        loop {
            tokio::select! {
                () = tokio::time::sleep(interval) => {}
                _ = shutdown.changed() => return,
            }
            if let Err(error) = self.refresh_all().await {
                tracing::warn!(%error, "policy poll failed; keeping cached bundles");
            }
        }
    }
}
