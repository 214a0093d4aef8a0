//! Approvals (authority §6, wire-contract §2.10): the binding hash, merging tier
//! declarations into one hold, the hold body, and `GET /approvals/{id}[?wait=N]`.

use chrono::{DateTime, SecondsFormat, Utc};
use control_model::{Denial, ErrorCode};
use control_policy::{Approver, Privacy, TierDeclaration};
use control_store::{
    approvals::{self, ApprovalRow},
    zone::cross_zone_read,
};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::{
    error::StsError,
    respond::{self, Body},
    state::Sts,
};

/// The parts of a request an approval is bound to (§6.2).
pub(crate) struct BindingParts<'a> {
    pub(crate) resources: &'a [String],
    pub(crate) scopes: &'a [String],
    pub(crate) principal: &'a str,
    pub(crate) authority_record: &'a str,
    pub(crate) session: &'a str,
    pub(crate) delegation: &'a str,
    pub(crate) application: &'a str,
    pub(crate) policy_set_version: &'a str,
    pub(crate) policy_manifest: &'a str,
    pub(crate) contract_version: &'a str,
    pub(crate) contract_sha: &'a str,
}

/// SHA-256 over `label NUL value` sections joined by NUL, in the documented order.
pub(crate) fn binding_hash(parts: &BindingParts<'_>) -> [u8; 32] {
    let mut resources: Vec<String> = parts
        .resources
        .iter()
        .map(|r| r.trim().to_lowercase())
        .collect();
    resources.sort();
    resources.dedup();
    let mut scopes: Vec<String> = parts.scopes.iter().map(|s| s.trim().to_owned()).collect();
    scopes.sort();
    scopes.dedup();
    let sections: [(&str, String); 11] = [
        ("resources", resources.join("\n")),
        ("scopes", scopes.join("\n")),
        ("principal", parts.principal.to_owned()),
        ("authority_record", parts.authority_record.to_owned()),
        ("session", parts.session.to_owned()),
        ("delegation", parts.delegation.to_owned()),
        ("application", parts.application.to_owned()),
        ("policy_set_version", parts.policy_set_version.to_owned()),
        ("policy_manifest", parts.policy_manifest.to_owned()),
        (
            "decision_contract_version",
            parts.contract_version.to_owned(),
        ),
        ("decision_contract_sha", parts.contract_sha.to_owned()),
    ];
    let mut hasher = Sha256::new();
    for (i, (label, value)) in sections.iter().enumerate() {
        if i > 0 {
            hasher.update([0]);
        }
        hasher.update(label.as_bytes());
        hasher.update([0]);
        hasher.update(value.as_bytes());
    }
    hasher.finalize().into()
}

/// Tier declarations merged into one hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MergedHold {
    pub(crate) tier: String,
    pub(crate) approver: &'static str,
    pub(crate) privacy: &'static str,
    pub(crate) ttl_seconds: i64,
}

/// Merges declarations (§6.2). `None` on an operator/subject conflict.
pub(crate) fn merge(declarations: &[TierDeclaration]) -> Option<MergedHold> {
    let mut tiers: Vec<&str> = declarations
        .iter()
        .map(|d| d.tier.as_str())
        .filter(|t| !t.is_empty())
        .collect();
    tiers.sort_unstable();
    tiers.dedup();
    let has = |a: Approver| declarations.iter().any(|d| d.approver == a);
    let approver = match (has(Approver::Operator), has(Approver::Subject)) {
        (true, true) => return None,
        (true, false) => "operator",
        (false, true) => "subject",
        (false, false) => "any",
    };
    let privacy = if declarations.iter().any(|d| d.privacy == Privacy::Anonymous) {
        "anonymous"
    } else if declarations
        .iter()
        .any(|d| d.privacy == Privacy::Pseudonymous)
    {
        "pseudonymous"
    } else {
        "identified"
    };
    let (default, max) = if approver == "operator" {
        (4 * 3600, 7 * 86_400)
    } else {
        (15 * 60, 86_400)
    };
    let declared = declarations.iter().filter_map(|d| d.ttl_seconds).min();
    let ttl = declared
        .map_or(default, |t| i64::try_from(t).unwrap_or(max))
        .clamp(60, max);
    Some(MergedHold {
        tier: tiers.join(","),
        approver,
        privacy,
        ttl_seconds: ttl,
    })
}

/// The 401 `interaction_required` answer for a hold.
pub(crate) fn hold_denial_body(row: &ApprovalRow, request_id: &str, now: DateTime<Utc>) -> Value {
    json!({
        "error": ErrorCode::InteractionRequired.as_str(),
        "error_description": "Human approval required for this request",
        "approval_id": row.id,
        "approval_type": "human_approval",
        "state": row.state(now),
        "tier": row.tier.clone().unwrap_or_default(),
        "binding": hex::encode(&row.resource_set_hash),
        "approval_expires_at": row.expires_at.to_rfc3339_opts(SecondsFormat::Secs, true),
        "requestId": request_id,
    })
}

/// The longest long poll.
const MAX_WAIT_SECONDS: u64 = 25;

/// `GET /approvals/{id}[?wait=N]`: the state as soon as it leaves `pending`, or when the
/// wait ends. The id is the capability: no authentication. Waiters re-read the row every
/// 250 ms (a `LISTEN` fan-out replaces the poll later).
pub(crate) async fn poll(
    sts: &Sts,
    id: &str,
    query: Option<&str>,
    request_id: &str,
) -> Result<http::Response<Body>, StsError> {
    let not_found = Denial::new(404, ErrorCode::ResourceNotFound, "approval not found");
    let wait = query
        .into_iter()
        .flat_map(|q| form_urlencoded::parse(q.as_bytes()))
        .find(|(k, _)| k == "wait")
        .map(|(_, v)| v.into_owned());
    let wait = match wait.as_deref() {
        None | Some("") => 0,
        Some(raw) => match raw.parse::<u64>() {
            Ok(w) => w.min(MAX_WAIT_SECONDS),
            Err(_) => {
                return Ok(respond::denial(
                    &Denial::bad_request("invalid wait"),
                    request_id,
                ));
            }
        },
    };
    if uuid::Uuid::parse_str(id).is_err() {
        return Ok(respond::denial(&not_found, request_id));
    }
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(wait);
    loop {
        let mut read = cross_zone_read(&sts.pool).await?;
        let row = approvals::find(&mut read, id).await?;
        let now = control_store::delegation::now(&mut read).await?;
        read.finish().await?;
        let Some(row) = row else {
            return Ok(respond::denial(&not_found, request_id));
        };
        let state = row.state(now);
        if state != "pending" || tokio::time::Instant::now() >= deadline {
            return Ok(respond::json(
                200,
                &json!({
                    "id": row.id,
                    "state": state,
                    "expires_at": row.expires_at.to_rfc3339_opts(SecondsFormat::Secs, true),
                }),
            ));
        }
        tokio::time::sleep(
            std::time::Duration::from_millis(250).min(deadline - tokio::time::Instant::now()),
        )
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decl(tier: &str, approver: Approver, privacy: Privacy, ttl: Option<u64>) -> TierDeclaration {
        TierDeclaration {
            tier: tier.into(),
            approver,
            privacy,
            ttl_seconds: ttl,
        }
    }

    #[test]
    fn merging_takes_sorted_tiers_the_specific_class_the_strictest_privacy_and_the_shortest_ttl() {
        let merged = merge(&[
            decl("high", Approver::Any, Privacy::Identified, Some(3600)),
            decl(
                "finance",
                Approver::Operator,
                Privacy::Pseudonymous,
                Some(600),
            ),
        ])
        .unwrap();
        assert_eq!(
            merged,
            MergedHold {
                tier: "finance,high".into(),
                approver: "operator",
                privacy: "pseudonymous",
                ttl_seconds: 600
            }
        );
    }

    #[test]
    fn operator_and_subject_together_conflict() {
        assert!(
            merge(&[
                decl("a", Approver::Operator, Privacy::Identified, None),
                decl("b", Approver::Subject, Privacy::Identified, None)
            ])
            .is_none()
        );
    }

    #[test]
    fn ttl_defaults_and_clamps_by_class() {
        assert_eq!(
            merge(&[decl("a", Approver::Operator, Privacy::Identified, None)])
                .unwrap()
                .ttl_seconds,
            4 * 3600
        );
        assert_eq!(
            merge(&[decl("a", Approver::Subject, Privacy::Identified, None)])
                .unwrap()
                .ttl_seconds,
            900
        );
        assert_eq!(
            merge(&[decl("a", Approver::Any, Privacy::Identified, Some(5))])
                .unwrap()
                .ttl_seconds,
            60
        );
        assert_eq!(
            merge(&[decl(
                "a",
                Approver::Subject,
                Privacy::Identified,
                Some(10 * 86_400)
            )])
            .unwrap()
            .ttl_seconds,
            86_400
        );
    }

    #[test]
    fn the_binding_changes_with_every_part_and_ignores_order_and_case_of_resources() {
        let resources = vec!["resource://B".to_owned(), "resource://a".to_owned()];
        let reordered = vec![
            "resource://a".to_owned(),
            "resource://b".to_owned(),
            "resource://a".to_owned(),
        ];
        let scopes = vec!["x:read".to_owned()];
        let parts = |resources: &'static [String], principal: &'static str| BindingParts {
            resources,
            scopes: &[],
            principal,
            authority_record: "",
            session: "s",
            delegation: "e",
            application: "app",
            policy_set_version: "psv",
            policy_manifest: "m",
            contract_version: "2026-07-12",
            contract_sha: "c",
        };
        let leak = |v: Vec<String>| -> &'static [String] { Box::leak(v.into_boxed_slice()) };
        let a = binding_hash(&parts(leak(resources), "p"));
        let b = binding_hash(&parts(leak(reordered), "p"));
        assert_eq!(a, b);
        let c = binding_hash(&parts(leak(vec!["resource://a".into()]), "p"));
        assert_ne!(a, c);
        let mut with_scopes = parts(leak(vec!["resource://a".into()]), "p");
        with_scopes.scopes = &scopes;
        assert_ne!(binding_hash(&with_scopes), c);
        assert_ne!(
            binding_hash(&parts(leak(vec!["resource://a".into()]), "q")),
            c
        );
    }
}
