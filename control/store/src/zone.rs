//! Zone-scoped and cross-zone transactions (§3.2): the only ways a service reaches
//! row-level-secured data.
//!
//! [`zone_tx`] begins a transaction whose first statement is
//! `set_config('caracal.zone_id', $1, true)`: transaction-local, so the setting ends with the
//! transaction and cannot leak to the next user of a pooled connection, and bound as a
//! parameter, so no zone id is ever spliced into SQL. Every query inside then sees only that
//! zone's rows, and every write outside it fails the policy check.

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
    let tx = begin_scoped(pool, None, zone.as_str()).await?;
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
        Some("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY"),
        zone.as_str(),
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
    /// Ends the read.
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
    let tx = begin_scoped(pool, Some("SET TRANSACTION READ ONLY"), CROSS_ZONE).await?;
    Ok(CrossZoneRead { tx })
}

/// Begins a transaction, applies its characteristics (which must come first), then sets
/// `caracal.zone_id` transaction-locally to `zone` (a zone id or [`CROSS_ZONE`]).
async fn begin_scoped(
    pool: &PgPool,
    characteristics: Option<&'static str>,
    zone: &str,
) -> Result<Transaction<'static, Postgres>, StoreError> {
    let mut tx = pool.begin().await?;
    if let Some(statement) = characteristics {
        sqlx::query(statement).execute(&mut *tx).await?;
    }
    sqlx::query("SELECT set_config('caracal.zone_id', $1, true)")
        .bind(zone)
        .execute(&mut *tx)
        .await?;
    Ok(tx)
}
