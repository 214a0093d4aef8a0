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

/// `SIGNING_KEY_PREPUBLISH_SECS`: a rotated key is published this long before it signs
/// (verifiers cache the JWKS for 300 s; settled point 15).
pub const PREPUBLISH_SECONDS: i64 = 330;

/// `caracal keys rotate --zone Z`: inserts the zone's next signing key as `pending`,
/// activating 330 s from now, sealed under `ZONE_KEK`, and announces it on
/// `caracal.keys.invalidate`, in one transaction. The STS starts signing with it once it
/// activates; the previous key stays valid for verification through the grace period.
pub async fn rotate(
    zone: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
    out: &mut dyn Write,
) -> Result<ExitStatus, OpsError> {
    use control_crypto::{SealContext, ZoneSigningKey};
    use control_store::{outbox, signing_keys};
    use sqlx::{ConnectOptions, Connection};

    let zone =
        control_model::ZoneId::parse(zone).map_err(|e| OpsError::Config(format!("--zone: {e}")))?;
    let kek = load_kek(lookup)?;
    let options = control_store::settings::migrate_connect_options(lookup)
        .map_err(|e| OpsError::Config(e.to_string()))?;
    let unreachable =
        |e: sqlx::Error| OpsError::Unreachable(format!("cannot rotate the signing key: {e}"));
    let mut conn = options.connect().await.map_err(unreachable)?;
    let mut tx = conn.begin().await.map_err(unreachable)?;
    sqlx::query("SELECT set_config('caracal.zone_id', $1, true), set_config('search_path', 'caracal', true)")
        .bind(zone.as_str())
        .execute(&mut *tx)
        .await
        .map_err(unreachable)?;
    signing_keys::lock_zone(&mut tx, zone.as_str())
        .await
        .map_err(unreachable)?;
    let latest = signing_keys::latest_version(&mut tx, zone.as_str())
        .await
        .map_err(unreachable)?;
    if latest == 0 {
        return Err(OpsError::Refused(format!(
            "zone {zone} has no signing key yet; the STS creates the first one on its first mint"
        )));
    }
    let now: chrono::DateTime<chrono::Utc> = sqlx::query_scalar("SELECT now()")
        .fetch_one(&mut *tx)
        .await
        .map_err(unreachable)?;
    let activates_at = now + chrono::Duration::seconds(PREPUBLISH_SECONDS);
    let kid = uuid::Uuid::now_v7().to_string();
    let key = ZoneSigningKey::generate();
    let der = key
        .to_pkcs8_der()
        .map_err(|e| OpsError::Config(format!("cannot encode the key: {e}")))?;
    let context = SealContext {
        table: "secrets",
        column: "ciphertext",
        zone_id: zone.as_str(),
        row_id: &kid,
    };
    let sealed = kek
        .seal(&context, &der)
        .map_err(|e| OpsError::Config(format!("cannot seal the key: {e}")))?;
    let jwk = key.public_key().to_jwk(&kid);
    signing_keys::insert(
        &mut tx,
        &signing_keys::NewSigningKey {
            id: &kid,
            zone_id: zone.as_str(),
            version: latest + 1,
            status: "pending",
            activates_at,
            public_jwk: &jwk,
            nonce: &sealed.nonce,
            ciphertext: &sealed.ciphertext,
            dek_id: sealed.dek_id.as_str(),
            created_by: "system:caracal-keys",
        },
    )
    .await
    .map_err(unreachable)?;
    outbox::enqueue_key_change(&mut tx, zone.as_str(), &kid, "rotated", None)
        .await
        .map_err(unreachable)?;
    tx.commit().await.map_err(unreachable)?;
    writeln!(
        out,
        "zone {zone}: signing key version {} ({kid}) is published now and signs from {}",
        latest + 1,
        activates_at.to_rfc3339()
    )?;
    Ok(ExitStatus::Success)
}
