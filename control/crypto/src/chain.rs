//! The hash chain of the audit ledger and the admin audit log (storage §8.2, §8.3, §8.7).
//!
//! A row's `content_sha256` is SHA-256 over a domain string, a line feed and the RFC 8785
//! (JCS) bytes of its canonical members. Rows are chained per chain key (a zone id, or `*`
//! for the global admin chain): each names its predecessor's content hash and carries
//! `chain_hmac = HMAC-SHA256(K, "caracal.audit.chain.v1" LF chain LF seq LF hex(prev) LF
//! hex(content))`, so renumbering, reordering or moving rows between chains is detected.

use sha2::{Digest, Sha256};

use crate::mac::{HmacKey, hmac_sha256};

/// Domain of audit-ledger content hashes.
pub const AUDIT_CONTENT_DOMAIN: &str = "caracal.audit.v1";
/// Domain of admin-audit content hashes.
pub const ADMIN_AUDIT_CONTENT_DOMAIN: &str = "caracal.admin_audit.v1";
/// Domain of chain HMACs.
pub const CHAIN_DOMAIN: &str = "caracal.audit.chain.v1";
/// Domain of the ledger's ingest signatures.
pub const INGEST_DOMAIN: &str = "caracal.audit.ingest.v1";

/// The canonical members could not be serialised (a non-finite number cannot occur in a
/// `serde_json::Value`, so this is an invariant failure).
#[derive(Debug, thiserror::Error)]
#[error("canonical JSON serialisation failed")]
pub struct CanonicalError;

/// `SHA-256(domain LF JCS(members))`.
///
/// # Errors
///
/// [`CanonicalError`] if the value cannot be serialised canonically.
pub fn content_sha256(
    domain: &str,
    members: &serde_json::Value,
) -> Result<[u8; 32], CanonicalError> {
    let canonical =
        serde_json_canonicalizer::to_vec(members).map_err(|_unserialisable| CanonicalError)?;
    Ok(canonical_sha256(domain, &canonical))
}

/// `SHA-256(domain LF canonical)` for members the caller already wrote as JCS bytes.
#[must_use]
pub fn canonical_sha256(domain: &str, canonical: &[u8]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(domain.as_bytes());
    hasher.update(b"\n");
    hasher.update(canonical);
    hasher.finalize().into()
}

/// The chain HMAC of row `seq` in chain `chain` (a zone id or `*`).
pub fn chain_hmac(
    key: &HmacKey,
    chain: &str,
    seq: i64,
    prev: Option<&[u8]>,
    content: &[u8],
) -> [u8; 32] {
    let seq = seq.to_string();
    let prev = prev.map(hex::encode).unwrap_or_default();
    let content = hex::encode(content);
    hmac_sha256(
        key,
        &[
            CHAIN_DOMAIN.as_bytes(),
            b"\n",
            chain.as_bytes(),
            b"\n",
            seq.as_bytes(),
            b"\n",
            prev.as_bytes(),
            b"\n",
            content.as_bytes(),
        ],
    )
}

/// The ledger's signature over a row's content hash and its `ingested_at` (rendered
/// `YYYY-MM-DDTHH:MM:SS.ffffffZ`): `HMAC-SHA256(K, "caracal.audit.ingest.v1" LF hex(content)
/// LF ingested_at)`.
pub fn ingest_signature(key: &HmacKey, content: &[u8], ingested_at: &str) -> [u8; 32] {
    let content = hex::encode(content);
    hmac_sha256(
        key,
        &[
            INGEST_DOMAIN.as_bytes(),
            b"\n",
            content.as_bytes(),
            b"\n",
            ingested_at.as_bytes(),
        ],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vector_key() -> HmacKey {
        let bytes: Vec<u8> = (0u8..32).collect();
        HmacKey::from_bytes(&bytes).unwrap()
    }

    /// The chain vector of storage §8.7: zone-1, the first event.
    #[test]
    fn chain_hmac_and_key_id_match_the_published_vector() {
        let key = vector_key();
        let content =
            hex::decode("66d38c79d34c405c0a96983845cfb56bc5f703b9991bb4ae5df944e2365ff2fb")
                .unwrap();
        let tag = chain_hmac(&key, "zone-1", 1, None, &content);
        assert_eq!(
            hex::encode(tag),
            "24bab472817576294a9f8423cb8ced8ba2df503fa5df8b29ea982df02ceeb577"
        );
        assert_eq!(key.chain_key_id(), "615883fe5fe1bb57");
        assert_eq!(
            hex::encode(ingest_signature(
                &key,
                &content,
                "2026-05-21T12:00:01.000000Z"
            )),
            "140f1f3838e8bfa1b3bc9055e190e1576d2f03f7ef37162f3167b34eb534b045"
        );
    }

    #[test]
    fn content_hash_is_independent_of_member_order_and_bound_to_the_domain() {
        let a = serde_json::json!({"b": 1, "a": "x", "c": {"z": null, "y": [2, 1]}});
        let b = serde_json::json!({"c": {"y": [2, 1], "z": null}, "a": "x", "b": 1});
        let ha = content_sha256(ADMIN_AUDIT_CONTENT_DOMAIN, &a).unwrap();
        assert_eq!(ha, content_sha256(ADMIN_AUDIT_CONTENT_DOMAIN, &b).unwrap());
        assert_ne!(ha, content_sha256(AUDIT_CONTENT_DOMAIN, &a).unwrap());
        let mut expected = Sha256::new();
        expected.update(
            b"caracal.admin_audit.v1\n{\"a\":\"x\",\"b\":1,\"c\":{\"y\":[2,1],\"z\":null}}",
        );
        assert_eq!(ha, <[u8; 32]>::from(expected.finalize()));
    }

    #[test]
    fn every_input_of_the_chain_hmac_matters() {
        let key = vector_key();
        let c = [7u8; 32];
        let p = [9u8; 32];
        let base = chain_hmac(&key, "z", 2, Some(&p), &c);
        assert_ne!(base, chain_hmac(&key, "y", 2, Some(&p), &c));
        assert_ne!(base, chain_hmac(&key, "z", 3, Some(&p), &c));
        assert_ne!(base, chain_hmac(&key, "z", 2, None, &c));
        assert_ne!(base, chain_hmac(&key, "z", 2, Some(&c), &c));
    }
}
