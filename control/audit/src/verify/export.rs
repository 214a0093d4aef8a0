//! The export layout (storage §8.7) as written by the export leader and read by `caracal
//! audit verify --export`, in a directory or under a bucket prefix.
//!
//! ```text
//! audit/YYYY/MM/DD/YYYY-MM-DDTHH.parquet                the rows ingested in that hour (super::object)
//! audit/YYYY/MM/DD/YYYY-MM-DDTHH.parquet.manifest.json  {"object_sha256", "rows", "zones": {zone: {first_seq, last_seq, last_hash}}}
//! audit/anchors/<time>.json                             [AnchorRecord, …] kept when retention dropped rows
//! ```
//!
//! [`ManifestBuilder`] computes a manifest row by row, so the writer and the verifier
//! describe an object the same way.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use control_store::audit::rows::StoredAnchor;
use serde::{Deserialize, Serialize};

use super::{AuditRow, Link, row::hex_bytes, row::hex_option};

/// The directory of the anchor files, relative to the export root.
pub const ANCHORS_DIR: &str = "audit/anchors";

/// The object name of hour `hour` (its start), relative to the export root.
#[must_use]
pub fn object_name(hour: DateTime<Utc>) -> String {
    hour.format("audit/%Y/%m/%d/%Y-%m-%dT%H.parquet")
        .to_string()
}

/// The manifest name of `object`.
#[must_use]
pub fn manifest_name(object: &str) -> String {
    format!("{object}.manifest.json")
}

/// The name of an anchor file written at `at`.
#[must_use]
pub fn anchors_name(at: DateTime<Utc>) -> String {
    at.format("audit/anchors/%Y-%m-%dT%H%M%S%.6fZ.json")
        .to_string()
}

/// One line of an export object: the row as JSON, then a line feed.
///
/// # Errors
///
/// A row that cannot be serialised (a `serde_json` invariant failure).
pub fn to_line(row: &AuditRow) -> Result<Vec<u8>, serde_json::Error> {
    let mut line = serde_json::to_vec(row)?;
    line.push(b'\n');
    Ok(line)
}

/// The manifest of one export object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Lowercase hex SHA-256 of the object's bytes.
    pub object_sha256: String,
    /// Its number of rows (lines).
    pub rows: u64,
    /// Per zone, the first and last row of the zone in the object.
    pub zones: BTreeMap<String, ManifestZone>,
}

/// One zone's span in an export object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestZone {
    /// `chain_seq` of the zone's first row in the object.
    pub first_seq: i64,
    /// `chain_seq` of its last row.
    pub last_seq: i64,
    /// Lowercase hex `content_sha256` of its last row.
    pub last_hash: String,
}

/// Builds a [`Manifest`] from an object's rows in order and the object's SHA-256.
#[derive(Debug, Default)]
pub struct ManifestBuilder {
    rows: u64,
    zones: BTreeMap<String, ManifestZone>,
}

impl ManifestBuilder {
    /// An empty object.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds the object's next row.
    pub fn add(&mut self, row: &AuditRow) {
        self.rows += 1;
        let last_hash = hex::encode(&row.content_sha256);
        self.zones
            .entry(row.zone_id.clone())
            .and_modify(|zone| {
                zone.last_seq = row.chain_seq;
                zone.last_hash.clone_from(&last_hash);
            })
            .or_insert_with(|| ManifestZone {
                first_seq: row.chain_seq,
                last_seq: row.chain_seq,
                last_hash,
            });
    }

    /// The manifest of an object whose bytes hash to `object_sha256`.
    #[must_use]
    pub fn finish(self, object_sha256: [u8; 32]) -> Manifest {
        Manifest {
            object_sha256: hex::encode(object_sha256),
            rows: self.rows,
            zones: self.zones,
        }
    }
}

/// One anchor in `audit/anchors/*.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AnchorRecord {
    /// Zone id.
    pub zone_id: String,
    /// The dropped row's position.
    pub chain_seq: i64,
    /// Its content hash.
    #[serde(with = "hex_bytes")]
    pub content_sha256: Vec<u8>,
    /// Its chain HMAC.
    #[serde(with = "hex_option")]
    pub chain_hmac: Option<Vec<u8>>,
    /// Its chain key id.
    pub chain_key_id: Option<String>,
}

impl AnchorRecord {
    /// The link the row after the anchor is checked against.
    #[must_use]
    pub fn link(&self) -> Link {
        Link::anchor(
            self.chain_seq,
            self.content_sha256.clone(),
            self.chain_hmac.is_some(),
        )
    }
}

impl From<StoredAnchor> for AnchorRecord {
    fn from(anchor: StoredAnchor) -> Self {
        Self {
            zone_id: anchor.zone_id,
            chain_seq: anchor.chain_seq,
            content_sha256: anchor.content_sha256,
            chain_hmac: anchor.chain_hmac,
            chain_key_id: anchor.chain_key_id,
        }
    }
}

/// What an export holds: hour objects in hour order, manifests without their object, anchor
/// files, and names that do not belong to the layout.
#[derive(Debug, Default)]
pub(crate) struct ExportListing {
    pub(crate) objects: Vec<String>,
    pub(crate) orphan_manifests: Vec<String>,
    pub(crate) anchor_files: Vec<String>,
    pub(crate) problems: Vec<String>,
}

/// Sorts the names of an export (relative to its root) into the layout.
pub(crate) fn classify(names: Vec<String>) -> ExportListing {
    let mut listing = ExportListing::default();
    let mut manifests = Vec::new();
    for name in names {
        let parts: Vec<&str> = name.split('/').collect();
        match parts.as_slice() {
            ["audit", "anchors", file] if file.ends_with(".json") => {
                listing.anchor_files.push(name.clone());
            }
            ["audit", year, month, day, file] if !file.starts_with('.') => {
                if is_hour_object(file) {
                    let expected = format!(
                        "{}/{}/{}",
                        file.get(0..4).unwrap_or_default(),
                        file.get(5..7).unwrap_or_default(),
                        file.get(8..10).unwrap_or_default()
                    );
                    if format!("{year}/{month}/{day}") != expected {
                        listing.problems.push(format!(
                            "{name}: not in the directory of its hour (audit/{expected})"
                        ));
                    }
                    listing.objects.push(name.clone());
                } else if file.ends_with(".parquet.manifest.json") {
                    manifests.push(name.clone());
                } else {
                    listing
                        .problems
                        .push(format!("{name}: not an object of the export layout"));
                }
            }
            // Temporary files of an interrupted write start with a dot.
            [.., file] if file.starts_with('.') => {}
            _ => listing
                .problems
                .push(format!("{name}: not an object of the export layout")),
        }
    }
    // The file name orders objects by hour.
    listing
        .objects
        .sort_by(|a, b| file_part(a).cmp(file_part(b)));
    listing.anchor_files.sort();
    let names: std::collections::HashSet<String> = listing
        .objects
        .iter()
        .map(|object| manifest_name(object))
        .collect();
    listing.orphan_manifests = manifests
        .into_iter()
        .filter(|manifest| !names.contains(manifest))
        .collect();
    listing.orphan_manifests.sort();
    listing.problems.sort();
    listing
}

fn file_part(name: &str) -> &str {
    name.rsplit('/').next().unwrap_or(name)
}

/// `YYYY-MM-DDTHH.parquet`.
fn is_hour_object(name: &str) -> bool {
    let bytes = name.as_bytes();
    name.len() == 21
        && name.ends_with(".parquet")
        && bytes.iter().take(13).enumerate().all(|(i, b)| match i {
            4 | 7 => *b == b'-',
            10 => *b == b'T',
            _ => b.is_ascii_digit(),
        })
}

/// Adds the anchors of one anchor file (`name`, `bytes`); a file that is not an array of
/// anchors, or an anchor repeated with another hash, is a problem.
pub(crate) fn read_anchors(
    name: &str,
    bytes: &[u8],
    anchors: &mut HashMap<(String, i64), AnchorRecord>,
    problems: &mut Vec<String>,
) {
    let Ok(records) = serde_json::from_slice::<Vec<AnchorRecord>>(bytes) else {
        problems.push(format!("{name}: not a JSON array of anchors"));
        return;
    };
    for record in records {
        let key = (record.zone_id.clone(), record.chain_seq);
        match anchors.get(&key) {
            Some(known) if known.content_sha256 != record.content_sha256 => {
                problems.push(format!(
                    "{name}: anchor zone {} chain_seq {} differs from an earlier anchor",
                    record.zone_id, record.chain_seq
                ));
            }
            Some(_) => {}
            None => {
                anchors.insert(key, record);
            }
        }
    }
}
