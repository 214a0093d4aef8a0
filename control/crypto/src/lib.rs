//! Caracal's cryptography, in one place.
//!
//! This crate owns:
//! - the zone key-encryption key: [`Kek`], its id [`DekId`], and the
//!   [`KekRing`] of current and previous keys loaded from `ZONE_KEK` /
//!   `ZONE_KEK_FILE` (+ `_PREVIOUS`) (`storage-and-events.md` §10.1);
//! - sealing values under the KEK with ChaCha20-Poly1305, bound to their table,
//!   column, zone and row, in separate columns ([`KekRing::seal`],
//!   [`KekRing::open`]) or as a single-column envelope
//!   ([`KekRing::seal_envelope`], [`KekRing::open_envelope`]) (§10.2);
//! - HMAC-SHA256 keys and tags ([`HmacKey`], [`hmac_sha256`],
//!   [`verify_hmac_sha256`]) and the `_sig` of Redis stream messages
//!   ([`sign_stream_fields`], [`verify_stream_fields`]) (§6.3);
//! - the audit hash chain: content hashes over RFC 8785 bytes and chain HMACs
//!   ([`content_sha256`], [`chain_hmac`], [`HmacKey::chain_key_id`]) (§8.3);
//! - Argon2id hashing of application secrets and admin tokens
//!   ([`hash_secret`], [`verify_secret`], [`dummy_verify`]) (§10.5);
//! - constant-time comparison ([`ct_eq`]) and fresh keys from the OS CSPRNG
//!   ([`random_key_hex`]).
//!
//! It must never: print, log or put into an error any plaintext, key byte or
//! secret (errors name variables, tables, rows and key ids only; secret types
//! have redacting `Debug`); compare a secret or tag with `==`; reuse a nonce;
//! panic on input from the environment, the database or the network; or do
//! any I/O beyond reading the key files named by `*_FILE` variables.
//!
//! Start reading at [`KekRing`] (`kek.rs`, then `seal.rs`), then `stream_sig.rs`.
//! Test vectors live in `vectors/` and are checked by the tests.

mod chain;
mod compare;
mod jwt;
mod kek;
mod key_source;
mod mac;
mod password;
mod random;
mod seal;
mod stream_sig;

pub use chain::{
    ADMIN_AUDIT_CONTENT_DOMAIN, AUDIT_CONTENT_DOMAIN, CHAIN_DOMAIN, CanonicalError, INGEST_DOMAIN,
    canonical_sha256, chain_hmac, content_sha256, ingest_signature,
};
pub use compare::ct_eq;
pub use jwt::{JwtError, JwtHeader, MAX_TOKEN_BYTES, PublicKey, UnverifiedJwt, ZoneSigningKey};
pub use kek::{
    DekId, KEK_LEN, Kek, KekParseError, KekRing, ZONE_KEK_PREVIOUS_VAR, ZONE_KEK_PROVIDER_VAR,
    ZONE_KEK_VAR,
};
pub use key_source::KeyConfigError;
pub use mac::{
    HMAC_TAG_LEN, HmacKey, HmacKeyParseError, MIN_HMAC_KEY_LEN, hmac_sha256, hmac_sha256_hex,
    verify_hmac_sha256, verify_hmac_sha256_hex,
};
pub use password::{
    ARGON2_M_KIB_VAR, ARGON2_P_VAR, ARGON2_T_VAR, Argon2Params, MAX_M_KIB, MAX_T, PasswordError,
    dummy_verify, hash_secret, verify_secret,
};
pub use random::{RandomError, fill_random, random_key_hex};
pub use seal::{
    ENVELOPE_VERSION, NONCE_LEN, SealContext, SealError, Sealed, TAG_LEN, encode_envelope,
    envelope_dek_id,
};
pub use stream_sig::{
    SIG_FIELD, StreamSigError, canonical_stream_bytes, sign_stream_fields, verify_stream_fields,
};
