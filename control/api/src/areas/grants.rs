//! `/v1/zones/{z}/grants`: administrative subject grants (`delegated_grants`). A grant names
//! an application, a user, a resource and some of the resource's scopes; it is not a policy
//! input. Revoking one revokes the user's active authority records (authority §2.5 "Grant
//! revoke"), in batches of 1000 inside the one transaction, and announces each record on
//! `caracal.sessions.revoke` with reason `grant_revoked` and the `grant_id`.

use control_events::cascade;
use control_store::admin::{
    applications,
    grants::{self, GrantFilter, GrantRow, NewGrant},
    subjects::{self, RecordSelector},
};
use http::Method;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::json;

use super::{Reply, open_zone, to_value};
use crate::{
    audit::{self, Action},
    auth::Need,
    error::{ApiError, Problem},
    request::AdminRequest,
    routes::{Answer, Param, RequestBody, Route, Scope, schema_of, unknown_op},
    state::Api,
};

/// Scopes per grant.
const MAX_SCOPES: usize = 64;
/// Records revoked per statement.
pub const REVOKE_BATCH: i64 = 1000;
/// The reason a grant revocation carries.
const GRANT_REVOKED: &str = "grant_revoked";
/// Grant statuses.
const STATUSES: [&str; 3] = ["active", "revoked", "expired"];

/// Body of `POST …/grants`: 1 to 64 scopes, each declared by the resource.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateGrant {
    application_id: String,
    user_id: String,
    resource_id: String,
    scopes: Vec<String>,
}

/// A subject id (grant `user_id`, kill-switch `subject_id`): 1 to 512 bytes, no control
/// characters.
pub fn check_subject(path: &str, value: &str) -> Result<(), Problem> {
    if value.is_empty() || value.len() > 512 || value.chars().any(char::is_control) {
        return Err(Problem::invalid_body(
            path,
            "must be 1 to 512 bytes without control characters",
        ));
    }
    Ok(())
}

/// `GET …/grants`.
pub async fn list(api: &Api, req: &AdminRequest, zone: &str) -> Result<Reply, ApiError> {
    req.only_query(&[
        "application_id",
        "user_id",
        "resource_id",
        "provider_id",
        "status",
        "scopes",
    ])?;
    let status = req.filter("status");
    if status.is_some_and(|s| !STATUSES.contains(&s)) {
        return Err(Problem::new(
            400,
            "invalid_query",
            "status must be active, revoked or expired",
        )
        .into());
    }
    let scopes: Option<Vec<String>> = req.filter("scopes").map(|raw| {
        raw.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect()
    });
    if scopes.as_ref().is_some_and(|s| s.len() > MAX_SCOPES) {
        return Err(Problem::new(400, "invalid_query", "at most 64 scopes").into());
    }
    let grant_filter = GrantFilter {
        application_id: req.filter("application_id"),
        user_id: req.filter("user_id"),
        resource_id: req.filter("resource_id"),
        provider_id: req.filter("provider_id"),
        status,
        scopes: scopes.as_deref(),
    };
    super::zone_page(api, zone, &req.page()?, async |c, p| {
        grants::list(c, &grant_filter, p).await
    })
    .await
}

/// `POST …/grants`.
pub async fn create(api: &Api, req: &AdminRequest, zone: &str) -> Result<Reply, ApiError> {
    let body: CreateGrant = req.json()?;
    check_subject("user_id", &body.user_id)?;
    if body.scopes.is_empty() || body.scopes.len() > MAX_SCOPES {
        return Err(Problem::invalid_body("scopes", "must hold 1 to 64 scopes").into());
    }
    let (mut tx, zone_id) = open_zone(api, zone).await?;
    if applications::get(&mut tx, &body.application_id)
        .await?
        .is_none()
    {
        return Err(Problem::not_found("application").into());
    }
    let declared = grants::resource_scopes(&mut tx, &body.resource_id)
        .await?
        .ok_or_else(|| Problem::not_found("resource"))?;
    if body.scopes.iter().any(|s| !declared.contains(s)) {
        return Err(Problem::invalid_body(
            "scopes",
            "every scope must be one the resource declares",
        )
        .into());
    }
    let mut scopes: Vec<String> = Vec::with_capacity(body.scopes.len());
    for scope in &body.scopes {
        if !scopes.contains(scope) {
            scopes.push(scope.clone());
        }
    }
    let id = uuid::Uuid::now_v7().to_string();
    let row = grants::insert(
        &mut tx,
        &NewGrant {
            id: &id,
            zone_id: zone_id.as_str(),
            application_id: &body.application_id,
            user_id: &body.user_id,
            resource_id: &body.resource_id,
            scopes: &scopes,
            created_by: &req.principal.id,
        },
    )
    .await?;
    audit::commit_zone(
        api,
        tx,
        req,
        Action::in_zone(
            zone_id.as_str(),
            "grant",
            &id,
            201,
            json!({
                "application_id": body.application_id,
                "user_id": body.user_id,
                "resource_id": body.resource_id,
                "scopes": scopes,
            }),
        ),
    )
    .await?;
    Ok(Reply::Json(201, to_value(&row)?))
}

/// `GET …/grants/{id}`.
pub async fn get(api: &Api, zone: &str, id: &str) -> Result<Reply, ApiError> {
    super::zone_row(api, zone, "grant", async |c| grants::get(c, id).await).await
}

/// `DELETE …/grants/{id}`: revokes the grant and the user's active authority records. A
/// grant that is no longer active answers 204 and changes nothing.
pub async fn delete(
    api: &Api,
    req: &AdminRequest,
    zone: &str,
    id: &str,
) -> Result<Reply, ApiError> {
    let (mut tx, zone_id) = open_zone(api, zone).await?;
    let (row, revoked_now): (GrantRow, bool) = grants::revoke(&mut tx, id, &req.principal.id)
        .await?
        .ok_or_else(|| Problem::not_found("grant"))?;
    let mut records = 0usize;
    if revoked_now {
        loop {
            let batch = subjects::revoke_records(
                &mut tx,
                RecordSelector {
                    subject_id: &row.user_id,
                    user_only: true,
                },
                GRANT_REVOKED,
                &req.principal.id,
                REVOKE_BATCH,
            )
            .await?;
            let ctx = cascade::Context {
                producer: cascade::Producer::API,
                zone: zone_id.as_str(),
                actor: &req.principal.id,
                request_id: Some(&req.request_id),
            };
            cascade::announce_revoked_records(&mut tx, &ctx, &batch, GRANT_REVOKED, Some(&row.id))
                .await?;
            records += batch.len();
            if i64::try_from(batch.len()).unwrap_or(i64::MAX) < REVOKE_BATCH {
                break;
            }
        }
    }
    audit::commit_zone(
        api,
        tx,
        req,
        Action::in_zone(
            zone_id.as_str(),
            "grant",
            id,
            204,
            json!({
                "user_id": row.user_id,
                "revoked": revoked_now,
                "revoked_authority_records": records,
            }),
        ),
    )
    .await?;
    if records > 0 {
        api.outbox.wake();
    }
    Ok(Reply::NoContent)
}

/// The area's operations.
pub const ROUTES: &[Route] = &[
    Route {
        method: Method::GET,
        path: "/zones/{zone_id}/grants",
        op: "grants.list",
        summary: "List admin grants",
        need: Need::Read,
        scope: Scope::Zone,
        body: RequestBody::None,
        answer: Answer::Page(schema_of::<GrantRow>),
        query: &[
            Param {
                name: "application_id",
                description: "exact application",
            },
            Param {
                name: "user_id",
                description: "exact user",
            },
            Param {
                name: "resource_id",
                description: "exact resource row id",
            },
            Param {
                name: "provider_id",
                description: "the resource's credential provider",
            },
            Param {
                name: "status",
                description: "active, revoked or expired",
            },
            Param {
                name: "scopes",
                description: "comma list; grants holding every one",
            },
        ],
        refusals: &[(404, "zone_not_found")],
    },
    Route {
        method: Method::POST,
        path: "/zones/{zone_id}/grants",
        op: "grants.create",
        summary: "Grant a user some of a resource's scopes for an application",
        need: Need::Write,
        scope: Scope::Zone,
        body: RequestBody::Json(schema_of::<CreateGrant>),
        answer: Answer::Json(201, schema_of::<GrantRow>),
        query: &[],
        refusals: &[
            (404, "zone_not_found"),
            (404, "application_not_found"),
            (404, "resource_not_found"),
        ],
    },
    Route {
        method: Method::GET,
        path: "/zones/{zone_id}/grants/{grant_id}",
        op: "grants.get",
        summary: "Read a grant",
        need: Need::Read,
        scope: Scope::Zone,
        body: RequestBody::None,
        answer: Answer::Json(200, schema_of::<GrantRow>),
        query: &[],
        refusals: &[(404, "zone_not_found"), (404, "grant_not_found")],
    },
    Route {
        method: Method::DELETE,
        path: "/zones/{zone_id}/grants/{grant_id}",
        op: "grants.delete",
        summary: "Revoke a grant and the user's active authority records",
        need: Need::Write,
        scope: Scope::Zone,
        body: RequestBody::None,
        answer: Answer::NoContent,
        query: &[],
        refusals: &[(404, "zone_not_found"), (404, "grant_not_found")],
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
        ("grants.list", [z]) => list(api, req, z).await,
        ("grants.create", [z]) => create(api, req, z).await,
        ("grants.get", [z, id]) => get(api, z, id).await,
        ("grants.delete", [z, id]) => delete(api, req, z, id).await,
        _ => Err(unknown_op(op)),
    }
}
