//! The export layout (storage §8.7) as written by the export leader and read by `caracal
//! audit verify --export`.
//!
//! ```text
//! audit/YYYY/MM/DD/YYYY-MM-DDTHH.ndjson                one AuditRow per line, ingested in that hour
//! audit/YYYY/MM/DD/YYYY-MM-DDTHH.ndjson.manifest.json  {"object_sha256", "rows", "zones": {zone: {first_seq, last_seq, last_hash}}}
//! audit/anchors/<time>.json                            [AnchorRecord, …] kept when retention dropped rows
//! ```
//!
//! [`ManifestBuilder`] computes a manifest line by line, so the writer and the verifier
//! describe an object the same way.

use std::{
    collections::{BTreeMap, HashMap},
    path::{Path, PathBuf},
};

use chrono::{DateTime, Utc};
use control_store::audit::rows::StoredAnchor;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{AuditRow, Link, row::hex_bytes, row::hex_option};

/// The directory of the anchor files, relative to the export root.
pub const ANCHORS_DIR: &str = "audit/anchors";

/// The object name of hour `hour` (its start), relative to the export root.
#[must_use]
pub fn object_name(hour: DateTime<Utc>) -> String {
    hour.format("audit/%Y/%m/%d/%Y-%m-%dT%H.ndjson").to_string()
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

/// Builds a [`Manifest`] from an object's lines in order.
#[derive(Debug, Default)]
pub struct ManifestBuilder {
    hasher: Sha256,
    rows: u64,
    zones: BTreeMap<String, ManifestZone>,
}

impl ManifestBuilder {
    /// An empty object.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds bytes of the object that are not a row (a blank line).
    pub fn add_bytes(&mut self, bytes: &[u8]) {
        self.hasher.update(bytes);
    }

    /// Adds one line (its exact bytes, with the line feed) and the row it holds.
    pub fn add_line(&mut self, line: &[u8], row: &AuditRow) {
        self.hasher.update(line);
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

    /// The manifest.
    #[must_use]
    pub fn finish(self) -> Manifest {
        Manifest {
            object_sha256: hex::encode(self.hasher.finalize()),
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

/// An hour object found under the export root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HourObject {
    /// Its name relative to the root, `/`-separated.
    pub(crate) name: String,
    /// Its path.
    pub(crate) path: PathBuf,
}

/// What the export root holds: hour objects in hour order, manifests without their
/// object, and the anchors.
#[derive(Debug, Default)]
pub(crate) struct ExportListing {
    pub(crate) objects: Vec<HourObject>,
    pub(crate) orphan_manifests: Vec<String>,
    pub(crate) anchors: HashMap<(String, i64), AnchorRecord>,
    pub(crate) problems: Vec<String>,
}

/// Lists `root`'s hour objects, manifests and anchors.
pub(crate) fn list(root: &Path) -> std::io::Result<ExportListing> {
    let mut listing = ExportListing::default();
    let mut manifests = Vec::new();
    let audit = root.join("audit");
    let mut pending = vec![(audit, "audit".to_owned(), 0usize)];
    while let Some((dir, name, depth)) = pending.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            let file_name = entry.file_name().to_string_lossy().into_owned();
            let relative = format!("{name}/{file_name}");
            let file_type = entry.file_type()?;
            if file_type.is_dir() {
                if depth == 0 && file_name == "anchors" {
                    read_anchors(&entry.path(), &mut listing)?;
                } else if depth < 3 {
                    pending.push((entry.path(), relative, depth + 1));
                }
            } else if depth == 3 && is_hour_object(&file_name) {
                listing.objects.push(HourObject {
                    name: relative,
                    path: entry.path(),
                });
            } else if depth == 3 && file_name.ends_with(".ndjson.manifest.json") {
                manifests.push(relative);
            }
        }
    }
    // The file name orders objects by hour; the directories must agree with it.
    listing
        .objects
        .sort_by(|a, b| file_part(&a.name).cmp(file_part(&b.name)));
    for object in &listing.objects {
        let file = file_part(&object.name);
        let expected = format!(
            "audit/{}/{}/{}/{file}",
            file.get(0..4).unwrap_or_default(),
            file.get(5..7).unwrap_or_default(),
            file.get(8..10).unwrap_or_default()
        );
        if object.name != expected {
            listing.problems.push(format!(
                "{}: not in the directory of its hour ({expected})",
                object.name
            ));
        }
    }
    let names: std::collections::HashSet<String> = listing
        .objects
        .iter()
        .map(|object| manifest_name(&object.name))
        .collect();
    listing.orphan_manifests = manifests
        .into_iter()
        .filter(|manifest| !names.contains(manifest))
        .collect();
    listing.orphan_manifests.sort();
    Ok(listing)
}

fn file_part(name: &str) -> &str {
    name.rsplit('/').next().unwrap_or(name)
}

/// `YYYY-MM-DDTHH.ndjson`.
fn is_hour_object(name: &str) -> bool {
    let bytes = name.as_bytes();
    name.len() == 20
        && name.ends_with(".ndjson")
        && bytes.iter().take(13).enumerate().all(|(i, b)| match i {
            4 | 7 => *b == b'-',
            10 => *b == b'T',
            _ => b.is_ascii_digit(),
        })
}

/// Reads every `*.json` anchor file of `dir`; a file that is not an array of anchors, or an
/// anchor repeated with another hash, is a problem.
fn read_anchors(dir: &Path, listing: &mut ExportListing) -> std::io::Result<()> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .map(|entry| entry.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    files.sort();
    for path in files {
        if path.extension().is_none_or(|ext| ext != "json") {
            continue;
        }
        let name = format!(
            "{ANCHORS_DIR}/{}",
            path.file_name()
                .map(|n| n.to_string_lossy())
                .unwrap_or_default()
        );
        let bytes = std::fs::read(&path)?;
        let Ok(records) = serde_json::from_slice::<Vec<AnchorRecord>>(&bytes) else {
            listing
                .problems
                .push(format!("{name}: not a JSON array of anchors"));
            continue;
        };
        for record in records {
            let key = (record.zone_id.clone(), record.chain_seq);
            match listing.anchors.get(&key) {
                Some(known) if known.content_sha256 != record.content_sha256 => {
                    listing.problems.push(format!(
                        "{name}: anchor zone {} chain_seq {} differs from an earlier anchor",
                        record.zone_id, record.chain_seq
                    ));
                }
                Some(_) => {}
                None => {
                    listing.anchors.insert(key, record);
                }
            }
        }
    }
    Ok(())
}
