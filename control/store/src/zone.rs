//! Zone-scoped and cross-zone transactions (§3.2): the only ways a service reaches
//! row-level-secured data.
//!
//! [`zone_tx`] begins a transaction and, in the same round trip, runs
//! `set_config('caracal.zone_id', '<zone>', true)`: transaction-local, so the setting ends with
//! the transaction and cannot leak to the next user of a pooled connection. Every query inside
//! then sees only that zone's rows, and every write outside it fails the policy check.
//!
//! `BEGIN` and the setting travel as one simple-protocol message, which cannot carry bound
//! parameters, so the zone is written as a literal. Only a validated [`ZoneId`]
//! (`[A-Za-z0-9._:-]`, no quote or backslash can occur) or the [`CROSS_ZONE`] sentinel is ever
//! written, and [`scope_literal`] re-checks the character set before it quotes (decision 0017).

use std::ops::{Deref, DerefMut};

use control_model::ZoneId;
use sqlx::{PgConnection, PgPool, Postgres, Transaction};

use crate::StoreError;

/// The sentinel that opens the per-role `cross_zone_read` policies; never a zone id.
pub const CROSS_ZONE: &str = "*";

/// A transaction scoped to one zone. Dereferences to the connection; call
/// [`ZoneTx::commit`] to keep its writes (dropping it rolls back).
#[derive(Debug)]
pub struct ZoneTx {
    tx: Transaction<'static, Postgres>,
    zone: ZoneId,
}

impl ZoneTx {
    /// The zone this transaction is scoped to.
    pub fn zone(&self) -> &ZoneId {
        &self.zone
    }

    /// Commits the transaction.
    pub async fn commit(self) -> Result<(), StoreError> {
        self.tx.commit().await.map_err(StoreError::from)
    }

    /// Rolls the transaction back explicitly.
    pub async fn rollback(self) -> Result<(), StoreError> {
        self.tx.rollback().await.map_err(StoreError::from)
    }
}

impl Deref for ZoneTx {
    type Target = PgConnection;
    fn deref(&self) -> &PgConnection {
        &self.tx
    }
}

impl DerefMut for ZoneTx {
    fn deref_mut(&mut self) -> &mut PgConnection {
        &mut self.tx
    }
}

/// Begins a transaction in which row-level security admits `zone`'s rows only.
pub async fn zone_tx(pool: &PgPool, zone: &ZoneId) -> Result<ZoneTx, StoreError> {
    let tx = begin_scoped(pool, "BEGIN", zone.as_str(), None).await?;
    Ok(ZoneTx {
        tx,
        zone: zone.clone(),
    })
}

/// [`zone_tx`] whose first round trip also runs `prologue`, a fixed statement that may read
/// the zone through `current_setting('caracal.zone_id')` (the ledger takes its chain lock
/// this way). `prologue` is a constant of this crate, never built from input.
pub(crate) async fn zone_tx_with(
    pool: &PgPool,
    zone: &ZoneId,
    prologue: &'static str,
) -> Result<ZoneTx, StoreError> {
    let tx = begin_scoped(pool, "BEGIN", zone.as_str(), Some(prologue)).await?;
    Ok(ZoneTx {
        tx,
        zone: zone.clone(),
    })
}

/// Begins a `REPEATABLE READ READ ONLY` transaction scoped to `zone`: one consistent
/// snapshot for a group of reads (the STS's re-validation reads, authority §2.3).
pub async fn zone_snapshot(pool: &PgPool, zone: &ZoneId) -> Result<ZoneTx, StoreError> {
    let tx = begin_scoped(
        pool,
        "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY",
        zone.as_str(),
        None,
    )
    .await?;
    Ok(ZoneTx {
        tx,
        zone: zone.clone(),
    })
}

/// A read-only transaction across zones. Only the roles that the schema grants a
/// `cross_zone_read` policy see rows in it; every other role sees none, and nobody can write.
#[derive(Debug)]
pub struct CrossZoneRead {
    tx: Transaction<'static, Postgres>,
}

impl CrossZoneRead {
    /// Ends the read (commits: a [`global_tx`] keeps its writes).
    pub async fn finish(self) -> Result<(), StoreError> {
        self.tx.commit().await.map_err(StoreError::from)
    }
}

impl Deref for CrossZoneRead {
    type Target = PgConnection;
    fn deref(&self) -> &PgConnection {
        &self.tx
    }
}

impl DerefMut for CrossZoneRead {
    fn deref_mut(&mut self) -> &mut PgConnection {
        &mut self.tx
    }
}

/// Begins a `READ ONLY` transaction with `caracal.zone_id = '*'`.
pub async fn cross_zone_read(pool: &PgPool) -> Result<CrossZoneRead, StoreError> {
    let tx = begin_scoped(pool, "BEGIN READ ONLY", CROSS_ZONE, None).await?;
    Ok(CrossZoneRead { tx })
}

/// A read-write transaction with `caracal.zone_id = '*'`: the admin API's global rows
/// (global admin tokens, the global admin audit chain) are writable in it, and no zone's
/// rows are (their policy needs the zone id). Tables without row-level security (`zones`)
/// behave as anywhere else.
pub async fn global_tx(pool: &PgPool) -> Result<CrossZoneRead, StoreError> {
    let tx = begin_scoped(pool, "BEGIN", CROSS_ZONE, None).await?;
    Ok(CrossZoneRead { tx })
}

/// Begins a transaction with `begin` (a `BEGIN` statement with its characteristics), sets
/// `caracal.zone_id` transaction-locally to `zone` (a zone id or [`CROSS_ZONE`]) and runs
/// `prologue` (a constant statement) when given, all in one round trip.
async fn begin_scoped(
    pool: &PgPool,
    begin: &'static str,
    zone: &str,
    prologue: Option<&'static str>,
) -> Result<Transaction<'static, Postgres>, StoreError> {
    let literal = scope_literal(zone)?;
    let mut statement = format!("{begin}; SELECT set_config('caracal.zone_id', {literal}, true)");
    if let Some(prologue) = prologue {
        statement.push_str("; ");
        statement.push_str(prologue);
    }
    Ok(pool.begin_with(statement).await?)
}

/// `zone` as a quoted SQL string literal, or an error when it holds anything but the zone-id
/// character set or is the cross-zone sentinel. The check makes the quoting trivially safe:
/// no character that could end or escape the literal can pass it.
fn scope_literal(zone: &str) -> Result<String, StoreError> {
    if zone != CROSS_ZONE && ZoneId::parse(zone).is_err() {
        return Err(StoreError::Database(sqlx::Error::Protocol(
            "refusing to scope a transaction to a malformed zone id".to_owned(),
        )));
    }
    Ok(format!("'{zone}'"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scope_literal_quotes_ids_and_the_sentinel_and_refuses_anything_else() {
        assert_eq!(
            scope_literal("zone-a.1:x_y").ok().as_deref(),
            Some("'zone-a.1:x_y'")
        );
        assert_eq!(scope_literal(CROSS_ZONE).ok().as_deref(), Some("'*'"));
        for bad in ["", "a'b", "a\\b", "z'; DROP TABLE zones; --", "a b", "**"] {
            assert!(scope_literal(bad).is_err(), "{bad:?} must be refused");
        }
        assert!(scope_literal(&"a".repeat(ZoneId::MAX_LEN + 1)).is_err());
    }
}
