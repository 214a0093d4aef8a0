//! Sealing values under the zone KEK with ChaCha20-Poly1305, bound to their
//! place by associated data, and the single-column envelope
//! (`storage-and-events.md` §10.2).

use chacha20poly1305::{
    ChaCha20Poly1305, Key, KeyInit, Nonce,
    aead::{Aead, Payload},
};
use zeroize::Zeroizing;

use crate::kek::{DekId, Kek, KekRing, PreviousIds, ZONE_KEK_VAR};
use crate::random::{RandomError, fill_random};

/// Length of a seal nonce in bytes (96 bits).
pub const NONCE_LEN: usize = 12;
/// Length of the Poly1305 tag appended to every ciphertext, in bytes.
pub const TAG_LEN: usize = 16;
/// First byte of a single-column envelope.
pub const ENVELOPE_VERSION: u8 = 0x01;

const AAD_DOMAIN: &[u8] = b"caracal.seal.v1";

/// Where a sealed value lives; it is bound into the associated data, so a
/// ciphertext copied to another table, column, zone or row does not open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SealContext<'a> {
    /// Table, e.g. `secrets`.
    pub table: &'a str,
    /// Column, e.g. `ciphertext`.
    pub column: &'a str,
    /// Zone id of the row.
    pub zone_id: &'a str,
    /// Primary key of the row.
    pub row_id: &'a str,
}

/// A sealed value as stored in separate columns (`secrets`: `nonce`,
/// `ciphertext`, `dek_id`). Nothing here is secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    /// The random nonce used for this seal.
    pub nonce: [u8; NONCE_LEN],
    /// Ciphertext followed by the 16-byte tag.
    pub ciphertext: Vec<u8>,
    /// Id of the KEK the value is sealed under.
    pub dek_id: DekId,
}

/// A value could not be sealed or opened. Messages name tables, rows and key
/// ids, never plaintext or key bytes.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SealError {
    /// The value is sealed under a key that is neither the current nor the
    /// previous configured KEK.
    #[error(
        "key does not match: value is sealed under {found}; configured {ZONE_KEK_VAR} is {current} ({})",
        PreviousIds(.previous.as_ref())
    )]
    KeyMismatch {
        /// The `dek_id` stored with the value (escaped and shortened for logs).
        found: String,
        /// Id of the configured `ZONE_KEK`.
        current: DekId,
        /// Id of the configured `ZONE_KEK_PREVIOUS`, if any.
        previous: Option<DekId>,
    },
    /// The key matches, but the ciphertext does not authenticate for this
    /// place: it was moved, altered, or sealed for another row.
    #[error(
        "ciphertext does not authenticate for {table}.{column} row {row_id} under {dek_id} (moved, altered, or sealed for another row)"
    )]
    Unauthentic {
        /// Table of the value.
        table: String,
        /// Column of the value.
        column: String,
        /// Row of the value.
        row_id: String,
        /// Key id the value claims.
        dek_id: DekId,
    },
    /// The stored nonce is not 12 bytes long.
    #[error("nonce must be 12 bytes, found {found} bytes")]
    BadNonceLength {
        /// The length found.
        found: usize,
    },
    /// A part of the seal context contains a NUL byte, which would make the
    /// associated data ambiguous.
    #[error("seal context {part} contains a NUL byte")]
    ContextHasNul {
        /// Which part: `table`, `column`, `zone_id` or `row_id`.
        part: &'static str,
    },
    /// A single-column envelope is not well formed.
    #[error("sealed envelope is malformed: {reason}")]
    MalformedEnvelope {
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A single-column envelope starts with an unknown version byte.
    #[error("sealed envelope has unsupported version 0x{version:02x}")]
    UnsupportedEnvelopeVersion {
        /// The version byte found.
        version: u8,
    },
    /// The cipher refused to seal (only for absurdly large plaintexts).
    #[error("sealing failed: plaintext too large")]
    PlaintextTooLarge,
    /// No nonce could be drawn from the operating system's CSPRNG.
    #[error(transparent)]
    Random(#[from] RandomError),
}

impl KekRing {
    /// Seals `plaintext` for `ctx` under the current KEK with a fresh random
    /// nonce.
    ///
    /// # Errors
    ///
    /// [`SealError::ContextHasNul`], [`SealError::Random`] when the OS CSPRNG
    /// fails, [`SealError::PlaintextTooLarge`].
    pub fn seal(&self, ctx: &SealContext<'_>, plaintext: &[u8]) -> Result<Sealed, SealError> {
        let mut nonce = [0_u8; NONCE_LEN];
        fill_random(&mut nonce)?;
        self.seal_with_nonce(ctx, nonce, plaintext)
    }

    /// Seals with a given nonce. Reusing a nonce under one key destroys
    /// confidentiality and integrity, so this is for test vectors only.
    pub(crate) fn seal_with_nonce(
        &self,
        ctx: &SealContext<'_>,
        nonce: [u8; NONCE_LEN],
        plaintext: &[u8],
    ) -> Result<Sealed, SealError> {
        let kek = self.current();
        let aad = associated_data(ctx, kek.dek_id())?;
        let ciphertext = cipher(kek)
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad: &aad,
                },
            )
            .map_err(|_opaque_aead_error| SealError::PlaintextTooLarge)?;
        Ok(Sealed {
            nonce,
            ciphertext,
            dek_id: kek.dek_id().clone(),
        })
    }

    /// Opens a value stored in separate columns, choosing the current or the
    /// previous KEK by `dek_id`.
    ///
    /// # Errors
    ///
    /// [`SealError::KeyMismatch`] when no configured key has `dek_id`;
    /// [`SealError::Unauthentic`] when the key matches but the ciphertext was
    /// moved, altered or sealed for another place; [`SealError::BadNonceLength`];
    /// [`SealError::ContextHasNul`].
    pub fn open(
        &self,
        ctx: &SealContext<'_>,
        nonce: &[u8],
        ciphertext: &[u8],
        dek_id: &str,
    ) -> Result<Zeroizing<Vec<u8>>, SealError> {
        let kek = self.key_for(dek_id).ok_or_else(|| SealError::KeyMismatch {
            found: printable_id(dek_id),
            current: self.current().dek_id().clone(),
            previous: self.previous().map(|kek| kek.dek_id().clone()),
        })?;
        let nonce: [u8; NONCE_LEN] = nonce
            .try_into()
            .map_err(|_wrong_length| SealError::BadNonceLength { found: nonce.len() })?;
        let aad = associated_data(ctx, kek.dek_id())?;
        cipher(kek)
            .decrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: ciphertext,
                    aad: &aad,
                },
            )
            .map(Zeroizing::new)
            .map_err(|_opaque_aead_error| SealError::Unauthentic {
                table: ctx.table.to_owned(),
                column: ctx.column.to_owned(),
                row_id: ctx.row_id.to_owned(),
                dek_id: kek.dek_id().clone(),
            })
    }

    /// Seals `plaintext` for a single-column value and encodes it as the
    /// envelope `0x01 ‖ u8 len(dek_id) ‖ dek_id ‖ nonce ‖ ciphertext ‖ tag`.
    ///
    /// # Errors
    ///
    /// As [`KekRing::seal`].
    pub fn seal_envelope(
        &self,
        ctx: &SealContext<'_>,
        plaintext: &[u8],
    ) -> Result<Vec<u8>, SealError> {
        encode_envelope(&self.seal(ctx, plaintext)?)
    }

    /// Opens a single-column envelope written by [`KekRing::seal_envelope`].
    ///
    /// # Errors
    ///
    /// [`SealError::MalformedEnvelope`] or
    /// [`SealError::UnsupportedEnvelopeVersion`] for bytes that are not an
    /// envelope (including empty or truncated input), otherwise as
    /// [`KekRing::open`].
    pub fn open_envelope(
        &self,
        ctx: &SealContext<'_>,
        envelope: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, SealError> {
        let parts = EnvelopeParts::parse(envelope)?;
        self.open(ctx, parts.nonce, parts.ciphertext, parts.dek_id)
    }
}

/// Encodes a sealed value as a single-column envelope.
///
/// # Errors
///
/// [`SealError::MalformedEnvelope`] if the `dek_id` is longer than 255 bytes
/// (never for ids made by this crate).
pub fn encode_envelope(sealed: &Sealed) -> Result<Vec<u8>, SealError> {
    let dek_id = sealed.dek_id.as_str().as_bytes();
    let dek_id_len =
        u8::try_from(dek_id.len()).map_err(|_too_long| SealError::MalformedEnvelope {
            reason: "dek_id longer than 255 bytes",
        })?;
    let mut out = Vec::with_capacity(2 + dek_id.len() + NONCE_LEN + sealed.ciphertext.len());
    out.push(ENVELOPE_VERSION);
    out.push(dek_id_len);
    out.extend_from_slice(dek_id);
    out.extend_from_slice(&sealed.nonce);
    out.extend_from_slice(&sealed.ciphertext);
    Ok(out)
}

/// The `dek_id` an envelope claims, read without decrypting (for
/// `caracal keys rewrap --verify` and `caracal doctor`).
///
/// # Errors
///
/// [`SealError::MalformedEnvelope`] or [`SealError::UnsupportedEnvelopeVersion`].
pub fn envelope_dek_id(envelope: &[u8]) -> Result<&str, SealError> {
    EnvelopeParts::parse(envelope).map(|parts| parts.dek_id)
}

struct EnvelopeParts<'a> {
    dek_id: &'a str,
    nonce: &'a [u8],
    ciphertext: &'a [u8],
}

impl<'a> EnvelopeParts<'a> {
    fn parse(envelope: &'a [u8]) -> Result<Self, SealError> {
        let malformed = |reason| SealError::MalformedEnvelope { reason };
        let (&version, rest) = envelope.split_first().ok_or(malformed("empty"))?;
        if version != ENVELOPE_VERSION {
            return Err(SealError::UnsupportedEnvelopeVersion { version });
        }
        let (&dek_id_len, rest) = rest
            .split_first()
            .ok_or(malformed("truncated before the dek_id length"))?;
        if dek_id_len == 0 {
            return Err(malformed("empty dek_id"));
        }
        let (dek_id, rest) = rest
            .split_at_checked(usize::from(dek_id_len))
            .ok_or(malformed("truncated inside the dek_id"))?;
        let dek_id =
            std::str::from_utf8(dek_id).map_err(|_not_utf8| malformed("dek_id is not UTF-8"))?;
        let (nonce, ciphertext) = rest
            .split_at_checked(NONCE_LEN)
            .ok_or(malformed("truncated inside the nonce"))?;
        if ciphertext.len() < TAG_LEN {
            return Err(malformed("truncated: shorter than the authentication tag"));
        }
        Ok(Self {
            dek_id,
            nonce,
            ciphertext,
        })
    }
}

/// A stored `dek_id` as it may safely appear in a log line: control and
/// non-ASCII characters escaped, at most 64 characters kept.
fn printable_id(dek_id: &str) -> String {
    const MAX_CHARS: usize = 64;
    let mut out: String = dek_id
        .chars()
        .take(MAX_CHARS)
        .flat_map(char::escape_default)
        .collect();
    if dek_id.chars().nth(MAX_CHARS).is_some() {
        out.push('…');
    }
    out
}

fn cipher(kek: &Kek) -> ChaCha20Poly1305 {
    ChaCha20Poly1305::new(Key::from_slice(kek.bytes()))
}

/// `"caracal.seal.v1" 0x00 table 0x00 column 0x00 zone_id 0x00 row_id 0x00 dek_id`.
fn associated_data(ctx: &SealContext<'_>, dek_id: &DekId) -> Result<Vec<u8>, SealError> {
    let parts = [
        ("table", ctx.table),
        ("column", ctx.column),
        ("zone_id", ctx.zone_id),
        ("row_id", ctx.row_id),
        ("dek_id", dek_id.as_str()),
    ];
    let mut aad = Vec::with_capacity(
        AAD_DOMAIN.len()
            + parts
                .iter()
                .map(|(_, value)| value.len() + 1)
                .sum::<usize>(),
    );
    aad.extend_from_slice(AAD_DOMAIN);
    for (part, value) in parts {
        if value.as_bytes().contains(&0) {
            return Err(SealError::ContextHasNul { part });
        }
        aad.push(0);
        aad.extend_from_slice(value.as_bytes());
    }
    Ok(aad)
}

#[cfg(test)]
mod tests;
