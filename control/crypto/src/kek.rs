//! The zone key-encryption key (`ZONE_KEK`), its id (`dek_id`) and the ring of
//! current and previous keys loaded from the environment
//! (`storage-and-events.md` §10.1).

use std::fmt;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::key_source::{KeyConfigError, process_env, read_key_text, read_plain};

/// Length of a KEK in bytes.
pub const KEK_LEN: usize = 32;

/// The variable holding the current KEK (or `ZONE_KEK_FILE`, a path to it).
pub const ZONE_KEK_VAR: &str = "ZONE_KEK";
/// The variable holding the previous KEK during a rotation (or `_FILE`).
pub const ZONE_KEK_PREVIOUS_VAR: &str = "ZONE_KEK_PREVIOUS";
/// The variable naming the KEK provider; only `local` (or empty) is supported.
pub const ZONE_KEK_PROVIDER_VAR: &str = "ZONE_KEK_PROVIDER";

const DEK_ID_DOMAIN: &[u8] = b"caracal.kek.v1\n";

/// The id of a KEK: `"kek:"` + the first 16 hex characters of
/// SHA-256(`"caracal.kek.v1"` LF KEK). It is stored beside every sealed value
/// and is not secret.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DekId(String);

impl DekId {
    fn for_key(key: &[u8; KEK_LEN]) -> Self {
        let digest = Sha256::new()
            .chain_update(DEK_ID_DOMAIN)
            .chain_update(key)
            .finalize();
        let prefix = digest.get(..8).unwrap_or_default();
        Self(format!("kek:{}", hex::encode(prefix)))
    }

    /// The id as stored, e.g. `kek:fad070c93b661a58`.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for DekId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for DekId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl PartialEq<str> for DekId {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for DekId {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

/// Why a KEK value was rejected. The message never contains the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KekParseError {
    /// The value (after trimming surrounding whitespace) is not 64 characters long.
    #[error("expected 64 hex characters (32 bytes), found {found} characters")]
    WrongLength {
        /// How many characters were found.
        found: usize,
    },
    /// The value has 64 characters but is not hexadecimal.
    #[error("value is not hexadecimal")]
    NotHex,
    /// The value decodes to 32 zero bytes.
    #[error("value is all zero")]
    AllZero,
}

/// A 32-byte key-encryption key, held in a buffer that is zeroed on drop.
///
/// `Debug` prints only the key's [`DekId`].
#[derive(Clone)]
pub struct Kek {
    bytes: Zeroizing<[u8; KEK_LEN]>,
    dek_id: DekId,
}

impl Kek {
    /// Parses 64 hex characters (either case). Surrounding whitespace is
    /// trimmed, since key files end in a newline.
    ///
    /// # Errors
    ///
    /// [`KekParseError`] when the value has the wrong length, is not
    /// hexadecimal, or is all zero.
    pub fn from_hex(text: &str) -> Result<Self, KekParseError> {
        let text = text.trim();
        let found = text.chars().count();
        if found != 2 * KEK_LEN {
            return Err(KekParseError::WrongLength { found });
        }
        let mut bytes = Zeroizing::new([0_u8; KEK_LEN]);
        // The hex error names the offending character: never keep it.
        hex::decode_to_slice(text, bytes.as_mut_slice())
            .map_err(|_names_a_key_char| KekParseError::NotHex)?;
        Self::from_zeroizing(bytes)
    }

    /// Builds a KEK from raw bytes.
    ///
    /// # Errors
    ///
    /// [`KekParseError::AllZero`] when every byte is zero.
    pub fn from_bytes(bytes: &[u8; KEK_LEN]) -> Result<Self, KekParseError> {
        Self::from_zeroizing(Zeroizing::new(*bytes))
    }

    fn from_zeroizing(bytes: Zeroizing<[u8; KEK_LEN]>) -> Result<Self, KekParseError> {
        if bool::from(bytes.as_slice().ct_eq(&[0_u8; KEK_LEN])) {
            return Err(KekParseError::AllZero);
        }
        let dek_id = DekId::for_key(&bytes);
        Ok(Self { bytes, dek_id })
    }

    /// The key's id, stored beside every value sealed under it.
    #[must_use]
    pub fn dek_id(&self) -> &DekId {
        &self.dek_id
    }

    pub(crate) fn bytes(&self) -> &[u8; KEK_LEN] {
        &self.bytes
    }
}

impl fmt::Debug for Kek {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Kek")
            .field("dek_id", &self.dek_id.as_str())
            .finish_non_exhaustive()
    }
}

/// The configured KEKs: the current one (seals and opens) and, during a
/// rotation, the previous one (opens only).
///
/// `Debug` and `Display` print only key ids.
#[derive(Clone)]
pub struct KekRing {
    current: Kek,
    previous: Option<Kek>,
}

impl KekRing {
    /// Builds a ring from explicit keys.
    ///
    /// # Errors
    ///
    /// [`KeyConfigError::PreviousEqualsCurrent`] when both keys are the same.
    pub fn new(current: Kek, previous: Option<Kek>) -> Result<Self, KeyConfigError> {
        if let Some(previous) = &previous
            && bool::from(previous.bytes().ct_eq(current.bytes()))
        {
            return Err(KeyConfigError::PreviousEqualsCurrent {
                dek_id: current.dek_id.clone(),
            });
        }
        Ok(Self { current, previous })
    }

    /// Loads the ring from the process environment; see [`KekRing::from_lookup`].
    ///
    /// # Errors
    ///
    /// As [`KekRing::from_lookup`].
    pub fn from_env() -> Result<Self, KeyConfigError> {
        Self::from_lookup(process_env)
    }

    /// Loads the ring through `lookup` (a stand-in for the environment):
    /// exactly one of `ZONE_KEK` and `ZONE_KEK_FILE`; optionally one of
    /// `ZONE_KEK_PREVIOUS` and `ZONE_KEK_PREVIOUS_FILE`; and
    /// `ZONE_KEK_PROVIDER`, which must be unset, empty or `local`. Empty
    /// variables count as unset. Files are read from disk.
    ///
    /// # Errors
    ///
    /// [`KeyConfigError`] naming the variable and the problem: the provider is
    /// not `local`, no current key, both a variable and its `_FILE` set, an
    /// unreadable file, an invalid key, or a previous key equal to the current one.
    pub fn from_lookup<F>(lookup: F) -> Result<Self, KeyConfigError>
    where
        F: Fn(&str) -> Option<String>,
    {
        if let Some(provider) = read_plain(ZONE_KEK_PROVIDER_VAR, &lookup)
            && provider != "local"
        {
            return Err(KeyConfigError::UnsupportedProvider { value: provider });
        }
        let current =
            load_kek(ZONE_KEK_VAR, &lookup)?.ok_or_else(|| KeyConfigError::NotConfigured {
                var: ZONE_KEK_VAR.to_owned(),
            })?;
        let previous = load_kek(ZONE_KEK_PREVIOUS_VAR, &lookup)?;
        Self::new(current, previous)
    }

    /// The key that seals new values.
    #[must_use]
    pub fn current(&self) -> &Kek {
        &self.current
    }

    /// The key being retired, if a rotation is in progress.
    #[must_use]
    pub fn previous(&self) -> Option<&Kek> {
        self.previous.as_ref()
    }

    /// The configured key whose id is `dek_id`, if any.
    #[must_use]
    pub fn key_for(&self, dek_id: &str) -> Option<&Kek> {
        if self.current.dek_id == dek_id {
            return Some(&self.current);
        }
        self.previous.as_ref().filter(|kek| kek.dek_id == dek_id)
    }

    /// Whether one of the configured keys has the id `dek_id` (used by the
    /// start-up check against `kek_check` and `secrets`).
    #[must_use]
    pub fn holds(&self, dek_id: &str) -> bool {
        self.key_for(dek_id).is_some()
    }
}

/// `ZONE_KEK is kek:…, ZONE_KEK_PREVIOUS unset` (or `… is kek:…`).
impl fmt::Display for KekRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{ZONE_KEK_VAR} is {}, {}",
            self.current.dek_id,
            PreviousIds(self.previous.as_ref().map(Kek::dek_id))
        )
    }
}

impl fmt::Debug for KekRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KekRing")
            .field("current", &self.current.dek_id.as_str())
            .field(
                "previous",
                &self.previous.as_ref().map(|kek| kek.dek_id.as_str()),
            )
            .finish()
    }
}

/// Formats the previous key id as `ZONE_KEK_PREVIOUS is kek:…` or
/// `ZONE_KEK_PREVIOUS unset`.
pub(crate) struct PreviousIds<'a>(pub(crate) Option<&'a DekId>);

impl fmt::Display for PreviousIds<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(id) => write!(f, "{ZONE_KEK_PREVIOUS_VAR} is {id}"),
            None => write!(f, "{ZONE_KEK_PREVIOUS_VAR} unset"),
        }
    }
}

fn load_kek<F>(var: &str, lookup: &F) -> Result<Option<Kek>, KeyConfigError>
where
    F: Fn(&str) -> Option<String>,
{
    let Some(found) = read_key_text(var, lookup)? else {
        return Ok(None);
    };
    Kek::from_hex(&found.text)
        .map(Some)
        .map_err(|cause| KeyConfigError::InvalidKek {
            origin: found.origin,
            cause,
        })
}

#[cfg(test)]
mod tests;
