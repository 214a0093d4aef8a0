//! `/v1/zones/{z}/subject-issuers`: the external OIDC issuers whose id_tokens the STS
//! accepts for federation (wire-contract §2.4 D). `issuer` and `jwks_url` are absolute
//! https URLs without userinfo, query or fragment (plain http only to a loopback host, the
//! STS's own fetch rule); at most 20 live issuers per zone; values are stored and echoed
//! exactly as sent. Deleting an issuer archives it, and the STS stops accepting its tokens.

use control_store::admin::Archivable;
use control_store::admin::subject_issuers::{self, NewSubjectIssuer, SubjectIssuerAdminRow};
use http::Method;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::json;

use super::{Reply, check_len, open_zone, to_value, unique_or};
use crate::{
    audit::{self, Action},
    auth::Need,
    error::{ApiError, Problem},
    request::AdminRequest,
    routes::{Answer, RequestBody, Route, Scope, schema_of, unknown_op},
    state::Api,
};

/// Live issuers per zone.
pub const MAX_PER_ZONE: i64 = 20;
/// Longest URL, in characters (the table's CHECK).
const MAX_URL: usize = 2048;
/// Longest audience, in characters.
const MAX_AUDIENCE: usize = 1024;

/// Body of `POST …/subject-issuers`: `issuer` and `jwks_url` are https URLs without
/// userinfo, query or fragment; `audience` is the `aud` the id_tokens must carry.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSubjectIssuer {
    issuer: String,
    jwks_url: String,
    audience: String,
}

/// Body of `PATCH …/subject-issuers/{id}`: the issuer itself cannot change.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PatchSubjectIssuer {
    jwks_url: Option<String>,
    audience: Option<String>,
}

/// An absolute https URL (http only to a loopback host) with a host and no userinfo,
/// query, fragment, whitespace or control characters.
fn check_url(path: &str, value: &str) -> Result<(), Problem> {
    let bad = || {
        Problem::invalid_body(
            path,
            "must be an https URL with a host and no userinfo, query or fragment",
        )
    };
    check_len(path, value, 1, MAX_URL)?;
    if value
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || c == '?' || c == '#')
    {
        return Err(bad());
    }
    let uri: http::Uri = value.parse().map_err(|_unparsable| bad())?;
    let Some(authority) = uri.authority() else {
        return Err(bad());
    };
    if authority.as_str().contains('@') || authority.host().is_empty() {
        return Err(bad());
    }
    match uri.scheme_str() {
        Some("https") => Ok(()),
        Some("http") if is_loopback(authority.host()) => Ok(()),
        _ => Err(bad()),
    }
}

fn is_loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn check_audience(value: &str) -> Result<(), Problem> {
    check_len("audience", value, 1, MAX_AUDIENCE)?;
    if value.chars().any(char::is_control) {
        return Err(Problem::invalid_body(
            "audience",
            "must not contain control characters",
        ));
    }
    Ok(())
}

fn conflict() -> Problem {
    Problem::new(
        409,
        "subject_issuer_conflict",
        "a live subject issuer of this zone has this issuer",
    )
}

/// `GET …/subject-issuers`.
pub async fn list(api: &Api, req: &AdminRequest, zone: &str) -> Result<Reply, ApiError> {
    req.only_query(&[])?;
    super::zone_page(api, zone, &req.page()?, subject_issuers::list).await
}

/// `POST …/subject-issuers`.
pub async fn create(api: &Api, req: &AdminRequest, zone: &str) -> Result<Reply, ApiError> {
    let body: CreateSubjectIssuer = req.json()?;
    check_url("issuer", &body.issuer)?;
    check_url("jwks_url", &body.jwks_url)?;
    check_audience(&body.audience)?;
    let (mut tx, zone_id) = open_zone(api, zone).await?;
    subject_issuers::lock_zone(&mut tx, zone_id.as_str()).await?;
    if subject_issuers::issuer_taken(&mut tx, &body.issuer).await? {
        return Err(conflict().into());
    }
    if subject_issuers::count_live(&mut tx).await? >= MAX_PER_ZONE {
        return Err(Problem::new(
            409,
            "subject_issuer_limit_exceeded",
            "a zone has at most 20 subject issuers",
        )
        .into());
    }
    let id = uuid::Uuid::now_v7().to_string();
    let row = unique_or(
        subject_issuers::insert(
            &mut tx,
            &NewSubjectIssuer {
                id: &id,
                zone_id: zone_id.as_str(),
                issuer: &body.issuer,
                jwks_url: &body.jwks_url,
                audience: &body.audience,
                created_by: &req.principal.id,
            },
        )
        .await,
        conflict,
    )?;
    audit::commit_zone(
        api,
        tx,
        req,
        Action::in_zone(
            zone_id.as_str(),
            "subject_issuer",
            &id,
            201,
            json!({"issuer": body.issuer, "jwks_url": body.jwks_url, "audience": body.audience}),
        ),
    )
    .await?;
    Ok(Reply::Json(201, to_value(&row)?))
}

/// `GET …/subject-issuers/{id}`.
pub async fn get(api: &Api, zone: &str, id: &str) -> Result<Reply, ApiError> {
    super::zone_row(api, zone, "subject_issuer", async |c| {
        subject_issuers::get(c, id).await
    })
    .await
}

/// `PATCH …/subject-issuers/{id}`.
pub async fn patch(api: &Api, req: &AdminRequest, zone: &str, id: &str) -> Result<Reply, ApiError> {
    let body: PatchSubjectIssuer = req.json()?;
    if let Some(url) = &body.jwks_url {
        check_url("jwks_url", url)?;
    }
    if let Some(audience) = &body.audience {
        check_audience(audience)?;
    }
    let (mut tx, zone_id) = open_zone(api, zone).await?;
    let row = subject_issuers::update(
        &mut tx,
        id,
        body.jwks_url.as_deref(),
        body.audience.as_deref(),
        &req.principal.id,
    )
    .await?
    .ok_or_else(|| Problem::not_found("subject_issuer"))?;
    audit::commit_zone(
        api,
        tx,
        req,
        Action::in_zone(
            zone_id.as_str(),
            "subject_issuer",
            id,
            200,
            json!({"jwks_url": body.jwks_url, "audience": body.audience}),
        ),
    )
    .await?;
    Ok(Reply::Json(200, to_value(&row)?))
}

/// `DELETE …/subject-issuers/{id}`: archives it.
pub async fn delete(
    api: &Api,
    req: &AdminRequest,
    zone: &str,
    id: &str,
) -> Result<Reply, ApiError> {
    let (mut tx, zone_id) = open_zone(api, zone).await?;
    if !control_store::admin::archive(&mut tx, Archivable::SubjectIssuer, id, &req.principal.id)
        .await?
    {
        return Err(Problem::not_found("subject_issuer").into());
    }
    audit::commit_zone(
        api,
        tx,
        req,
        Action::in_zone(zone_id.as_str(), "subject_issuer", id, 204, json!({})),
    )
    .await?;
    Ok(Reply::NoContent)
}

/// The area's operations.
pub const ROUTES: &[Route] = &[
    Route {
        method: Method::GET,
        path: "/zones/{zone_id}/subject-issuers",
        op: "subject_issuers.list",
        summary: "List the zone's trusted OIDC issuers",
        need: Need::Read,
        scope: Scope::Zone,
        body: RequestBody::None,
        answer: Answer::Page(schema_of::<SubjectIssuerAdminRow>),
        query: &[],
        refusals: &[(404, "zone_not_found")],
    },
    Route {
        method: Method::POST,
        path: "/zones/{zone_id}/subject-issuers",
        op: "subject_issuers.create",
        summary: "Trust an OIDC issuer for federation",
        need: Need::Write,
        scope: Scope::Zone,
        body: RequestBody::Json(schema_of::<CreateSubjectIssuer>),
        answer: Answer::Json(201, schema_of::<SubjectIssuerAdminRow>),
        query: &[],
        refusals: &[
            (404, "zone_not_found"),
            (409, "subject_issuer_conflict"),
            (409, "subject_issuer_limit_exceeded"),
        ],
    },
    Route {
        method: Method::GET,
        path: "/zones/{zone_id}/subject-issuers/{issuer_id}",
        op: "subject_issuers.get",
        summary: "Read a subject issuer",
        need: Need::Read,
        scope: Scope::Zone,
        body: RequestBody::None,
        answer: Answer::Json(200, schema_of::<SubjectIssuerAdminRow>),
        query: &[],
        refusals: &[(404, "zone_not_found"), (404, "subject_issuer_not_found")],
    },
    Route {
        method: Method::PATCH,
        path: "/zones/{zone_id}/subject-issuers/{issuer_id}",
        op: "subject_issuers.patch",
        summary: "Change a subject issuer's key set URL or audience",
        need: Need::Write,
        scope: Scope::Zone,
        body: RequestBody::Json(schema_of::<PatchSubjectIssuer>),
        answer: Answer::Json(200, schema_of::<SubjectIssuerAdminRow>),
        query: &[],
        refusals: &[(404, "zone_not_found"), (404, "subject_issuer_not_found")],
    },
    Route {
        method: Method::DELETE,
        path: "/zones/{zone_id}/subject-issuers/{issuer_id}",
        op: "subject_issuers.delete",
        summary: "Stop trusting a subject issuer (archives it)",
        need: Need::Write,
        scope: Scope::Zone,
        body: RequestBody::None,
        answer: Answer::NoContent,
        query: &[],
        refusals: &[(404, "zone_not_found"), (404, "subject_issuer_not_found")],
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
        ("subject_issuers.list", [z]) => list(api, req, z).await,
        ("subject_issuers.create", [z]) => create(api, req, z).await,
        ("subject_issuers.get", [z, id]) => get(api, z, id).await,
        ("subject_issuers.patch", [z, id]) => patch(api, req, z, id).await,
        ("subject_issuers.delete", [z, id]) => delete(api, req, z, id).await,
        _ => Err(unknown_op(op)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issuer_urls_are_https_without_userinfo_query_or_fragment() {
        for good in [
            "https://issuer.example",
            "https://issuer.example/tenant/v2.0",
            "https://issuer.example:8443/jwks.json",
            "http://127.0.0.1:9000/jwks.json",
            "http://localhost/jwks",
            "http://[::1]:1/jwks",
        ] {
            assert!(check_url("u", good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "issuer.example",
            "/jwks.json",
            "http://issuer.example/jwks",
            "ftp://issuer.example/jwks",
            "https://user:pw@issuer.example/jwks",
            "https://user@issuer.example/jwks",
            "https://issuer.example/jwks?x=1",
            "https://issuer.example/jwks#frag",
            "https://issuer.example/a b",
            "https:///jwks",
        ] {
            assert!(check_url("u", bad).is_err(), "{bad}");
        }
    }
}
