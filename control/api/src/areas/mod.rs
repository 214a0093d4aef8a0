//! The admin API's resource areas. Each handler reads its input strictly, does its work in
//! one transaction scoped to the zone in the path (or the global scope), records the admin
//! audit row in that same transaction, and returns a [`Reply`].

use control_model::ZoneId;
use control_store::{
    admin::{self, Archivable, zones},
    zone::{ZoneTx, zone_tx},
};
use serde_json::Value;

use crate::{
    error::{ApiError, Problem},
    state::Api,
};

pub mod admin_tokens;
pub mod applications;
pub mod approvals;
pub mod audit_reads;
pub mod grants;
pub mod plugin_bindings;
pub mod plugins;
pub mod policies;
pub mod policy_sets;
pub mod providers;
pub mod resources;
pub mod subject_issuers;
pub mod subjects;
pub mod views;
pub mod zones_area;

/// A successful answer.
#[derive(Debug)]
pub enum Reply {
    /// A JSON body with a status.
    Json(u16, Value),
    /// 200 with raw bytes of a media type.
    Bytes(&'static str, bytes::Bytes),
    /// 200 with a file to save: raw bytes, `Content-Disposition: attachment`, and the
    /// continuation of an export in `X-Next-Cursor` when more follows.
    Download {
        /// `Content-Type`.
        media_type: &'static str,
        /// `Content-Disposition`.
        disposition: &'static str,
        /// The cursor of the next part.
        next_cursor: Option<String>,
        /// The file.
        body: bytes::Bytes,
    },
    /// 204.
    NoContent,
}

/// Begins a transaction scoped to the live zone `zone`: 404 `zone_not_found` otherwise.
pub async fn open_zone(api: &Api, zone: &str) -> Result<(ZoneTx, ZoneId), ApiError> {
    let id = ZoneId::parse(zone).map_err(|_invalid| Problem::not_found("zone"))?;
    let mut tx = zone_tx(&api.pool, &id).await?;
    if zones::get(&mut tx, id.as_str()).await?.is_none() {
        return Err(Problem::not_found("zone").into());
    }
    Ok((tx, id))
}

/// `DELETE` of an archivable entity in `zone`: archives it and records the action; 404
/// `<thing>_not_found` when there is no live row.
pub async fn archive(
    api: &Api,
    req: &crate::request::AdminRequest,
    zone: &str,
    table: Archivable,
    thing: &'static str,
    id: &str,
) -> Result<Reply, ApiError> {
    let (mut tx, zone_id) = open_zone(api, zone).await?;
    if !admin::archive(&mut tx, table, id, &req.principal.id).await? {
        return Err(Problem::not_found(thing).into());
    }
    let action =
        crate::audit::Action::in_zone(zone_id.as_str(), thing, id, 204, serde_json::json!({}));
    crate::audit::commit_zone(api, tx, req, action).await?;
    Ok(Reply::NoContent)
}

/// One page of rows read in a transaction scoped to the live zone `zone`, answered as
/// `{items, next_cursor}`.
pub async fn zone_page<T: serde::Serialize>(
    api: &Api,
    zone: &str,
    page: &control_store::admin::page::PageRequest,
    fetch: impl AsyncFnOnce(
        &mut sqlx::PgConnection,
        &control_store::admin::page::PageRequest,
    ) -> Result<control_store::admin::page::Page<T>, sqlx::Error>,
) -> Result<Reply, ApiError> {
    let (mut tx, _) = open_zone(api, zone).await?;
    let rows = fetch(&mut tx, page).await?;
    tx.commit().await?;
    Ok(Reply::Json(
        200,
        crate::request::page_body(&rows, |row| to_value(row).unwrap_or_default()),
    ))
}

/// One row read in a transaction scoped to the live zone `zone`, answered with 200; 404
/// `<thing>_not_found` when `fetch` finds none.
pub async fn zone_row<T: serde::Serialize>(
    api: &Api,
    zone: &str,
    thing: &'static str,
    fetch: impl AsyncFnOnce(&mut sqlx::PgConnection) -> Result<Option<T>, sqlx::Error>,
) -> Result<Reply, ApiError> {
    let (mut tx, _) = open_zone(api, zone).await?;
    let row = fetch(&mut tx)
        .await?
        .ok_or_else(|| Problem::not_found(thing))?;
    tx.commit().await?;
    Ok(Reply::Json(200, to_value(&row)?))
}

/// A random credential: `prefix` + 43 base64url characters (32 bytes from the OS CSPRNG).
pub fn random_credential(prefix: &str) -> Result<zeroize::Zeroizing<String>, ApiError> {
    use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
    let mut bytes = zeroize::Zeroizing::new([0u8; 32]);
    control_crypto::fill_random(bytes.as_mut_slice())
        .map_err(|e| ApiError::Crypto(e.to_string()))?;
    Ok(zeroize::Zeroizing::new(format!(
        "{prefix}{}",
        URL_SAFE_NO_PAD.encode(bytes.as_slice())
    )))
}

/// Argon2id PHC of `secret`, off the async workers.
pub async fn hash_secret(api: &Api, secret: &str) -> Result<String, ApiError> {
    let params = api.argon2;
    let secret = zeroize::Zeroizing::new(secret.to_owned());
    tokio::task::spawn_blocking(move || control_crypto::hash_secret(&params, secret.as_bytes()))
        .await
        .map_err(|e| ApiError::Crypto(format!("argon2 task failed: {e}")))?
        .map_err(|e| ApiError::Crypto(e.to_string()))
}

/// A write's outcome with a unique violation turned into `conflict`, the area's 409.
pub fn unique_or<T>(
    outcome: Result<T, sqlx::Error>,
    conflict: impl FnOnce() -> Problem,
) -> Result<T, ApiError> {
    let outcome = outcome.map_err(ApiError::from);
    match outcome {
        Err(e) if is_unique_violation(&e) => Err(conflict().into()),
        other => other,
    }
}

/// The SQLSTATE of a unique violation.
pub fn is_unique_violation(err: &ApiError) -> bool {
    match err {
        ApiError::Database(e) => crate::error::sqlstate(e).as_deref() == Some("23505"),
        ApiError::Store(control_store::StoreError::Database(e)) => {
            crate::error::sqlstate(e).as_deref() == Some("23505")
        }
        _ => false,
    }
}

/// Serialises a row (never fails for the store's row types; an error becomes a 500).
pub fn to_value<T: serde::Serialize>(row: &T) -> Result<Value, ApiError> {
    serde_json::to_value(row).map_err(|e| ApiError::Internal(format!("row serialisation: {e}")))
}

/// A text field's length bound, checked in characters.
pub fn check_len(path: &str, value: &str, min: usize, max: usize) -> Result<(), Problem> {
    let n = value.chars().count();
    if n < min || n > max {
        return Err(Problem::invalid_body(
            path,
            format!("must be {min} to {max} characters"),
        ));
    }
    Ok(())
}
