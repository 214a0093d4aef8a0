//! `/v1/admin-tokens`: minted admin tokens (`cat_` + 43 base64url characters), shown once,
//! stored as SHA-256 plus Argon2id. Only a global write token (or the bootstrap token)
//! manages them; a zone token is created in its zone's scope and chain.

use chrono::{DateTime, Utc};
use control_store::{
    admin::admin_tokens::{self, AdminTokenRow, NewAdminToken},
    zone::global_tx,
};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};

use http::Method;

use super::{Reply, check_len, hash_secret, open_zone, random_credential, to_value};
use crate::{
    audit::{self, Action},
    auth::Need,
    auth::{Capability, TOKEN_PREFIX},
    error::{ApiError, Problem},
    request::{AdminRequest, page_body},
    routes::{Answer, RequestBody, Route, Scope, schema_of, unknown_op},
    state::Api,
};

/// Body of `POST /admin-tokens`: `capability` is read, write or approve; `zone_id` scopes the token to one zone.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateToken {
    /// Display name, 1 to 256 characters.
    #[schemars(length(min = 1, max = 256))]
    name: String,
    /// `read`, `write` or `approve`.
    #[schemars(regex(pattern = r"^(read|write|approve)$"))]
    capability: String,
    zone_id: Option<String>,
    expires_at: Option<DateTime<Utc>>,
}

/// `GET /admin-tokens?zone_id=`: global tokens, or one zone's.
pub async fn list(api: &Api, req: &AdminRequest) -> Result<Reply, ApiError> {
    req.only_query(&["zone_id"])?;
    let page = req.page()?;
    let rows = match req.query("zone_id") {
        Some(zone) => {
            let (mut tx, _) = open_zone(api, zone).await?;
            let rows = admin_tokens::list(&mut tx, &page).await?;
            tx.commit().await?;
            rows
        }
        None => {
            let mut tx = global_tx(&api.pool).await?;
            let rows = admin_tokens::list(&mut tx, &page).await?;
            tx.finish().await?;
            rows
        }
    };
    Ok(Reply::Json(
        200,
        page_body(&rows, |row| to_value(row).unwrap_or_default()),
    ))
}

/// `POST /admin-tokens {name, capability, zone_id?, expires_at?}` → the row and `token`.
pub async fn create(api: &Api, req: &AdminRequest) -> Result<Reply, ApiError> {
    let body: CreateToken = req.json()?;
    check_len("name", &body.name, 1, 256)?;
    if Capability::parse(&body.capability).is_none() {
        return Err(Problem::invalid_body("capability", "must be read, write or approve").into());
    }
    if body.expires_at.is_some_and(|e| e <= Utc::now()) {
        return Err(Problem::invalid_body("expires_at", "must be in the future").into());
    }
    let token = random_credential(TOKEN_PREFIX)?;
    let sha: [u8; 32] = Sha256::digest(token.as_bytes()).into();
    let hash = hash_secret(api, &token).await?;
    let id = uuid::Uuid::now_v7().to_string();
    let zone_id = body.zone_id.clone();
    let new = NewAdminToken {
        id: &id,
        zone_id: zone_id.as_deref(),
        name: &body.name,
        token_sha256: &sha,
        token_hash: &hash,
        capability: &body.capability,
        expires_at: body.expires_at,
        created_by: &req.principal.id,
    };
    let payload = json!({"name": body.name, "capability": body.capability, "zone_id": body.zone_id, "expires_at": body.expires_at});
    let row = match body.zone_id.as_deref() {
        Some(zone) => {
            let (mut tx, zone_id) = open_zone(api, zone).await?;
            let row = admin_tokens::insert(
                &mut tx,
                &NewAdminToken {
                    zone_id: Some(zone_id.as_str()),
                    ..new.clone()
                },
            )
            .await?;
            audit::record(
                api,
                &mut tx,
                req,
                Action {
                    zone: Some(zone_id.as_str()),
                    entity_type: "admin_token",
                    entity_id: Some(&id),
                    status: 201,
                    payload,
                },
            )
            .await?;
            tx.commit().await?;
            row
        }
        None => {
            let mut tx = global_tx(&api.pool).await?;
            let row = admin_tokens::insert(&mut tx, &new).await?;
            audit::record(
                api,
                &mut tx,
                req,
                Action {
                    zone: None,
                    entity_type: "admin_token",
                    entity_id: Some(&id),
                    status: 201,
                    payload,
                },
            )
            .await?;
            tx.finish().await?;
            row
        }
    };
    let created = AdminTokenWithSecret {
        row,
        token: token.to_string(),
    };
    Ok(Reply::Json(201, to_value(&created)?))
}

/// `DELETE /admin-tokens/{id}?zone_id=`: revokes it at once.
pub async fn revoke(api: &Api, req: &AdminRequest, id: &str) -> Result<Reply, ApiError> {
    req.only_query(&["zone_id"])?;
    let revoked = match req.query("zone_id") {
        Some(zone) => {
            let (mut tx, zone_id) = open_zone(api, zone).await?;
            let done = admin_tokens::revoke(&mut tx, id, &req.principal.id).await?;
            if done {
                audit::record(
                    api,
                    &mut tx,
                    req,
                    Action {
                        zone: Some(zone_id.as_str()),
                        entity_type: "admin_token",
                        entity_id: Some(id),
                        status: 204,
                        payload: json!({}),
                    },
                )
                .await?;
            }
            tx.commit().await?;
            done
        }
        None => {
            let mut tx = global_tx(&api.pool).await?;
            let done = admin_tokens::revoke(&mut tx, id, &req.principal.id).await?;
            if done {
                audit::record(
                    api,
                    &mut tx,
                    req,
                    Action {
                        zone: None,
                        entity_type: "admin_token",
                        entity_id: Some(id),
                        status: 204,
                        payload: json!({}),
                    },
                )
                .await?;
            }
            tx.finish().await?;
            done
        }
    };
    if revoked {
        Ok(Reply::NoContent)
    } else {
        Err(Problem::not_found("admin_token").into())
    }
}

/// A token with its bearer value, in the one answer that shows it.
#[derive(Debug, serde::Serialize, JsonSchema)]
pub struct AdminTokenWithSecret {
    /// The row.
    #[serde(flatten)]
    pub row: AdminTokenRow,
    /// The bearer token; shown only here.
    pub token: String,
}

const ZONE_PARAM: crate::routes::Param = crate::routes::Param {
    name: "zone_id",
    description: "the zone of zone-scoped tokens (absent: global tokens)",
};

/// The area's operations.
pub const ROUTES: &[Route] = &[
    Route {
        method: Method::GET,
        path: "/admin-tokens",
        op: "admin_tokens.list",
        summary: "List admin tokens",
        need: Need::Read,
        scope: Scope::Global,
        body: RequestBody::None,
        answer: Answer::Page(schema_of::<AdminTokenRow>),
        query: &[ZONE_PARAM],
        refusals: &[(404, "zone_not_found")],
    },
    Route {
        method: Method::POST,
        path: "/admin-tokens",
        op: "admin_tokens.create",
        summary: "Mint an admin token; the answer carries it once",
        need: Need::Write,
        scope: Scope::Global,
        body: RequestBody::Json(schema_of::<CreateToken>),
        answer: Answer::Json(201, schema_of::<AdminTokenWithSecret>),
        query: &[],
        refusals: &[(404, "zone_not_found")],
    },
    Route {
        method: Method::DELETE,
        path: "/admin-tokens/{token_id}",
        op: "admin_tokens.revoke",
        summary: "Revoke an admin token",
        need: Need::Write,
        scope: Scope::Global,
        body: RequestBody::None,
        answer: Answer::NoContent,
        query: &[ZONE_PARAM],
        refusals: &[(404, "admin_token_not_found")],
    },
];

/// Runs operation `op` with its path parameters.
pub async fn handle(
    api: &Api,
    req: &AdminRequest,
    op: &str,
    p: &[&str],
) -> Result<Reply, ApiError> {
    match (op, p) {
        ("admin_tokens.list", []) => list(api, req).await,
        ("admin_tokens.create", []) => create(api, req).await,
        ("admin_tokens.revoke", [id]) => revoke(api, req, id).await,
        _ => Err(unknown_op(op)),
    }
}
