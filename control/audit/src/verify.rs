//! The checks of the audit chain (storage §8.6, §8.8), with no I/O: shared by the tamper
//! sweep (`sweep`), the offline verifier (`caracal audit verify`, [`offline`]) and the
//! published test vectors.
//!
//! A [`Verifier`] is fed rows chain by chain in `chain_seq` order (the chain is the zone,
//! or `*` for global admin actions). For each row it recomputes the content hash, checks the
//! link to the previous row of its chain (given by the caller when the window starts
//! mid-chain, or an anchor kept by retention), the sequence number, the chain HMAC with the
//! key named by `chain_key_id`, and the ingest signature. Without a key the HMAC and
//! signature checks are counted as skipped, never as passed. Findings name the row and the
//! check, and carry hashes in hex: never event content.
//!
//! Start reading at [`Verifier::check`]; the row types and their line format are in [`row`],
//! the export layout in [`export`], the command in [`offline`].

pub mod export;
pub mod object;
pub mod offline;
pub mod row;

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use control_crypto::{CanonicalError, HmacKey, chain_hmac, ct_eq, ingest_signature};
use serde::{Deserialize, Serialize};

pub use export::{AnchorRecord, Manifest, ManifestZone};
pub use offline::{
    EXIT_CLEAN, EXIT_ERROR, EXIT_FINDINGS, OfflineArgs, Report, VerifyError, offline,
    offline_with_env,
};
pub use row::{AdminRow, AuditRow};

use crate::{canonical::format_time, config::LedgerKeys};

/// The checks' outcomes that are tamper evidence: exactly the alert kinds of storage §8.6.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FindingKind {
    /// The content hash recomputed from the row differs from `content_sha256`.
    ContentMismatch,
    /// `prev_content_sha256` is not the previous row's content hash (or is set on row 1).
    ChainBreak,
    /// `chain_seq` does not follow the previous row's, and no anchor bridges the gap.
    SequenceGap,
    /// `chain_hmac` does not verify (or is missing in a keyed chain).
    HmacMismatch,
    /// `chain_key_id` names a key that is not configured.
    UnknownKeyId,
    /// `ingest_signature` does not verify (or is missing on a keyed row).
    IngestSignatureMismatch,
    /// Another row has the same `id`.
    DuplicateEventId,
}

impl FindingKind {
    /// Every kind, in the order of the table in storage §8.6.
    pub const ALL: [Self; 7] = [
        Self::ContentMismatch,
        Self::ChainBreak,
        Self::SequenceGap,
        Self::HmacMismatch,
        Self::UnknownKeyId,
        Self::IngestSignatureMismatch,
        Self::DuplicateEventId,
    ];

    /// The alert kind as stored in `audit_ingest_alerts.kind`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ContentMismatch => "content_mismatch",
            Self::ChainBreak => "chain_break",
            Self::SequenceGap => "sequence_gap",
            Self::HmacMismatch => "hmac_mismatch",
            Self::UnknownKeyId => "unknown_key_id",
            Self::IngestSignatureMismatch => "ingest_signature_mismatch",
            Self::DuplicateEventId => "duplicate_event_id",
        }
    }
}

impl std::fmt::Display for FindingKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One piece of tamper evidence about one row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    /// What failed.
    pub kind: FindingKind,
    /// The row's zone (`*` for a global admin action).
    pub zone_id: String,
    /// The row's id.
    pub event_id: String,
    /// The row's `chain_seq`.
    pub chain_seq: i64,
    /// Why, with hashes in hex; never event content.
    pub detail: String,
}

impl Finding {
    /// The finding as an `audit_ingest_alerts` row.
    #[must_use]
    pub fn to_alert(&self) -> control_store::audit::ledger::Alert {
        control_store::audit::ledger::Alert {
            event_id: self.event_id.clone(),
            zone_id: self.zone_id.clone(),
            chain_seq: Some(self.chain_seq),
            kind: self.kind.as_str().to_owned(),
            detail: self.detail.clone(),
        }
    }
}

/// The keys a verifier may find named by `chain_key_id`.
#[derive(Clone, Default)]
pub struct Keyring {
    keys: Vec<HmacKey>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.keys.iter().map(HmacKey::chain_key_id))
            .finish()
    }
}

impl Keyring {
    /// A keyring of `keys` (repeats are kept once).
    #[must_use]
    pub fn new(keys: impl IntoIterator<Item = HmacKey>) -> Self {
        let mut ring = Self::default();
        for key in keys {
            ring.add(key);
        }
        ring
    }

    /// Every key of the ledger's configuration: the chain key, the producer keys (the admin
    /// chain is keyed with `AUDIT_HMAC_KEY`) and `AUDIT_HMAC_KEYRING_FILE`.
    #[must_use]
    pub fn from_ledger_keys(keys: &LedgerKeys) -> Self {
        Self::new(
            keys.chain
                .iter()
                .chain(keys.producer.iter())
                .chain(keys.producer_previous.iter())
                .chain(keys.retired.iter())
                .cloned(),
        )
    }

    /// Adds `key` unless a key with its id is already there.
    pub fn add(&mut self, key: HmacKey) {
        if self.find(key.chain_key_id()).is_none() {
            self.keys.push(key);
        }
    }

    /// The key whose id is `key_id`.
    #[must_use]
    pub fn find(&self, key_id: &str) -> Option<&HmacKey> {
        self.keys.iter().find(|key| key.chain_key_id() == key_id)
    }

    /// Whether no key is configured (HMAC checks are then skipped).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// How many keys it holds.
    #[must_use]
    pub fn len(&self) -> usize {
        self.keys.len()
    }
}

/// The ledger's ingest signature columns of a row.
#[derive(Debug, Clone, Copy)]
pub struct IngestColumns<'a> {
    /// `ingest_signature`.
    pub signature: Option<&'a [u8]>,
    /// `ingested_at`.
    pub ingested_at: DateTime<Utc>,
}

/// What the verifier needs of a chained row: implemented by [`AuditRow`] and [`AdminRow`].
pub trait ChainRow {
    /// The chain: the zone id, or `*` for global admin actions.
    fn chain(&self) -> &str;
    /// The row's id.
    fn event_id(&self) -> &str;
    /// `chain_seq`.
    fn chain_seq(&self) -> i64;
    /// `hash_version`.
    fn hash_version(&self) -> i16;
    /// The stored `content_sha256`.
    fn content_sha256(&self) -> &[u8];
    /// `prev_content_sha256`.
    fn prev_content_sha256(&self) -> Option<&[u8]>;
    /// `chain_hmac`.
    fn chain_hmac(&self) -> Option<&[u8]>;
    /// `chain_key_id`.
    fn chain_key_id(&self) -> Option<&str>;
    /// The content hash recomputed from the row's members.
    ///
    /// # Errors
    ///
    /// [`CanonicalError`] when the members cannot be serialised canonically.
    fn recompute_content(&self) -> Result<[u8; 32], CanonicalError>;
    /// The ingest signature columns; `None` for chains without them (the admin chain).
    fn ingest(&self) -> Option<IngestColumns<'_>>;
}

/// Where a chain link came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkOrigin {
    /// A stored row (checked earlier, or fetched as a window's predecessor).
    Row,
    /// An anchor kept when retention dropped the row (storage §5.3).
    Anchor,
}

/// What a row hands to its successor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// Its `chain_seq`.
    pub chain_seq: i64,
    /// Its stored content hash.
    pub content_sha256: Vec<u8>,
    /// Whether it carried a chain HMAC (a keyed chain does not lose its HMACs).
    pub keyed: bool,
    /// Row or anchor.
    pub origin: LinkOrigin,
}

impl Link {
    /// The link of a stored row.
    #[must_use]
    pub fn of<R: ChainRow + ?Sized>(row: &R) -> Self {
        Self {
            chain_seq: row.chain_seq(),
            content_sha256: row.content_sha256().to_vec(),
            keyed: row.chain_hmac().is_some(),
            origin: LinkOrigin::Row,
        }
    }

    /// The link of an anchor.
    #[must_use]
    pub fn anchor(chain_seq: i64, content_sha256: Vec<u8>, keyed: bool) -> Self {
        Self {
            chain_seq,
            content_sha256,
            keyed,
            origin: LinkOrigin::Anchor,
        }
    }
}

/// What was checked and what could not be.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tally {
    /// Rows checked.
    pub rows: u64,
    /// Chain HMACs that verified.
    pub hmac_verified: u64,
    /// Chain HMACs not checked: no key configured, or a row of an unkeyed chain.
    pub hmac_skipped: u64,
    /// Ingest signatures that verified.
    pub signatures_verified: u64,
    /// Ingest signatures not checked (no key, or the key is unknown).
    pub signatures_skipped: u64,
    /// Gaps bridged by an anchor.
    pub anchors_used: u64,
    /// Chains whose first row seen has no predecessor in the source (file sources only).
    pub partial_starts: u64,
}

/// The stateful checker: one link per chain, fed rows in `(chain, chain_seq)` order.
#[derive(Debug)]
pub struct Verifier {
    keys: Keyring,
    links: HashMap<String, Link>,
    tally: Tally,
    accept_partial_starts: bool,
    starts: Vec<(String, i64)>,
}

/// How many partial starts are kept by name.
const MAX_NAMED_STARTS: usize = 100;

impl Verifier {
    /// A verifier with `keys` (empty: HMAC and signature checks are skipped and counted).
    #[must_use]
    pub fn new(keys: Keyring) -> Self {
        Self {
            keys,
            links: HashMap::new(),
            tally: Tally::default(),
            accept_partial_starts: false,
            starts: Vec::new(),
        }
    }

    /// For file sources (a dump or an export that begins mid-chain): the first row seen of a
    /// chain, when nothing precedes it in the source, is taken as the chain's start and
    /// counted in [`Tally::partial_starts`] instead of being a `sequence_gap`. A gap after
    /// it is still a gap.
    #[must_use]
    pub fn accepting_partial_starts(mut self) -> Self {
        self.accept_partial_starts = true;
        self
    }

    /// Whether the caller should look up the row `chain_seq − 1` (or its anchor) and
    /// [`seed`](Self::seed) it before [`check`](Self::check): the row is not its chain's
    /// first and its predecessor was not the last row seen.
    #[must_use]
    pub fn needs_predecessor<R: ChainRow + ?Sized>(&self, row: &R) -> bool {
        let seq = row.chain_seq();
        seq > 1
            && self
                .links
                .get(row.chain())
                .is_none_or(|link| link.chain_seq < seq - 1)
    }

    /// Sets the link `chain`'s next row is checked against: a known predecessor (a window
    /// starting mid-chain) or an anchor.
    pub fn seed(&mut self, chain: &str, link: Link) {
        self.links.insert(chain.to_owned(), link);
    }

    /// Takes `row` as its chain's latest link without checking it (a row before the window
    /// of `--since` or `--from-seq` in a file source).
    pub fn pass_over<R: ChainRow + ?Sized>(&mut self, row: &R) {
        self.links.insert(row.chain().to_owned(), Link::of(row));
    }

    /// What was checked so far.
    #[must_use]
    pub fn tally(&self) -> &Tally {
        &self.tally
    }

    /// How many chains were seen.
    #[must_use]
    pub fn chains(&self) -> usize {
        self.links.len()
    }

    /// The first partial starts (chain, `chain_seq`), see
    /// [`accepting_partial_starts`](Self::accepting_partial_starts).
    #[must_use]
    pub fn partial_starts(&self) -> &[(String, i64)] {
        &self.starts
    }

    /// Runs every check of storage §8.6 on `row` and makes it its chain's latest link.
    pub fn check<R: ChainRow + ?Sized>(&mut self, row: &R) -> Vec<Finding> {
        let mut found = Vec::new();
        let mut finding = |kind: FindingKind, detail: String| {
            found.push(Finding {
                kind,
                zone_id: row.chain().to_owned(),
                event_id: row.event_id().to_owned(),
                chain_seq: row.chain_seq(),
                detail,
            });
        };
        self.tally.rows += 1;
        let seq = row.chain_seq();
        let stored = row.content_sha256();
        let prev = row.prev_content_sha256();

        // The content hash (§8.2).
        if row.hash_version() == 1 {
            match row.recompute_content() {
                Ok(hash) if ct_eq(&hash, stored) => {}
                Ok(hash) => finding(
                    FindingKind::ContentMismatch,
                    format!(
                        "stored={} recomputed={}",
                        hex::encode(stored),
                        hex::encode(hash)
                    ),
                ),
                Err(CanonicalError) => finding(
                    FindingKind::ContentMismatch,
                    "the members cannot be serialised canonically".to_owned(),
                ),
            }
        } else {
            finding(
                FindingKind::ContentMismatch,
                format!("unknown hash_version {}", row.hash_version()),
            );
        }

        // The link and the sequence.
        let previous = self.links.get(row.chain());
        if seq == 1 && prev.is_some() {
            finding(
                FindingKind::ChainBreak,
                "chain_seq 1 has a prev_content_sha256".to_owned(),
            );
        }
        match previous {
            Some(link) if link.chain_seq.checked_add(1) == Some(seq) => {
                let linked = prev.is_some_and(|prev| ct_eq(prev, &link.content_sha256));
                match (linked, link.origin) {
                    (true, LinkOrigin::Anchor) => self.tally.anchors_used += 1,
                    (true, LinkOrigin::Row) => {}
                    (false, LinkOrigin::Row) => finding(
                        FindingKind::ChainBreak,
                        format!(
                            "prev_content_sha256={} expected={}",
                            hex_or_null(prev),
                            hex::encode(&link.content_sha256)
                        ),
                    ),
                    (false, LinkOrigin::Anchor) => finding(
                        FindingKind::SequenceGap,
                        format!(
                            "prev_content_sha256={} differs from the anchor of chain_seq {} ({})",
                            hex_or_null(prev),
                            link.chain_seq,
                            hex::encode(&link.content_sha256)
                        ),
                    ),
                }
            }
            Some(link) => finding(
                FindingKind::SequenceGap,
                format!("chain_seq {seq} follows chain_seq {}", link.chain_seq),
            ),
            None if seq == 1 => {}
            None if seq < 1 => finding(
                FindingKind::SequenceGap,
                format!("chain_seq {seq} is below 1"),
            ),
            None if self.accept_partial_starts => {
                self.tally.partial_starts += 1;
                if self.starts.len() < MAX_NAMED_STARTS {
                    self.starts.push((row.chain().to_owned(), seq));
                }
            }
            None => finding(
                FindingKind::SequenceGap,
                format!("no row and no anchor at chain_seq {}", seq - 1),
            ),
        }

        // The chain HMAC (§8.3).
        let keyed_before = previous.is_some_and(|link| link.keyed);
        let ingest = row.ingest();
        let mut signing_key: Option<&HmacKey> = None;
        match (row.chain_hmac(), row.chain_key_id()) {
            (None, key_id) => {
                if keyed_before
                    || key_id.is_some()
                    || ingest.is_some_and(|columns| columns.signature.is_some())
                {
                    finding(
                        FindingKind::HmacMismatch,
                        "chain_hmac is missing in a keyed chain".to_owned(),
                    );
                } else {
                    self.tally.hmac_skipped += 1;
                }
            }
            (Some(_), None) => finding(
                FindingKind::UnknownKeyId,
                "chain_hmac without chain_key_id".to_owned(),
            ),
            (Some(_), Some(_)) if self.keys.is_empty() => self.tally.hmac_skipped += 1,
            (Some(tag), Some(key_id)) => match self.keys.find(key_id) {
                None => finding(
                    FindingKind::UnknownKeyId,
                    format!("chain_key_id {key_id} is not configured"),
                ),
                Some(key) => {
                    signing_key = Some(key);
                    let expected = chain_hmac(key, row.chain(), seq, prev, stored);
                    if ct_eq(&expected, tag) {
                        self.tally.hmac_verified += 1;
                    } else {
                        finding(
                            FindingKind::HmacMismatch,
                            format!("chain_hmac does not verify with key {key_id}"),
                        );
                    }
                }
            },
        }

        // The ingest signature (§8.3; audit rows only).
        if let Some(columns) = ingest {
            match (columns.signature, signing_key) {
                (None, _) if row.chain_hmac().is_some() => finding(
                    FindingKind::IngestSignatureMismatch,
                    "ingest_signature is missing on a keyed row".to_owned(),
                ),
                (None, _) | (Some(_), None) => self.tally.signatures_skipped += 1,
                (Some(signature), Some(key)) => {
                    let expected = ingest_signature(key, stored, &format_time(columns.ingested_at));
                    if ct_eq(&expected, signature) {
                        self.tally.signatures_verified += 1;
                    } else {
                        finding(
                            FindingKind::IngestSignatureMismatch,
                            format!(
                                "ingest_signature does not verify with key {}",
                                key.chain_key_id()
                            ),
                        );
                    }
                }
            }
        }

        self.links.insert(row.chain().to_owned(), Link::of(row));
        found
    }
}

/// Repeated ids in a file source (a database source asks the id index instead).
#[derive(Debug, Default)]
pub struct SeenIds {
    seen: HashSet<String>,
}

impl SeenIds {
    /// Records `row`'s id; a `duplicate_event_id` finding when it was seen before.
    pub fn observe<R: ChainRow + ?Sized>(&mut self, row: &R) -> Option<Finding> {
        if self.seen.insert(row.event_id().to_owned()) {
            None
        } else {
            Some(duplicate(row))
        }
    }
}

/// The `duplicate_event_id` finding for `row`.
#[must_use]
pub fn duplicate<R: ChainRow + ?Sized>(row: &R) -> Finding {
    Finding {
        kind: FindingKind::DuplicateEventId,
        zone_id: row.chain().to_owned(),
        event_id: row.event_id().to_owned(),
        chain_seq: row.chain_seq(),
        detail: "another row has the same id".to_owned(),
    }
}

fn hex_or_null(bytes: Option<&[u8]>) -> String {
    bytes.map_or_else(|| "null".to_owned(), hex::encode)
}

#[cfg(test)]
mod tests;
