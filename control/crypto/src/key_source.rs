//! Reading key material from `VAR` or `VAR_FILE`, and the errors that name
//! the variable without ever printing the value.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

use crate::kek::{DekId, KekParseError};
use crate::mac::HmacKeyParseError;

/// Largest key file accepted, in bytes.
const MAX_KEY_FILE_BYTES: usize = 4096;

/// A key could not be loaded from the environment.
///
/// Every message names the variable (and, for `_FILE`, the path) and the
/// problem, and never the key or any part of it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyConfigError {
    /// Neither `VAR` nor `VAR_FILE` is set, and the key is mandatory.
    #[error("{var} is not configured: set {var} or {var}_FILE")]
    NotConfigured {
        /// The variable, e.g. `ZONE_KEK`.
        var: String,
    },
    /// Both `VAR` and `VAR_FILE` are set.
    #[error("{var} and {var}_FILE are both set; set exactly one of them")]
    BothSet {
        /// The variable, e.g. `ZONE_KEK`.
        var: String,
    },
    /// `VAR_FILE` names a file that cannot be read.
    #[error("{file_var}: cannot read {}: {cause}", path.display())]
    Unreadable {
        /// The variable, e.g. `ZONE_KEK_FILE`.
        file_var: String,
        /// The path it names.
        path: PathBuf,
        /// The I/O error (shown in the message).
        cause: io::Error,
    },
    /// The value of a `ZONE_KEK*` variable (or file) is not a valid KEK.
    #[error("{origin}: {cause}")]
    InvalidKek {
        /// Where the value came from: `ZONE_KEK` or `ZONE_KEK_FILE (/path)`.
        origin: String,
        /// What is wrong with it.
        cause: KekParseError,
    },
    /// The value of an HMAC key variable (or file) is not a valid key.
    #[error("{origin}: {cause}")]
    InvalidHmacKey {
        /// Where the value came from: `STREAMS_HMAC_KEY` or
        /// `STREAMS_HMAC_KEY_FILE (/path)`.
        origin: String,
        /// What is wrong with it.
        cause: HmacKeyParseError,
    },
    /// `ZONE_KEK_PROVIDER` names something other than `local`.
    #[error("ZONE_KEK_PROVIDER: must be `local` or empty, found {value:?}")]
    UnsupportedProvider {
        /// The configured provider (not a secret).
        value: String,
    },
    /// `ZONE_KEK_PREVIOUS` holds the same key as `ZONE_KEK`.
    #[error(
        "ZONE_KEK_PREVIOUS is the same key as ZONE_KEK ({dek_id}); unset it or set the key being retired"
    )]
    PreviousEqualsCurrent {
        /// The id of the duplicated key.
        dek_id: DekId,
    },
}

/// Key text read from the environment or a file, with where it came from.
pub(crate) struct KeyText {
    /// `VAR`, or `VAR_FILE (/path)`: used to name the source in errors.
    pub(crate) origin: String,
    /// The raw text, untrimmed.
    pub(crate) text: Zeroizing<String>,
}

/// Reads `var` or `var_FILE` through `lookup`.
///
/// An unset, empty or all-whitespace variable counts as unset. Returns
/// `Ok(None)` when neither is set.
pub(crate) fn read_key_text<F>(var: &str, lookup: &F) -> Result<Option<KeyText>, KeyConfigError>
where
    F: Fn(&str) -> Option<String>,
{
    let file_var = format!("{var}_FILE");
    let direct = non_empty(lookup(var));
    let file = non_empty(lookup(&file_var));
    match (direct, file) {
        (Some(_), Some(_)) => Err(KeyConfigError::BothSet {
            var: var.to_owned(),
        }),
        (None, None) => Ok(None),
        (Some(text), None) => Ok(Some(KeyText {
            origin: var.to_owned(),
            text,
        })),
        (None, Some(path)) => {
            let path = PathBuf::from(path.trim());
            match read_bounded(&path) {
                Ok(text) => Ok(Some(KeyText {
                    origin: format!("{file_var} ({})", path.display()),
                    text,
                })),
                Err(cause) => Err(KeyConfigError::Unreadable {
                    file_var,
                    path,
                    cause,
                }),
            }
        }
    }
}

/// Reads a variable that is not secret (a provider name), treating empty as unset.
pub(crate) fn read_plain<F>(var: &str, lookup: &F) -> Option<String>
where
    F: Fn(&str) -> Option<String>,
{
    lookup(var)
        .map(|value| value.trim().to_owned())
        .filter(|value| !value.is_empty())
}

/// Looks a variable up in the process environment; a value that is not UTF-8
/// is kept (lossily converted) so that it fails validation instead of reading
/// as unset.
pub(crate) fn process_env(var: &str) -> Option<String> {
    std::env::var_os(var).map(|value| value.to_string_lossy().into_owned())
}

/// Reads a key file of at most [`MAX_KEY_FILE_BYTES`] into a zeroizing
/// buffer allocated once (so no reallocation leaves copies behind), refusing
/// larger files such as a mistaken `/dev/zero`.
fn read_bounded(path: &Path) -> io::Result<Zeroizing<String>> {
    let file = File::open(path)?;
    let mut text = Zeroizing::new(String::with_capacity(MAX_KEY_FILE_BYTES + 1));
    file.take(MAX_KEY_FILE_BYTES as u64 + 1)
        .read_to_string(&mut text)?;
    if text.len() > MAX_KEY_FILE_BYTES {
        return Err(io::Error::new(
            io::ErrorKind::FileTooLarge,
            format!("key file is larger than {MAX_KEY_FILE_BYTES} bytes"),
        ));
    }
    Ok(text)
}

fn non_empty(value: Option<String>) -> Option<Zeroizing<String>> {
    let value = Zeroizing::new(value?);
    if value.trim().is_empty() {
        None
    } else {
        Some(value)
    }
}
