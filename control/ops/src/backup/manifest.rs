//! `manifest.json`: what a backup archive holds and what the source looked like when it was
//! taken (storage-and-events.md §12.2). A restore checks it before touching the target; a
//! restore verification compares the restored database against it.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use control_store::{
    migrate::MigrationSet,
    ops::backup::{AppliedMigration, ChainHead, DatabaseIdentity, KeyIds, PolicyActivation},
};
use serde::{Deserialize, Serialize};

use crate::OpsError;

/// The archive format this binary writes and reads.
pub const FORMAT: u32 = 1;

/// The manifest of one archive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// [`FORMAT`].
    pub format: u32,
    /// The version of the `caracal` binary that wrote it.
    pub caracal_version: String,
    /// The database server's time at the snapshot the dump was taken from.
    pub created_at: DateTime<Utc>,
    /// The source database.
    pub source: Source,
    /// The applied migrations of the source (version → SHA-256, hex).
    pub schema: BTreeMap<i32, String>,
    /// Rows per table at the snapshot.
    pub row_counts: BTreeMap<String, i64>,
    /// The head of each zone's audit chain at the snapshot.
    pub audit_chain_heads: BTreeMap<String, Head>,
    /// `dek_id`s of sealed values: the `ZONE_KEK`s a restore needs.
    pub dek_ids: Vec<String>,
    /// `chain_key_id`s of the ledger: the audit chain keys a verification needs.
    pub chain_key_ids: Vec<String>,
    /// `gateway_binding_revision.version`.
    pub binding_revision: Option<i64>,
    /// The activation of every policy set binding, keyed `zone_id/policy_set_id`.
    pub policy_activations: BTreeMap<String, PolicyActivation>,
    /// Audit export watermarks (exports themselves are not copied: they belong in their
    /// immutable archive).
    pub export_watermarks: BTreeMap<String, Option<DateTime<Utc>>>,
    /// Whether `secrets/runtime.env` is in the archive.
    pub includes_secrets: bool,
    /// The replay volumes' `<service>-<instance>` directories in the archive.
    pub replay_dirs: Vec<String>,
}

/// The source database.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Source {
    /// Its name.
    pub database: String,
    /// The cluster's `system_identifier`.
    pub system_identifier: String,
    /// The server version.
    pub server_version: String,
}

/// A chain head.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Head {
    /// The highest `chain_seq`.
    pub chain_seq: i64,
    /// Its content hash, hex.
    pub content_sha256: String,
}

/// What the source database said, read in the dump's snapshot.
#[derive(Debug, Clone)]
pub struct SourceFacts {
    /// Name, cluster and time.
    pub identity: DatabaseIdentity,
    /// `schema_migrations`.
    pub migrations: Vec<AppliedMigration>,
    /// Rows per table.
    pub row_counts: BTreeMap<String, i64>,
    /// Chain heads.
    pub heads: Vec<ChainHead>,
    /// Key ids in use.
    pub key_ids: KeyIds,
    /// The binding revision.
    pub binding_revision: Option<i64>,
    /// The policy set activations.
    pub policy_activations: BTreeMap<String, PolicyActivation>,
    /// The export watermarks.
    pub export_watermarks: BTreeMap<String, Option<DateTime<Utc>>>,
}

impl Manifest {
    /// The manifest of an archive holding `facts`' dump.
    pub fn new(facts: SourceFacts, includes_secrets: bool, replay_dirs: Vec<String>) -> Self {
        Self {
            format: FORMAT,
            caracal_version: env!("CARGO_PKG_VERSION").to_owned(),
            created_at: facts.identity.now,
            source: Source {
                database: facts.identity.name,
                system_identifier: facts.identity.system_identifier,
                server_version: facts.identity.server_version,
            },
            schema: facts
                .migrations
                .into_iter()
                .map(|m| (m.version, hex::encode(m.checksum)))
                .collect(),
            row_counts: facts.row_counts,
            audit_chain_heads: heads(facts.heads),
            dek_ids: facts.key_ids.dek_ids,
            chain_key_ids: facts.key_ids.chain_key_ids,
            binding_revision: facts.binding_revision,
            policy_activations: facts.policy_activations,
            export_watermarks: facts.export_watermarks,
            includes_secrets,
            replay_dirs,
        }
    }

    /// Refuses an archive this binary cannot restore: another format, or a schema with a
    /// migration this binary does not embed (or embeds with another checksum).
    pub fn check_compatible(&self, binary: &MigrationSet) -> Result<(), OpsError> {
        if self.format != FORMAT {
            return Err(OpsError::Refused(format!(
                "the archive has format {}; this binary reads format {FORMAT}",
                self.format
            )));
        }
        for (version, checksum) in &self.schema {
            match binary.get(*version) {
                None => {
                    return Err(OpsError::Refused(format!(
                        "the archive's schema has migration {version:04}, which this binary \
                         ({}) does not know: restore with a newer caracal",
                        env!("CARGO_PKG_VERSION")
                    )));
                }
                Some(known) if hex::encode(known.checksum) != *checksum => {
                    return Err(OpsError::Refused(format!(
                        "migration {version:04} in the archive differs from this binary's"
                    )));
                }
                Some(_) => {}
            }
        }
        Ok(())
    }
}

/// Chain heads by zone, hashes in hex.
pub fn heads(rows: Vec<ChainHead>) -> BTreeMap<String, Head> {
    rows.into_iter()
        .map(|h| {
            (
                h.zone_id,
                Head {
                    chain_seq: h.chain_seq,
                    content_sha256: hex::encode(h.content_sha256),
                },
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(schema: BTreeMap<i32, String>) -> Manifest {
        Manifest {
            format: FORMAT,
            caracal_version: "0.1.0".to_owned(),
            created_at: Utc::now(),
            source: Source {
                database: "caracal".to_owned(),
                system_identifier: "7".to_owned(),
                server_version: "15".to_owned(),
            },
            schema,
            row_counts: BTreeMap::new(),
            audit_chain_heads: BTreeMap::new(),
            dek_ids: vec![],
            chain_key_ids: vec![],
            binding_revision: Some(1),
            policy_activations: BTreeMap::new(),
            export_watermarks: BTreeMap::new(),
            includes_secrets: false,
            replay_dirs: vec![],
        }
    }

    #[test]
    fn the_binary_restores_its_own_schema_and_refuses_a_newer_or_edited_one() {
        let binary = MigrationSet::embedded().unwrap();
        let own: BTreeMap<i32, String> = binary
            .iter()
            .map(|m| (m.version, hex::encode(m.checksum)))
            .collect();
        manifest(own.clone()).check_compatible(&binary).unwrap();

        let mut newer = own.clone();
        newer.insert(binary.latest() + 1, "00".repeat(32));
        let error = manifest(newer).check_compatible(&binary).unwrap_err();
        assert!(error.to_string().contains("does not know"), "{error}");

        let mut edited = own;
        edited.insert(1, "ff".repeat(32));
        let error = manifest(edited).check_compatible(&binary).unwrap_err();
        assert!(
            error.to_string().contains("0001 in the archive differs"),
            "{error}"
        );

        let mut other_format = manifest(BTreeMap::new());
        other_format.format = 2;
        assert!(other_format.check_compatible(&binary).is_err());
    }

    #[test]
    fn the_manifest_round_trips_through_json() {
        let m = manifest(BTreeMap::from([(1, "ab".repeat(32))]));
        let json = serde_json::to_vec(&m).unwrap();
        let back: Manifest = serde_json::from_slice(&json).unwrap();
        assert_eq!(back, m);
    }
}
