//! `subject_issuers`: external OIDC issuers a zone trusts for federation (wire-contract §2.4 D).

use sqlx::PgConnection;

/// A live (not archived) subject issuer.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct SubjectIssuerRow {
    /// Row id.
    pub id: String,
    /// Zone.
    pub zone_id: String,
    /// The exact `iss` the issuer's id_tokens carry.
    pub issuer: String,
    /// Where the issuer publishes its key set.
    pub jwks_url: String,
    /// The audience its id_tokens must carry; `None` (or empty) accepts any.
    pub audience: Option<String>,
}

/// The live issuer of the current zone whose `issuer` equals `issuer` byte for byte (at most
/// one: `(zone_id, issuer)` is unique among live rows).
pub async fn live_by_issuer(
    conn: &mut PgConnection,
    issuer: &str,
) -> Result<Option<SubjectIssuerRow>, sqlx::Error> {
    sqlx::query_as::<_, SubjectIssuerRow>(
        "SELECT id, zone_id, issuer, jwks_url, audience \
           FROM subject_issuers WHERE issuer = $1 AND archived_at IS NULL",
    )
    .bind(issuer)
    .fetch_optional(conn)
    .await
}
