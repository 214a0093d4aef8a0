//! `caracal keys`: generate fresh keys, and check the configured ones.

use std::io::Write;

use control_crypto::{HmacKey, KekRing, random_key_hex};

use crate::{ExitStatus, OpsError};

/// HMAC keys the services read, checked by `keys check` when set.
const HMAC_KEYS: &[&str] = &[
    "AUDIT_HMAC_KEY",
    "AUDIT_HMAC_KEY_PREVIOUS",
    "AUDIT_CHAIN_HMAC_KEY",
    "STREAMS_HMAC_KEY",
    "STREAMS_HMAC_KEY_PREVIOUS",
];

/// `caracal keys generate`: prints `ZONE_KEK`, `AUDIT_HMAC_KEY` and `STREAMS_HMAC_KEY` as
/// `NAME=<64 hex characters>` lines (32 random bytes each, from the OS CSPRNG), ready for an
/// env file. This is the one command that prints key material, on purpose.
pub fn generate(out: &mut dyn Write) -> Result<ExitStatus, OpsError> {
    for name in ["ZONE_KEK", "AUDIT_HMAC_KEY", "STREAMS_HMAC_KEY"] {
        let key = random_key_hex()
            .map_err(|e| OpsError::Config(format!("cannot generate {name}: {e}")))?;
        writeln!(out, "{name}={}", key.as_str())?;
    }
    Ok(ExitStatus::Success)
}

/// `caracal keys check`: loads `ZONE_KEK` (required) and every HMAC key that is set, the
/// way the services will, and prints their ids, never their values.
pub fn check(
    lookup: &dyn Fn(&str) -> Option<String>,
    out: &mut dyn Write,
) -> Result<ExitStatus, OpsError> {
    let ring = load_kek(lookup)?;
    writeln!(out, "ZONE_KEK ok: {}", ring.current().dek_id())?;
    if let Some(previous) = ring.previous() {
        writeln!(out, "ZONE_KEK_PREVIOUS ok: {}", previous.dek_id())?;
    }
    for name in HMAC_KEYS {
        match HmacKey::from_lookup(name, lookup) {
            Ok(Some(_key)) => writeln!(out, "{name} ok")?,
            Ok(None) => writeln!(out, "{name} not set")?,
            Err(err) => return Err(OpsError::Config(err.to_string())),
        }
    }
    Ok(ExitStatus::Success)
}

/// Loads the KEK ring; the error is one line naming the variable and the problem.
pub fn load_kek(lookup: &dyn Fn(&str) -> Option<String>) -> Result<KekRing, OpsError> {
    KekRing::from_lookup(lookup).map_err(|e| OpsError::Config(e.to_string()))
}
