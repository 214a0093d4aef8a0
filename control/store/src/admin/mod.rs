//! The admin API's statements (role `caracal_api`): keyset pages, zones, applications,
//! admin tokens and the chained admin audit log. Every function runs on the connection of a
//! transaction the caller opened with the right scope (`zone_tx`, `global_tx` or
//! `cross_zone_read`).

pub mod admin_audit;
pub mod admin_tokens;
pub mod applications;
pub mod approvals;
pub mod grants;
pub use control_model::page;
pub mod plugin_bindings;
pub mod plugins;
pub mod policies;
pub mod policy_sets;
pub mod providers;
pub mod resources;
pub mod subject_issuers;
pub mod subjects;
pub mod views;
pub mod zones;

/// Tables whose rows the admin API archives instead of deleting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Archivable {
    /// `zones`.
    Zone,
    /// `applications`.
    Application,
    /// `policies`.
    Policy,
    /// `policy_sets`.
    PolicySet,
    /// `resources`.
    Resource,
    /// `subject_issuers`.
    SubjectIssuer,
    /// `gateway_plugins`.
    Plugin,
}

impl Archivable {
    fn statement(self) -> &'static str {
        match self {
            Archivable::Zone => {
                "UPDATE zones SET archived_at = now(), updated_at = now(), updated_by = $2 \
                 WHERE id = $1 AND archived_at IS NULL"
            }
            Archivable::Application => {
                "UPDATE applications SET archived_at = now(), updated_at = now(), updated_by = $2 \
                 WHERE id = $1 AND archived_at IS NULL"
            }
            Archivable::Policy => {
                "UPDATE policies SET archived_at = now(), updated_at = now(), updated_by = $2 \
                 WHERE id = $1 AND archived_at IS NULL"
            }
            Archivable::PolicySet => {
                "UPDATE policy_sets SET archived_at = now(), updated_at = now(), updated_by = $2 \
                 WHERE id = $1 AND archived_at IS NULL"
            }
            Archivable::Resource => {
                "UPDATE resources SET archived_at = now(), updated_at = now(), updated_by = $2 \
                 WHERE id = $1 AND archived_at IS NULL"
            }
            Archivable::SubjectIssuer => {
                "UPDATE subject_issuers SET archived_at = now(), updated_at = now(), updated_by = $2 \
                 WHERE id = $1 AND archived_at IS NULL"
            }
            Archivable::Plugin => {
                "UPDATE gateway_plugins SET archived_at = now(), updated_at = now(), updated_by = $2 \
                 WHERE id = $1 AND archived_at IS NULL"
            }
        }
    }
}

/// Archives the live row `id` of `table` (visible in the transaction's scope); false when
/// there is none.
pub async fn archive(
    conn: &mut sqlx::PgConnection,
    table: Archivable,
    id: &str,
    actor: &str,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(table.statement())
        .bind(id)
        .bind(actor)
        .execute(conn)
        .await?;
    Ok(done.rows_affected() == 1)
}
