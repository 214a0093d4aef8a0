//! The Coordinator's route table (wire-contract §7.3, §7.4; services and invocations are
//! ours, decision 0027): method, path template, operation,
//! and whether the operator token may call it (§7.1). Every path starts with
//! `/zones/{zone_id}`; the first path parameter is always the zone.

use http::Method;

use crate::auth::IdentityCheck;

/// The operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `POST /zones/{z}/agents`.
    Start,
    /// `GET /zones/{z}/agents`.
    List,
    /// `GET /zones/{z}/agents/{id}`.
    Get,
    /// `DELETE /zones/{z}/agents/{id}`.
    Terminate,
    /// `POST /zones/{z}/agents/{id}/heartbeat`.
    Heartbeat,
    /// `POST /zones/{z}/agents/{id}/lease`.
    Lease,
    /// `GET /zones/{z}/agents/{id}/children`.
    Children,
    /// `GET /zones/{z}/agents/{id}/effective-authority`.
    EffectiveAuthority,
    /// `PATCH /zones/{z}/agents/{id}/suspend`.
    Suspend,
    /// `PATCH /zones/{z}/agents/{id}/resume`.
    Resume,
    /// `POST /zones/{z}/delegations`.
    Delegate,
    /// `PATCH /zones/{z}/delegations/{id}/revoke`.
    Revoke,
    /// `GET /zones/{z}/delegations/active`.
    Active,
    /// `GET /zones/{z}/delegations/inbound/{session}`.
    Inbound,
    /// `GET /zones/{z}/delegations/inbound/{session}/{id}`.
    InboundOne,
    /// `GET /zones/{z}/delegations/outbound/{session}`.
    Outbound,
    /// `GET /zones/{z}/delegations/{id}/traverse`.
    Traverse,
    /// `GET /zones/{z}/delegations/{id}/impact`.
    Impact,
    /// `POST /zones/{z}/services`.
    Register,
    /// `GET /zones/{z}/services`.
    Services,
    /// `GET /zones/{z}/services/{id}`.
    Service,
    /// `PATCH /zones/{z}/services/{id}/health`.
    ServiceHealth,
    /// `DELETE /zones/{z}/services/{id}`.
    Deregister,
    /// `POST /zones/{z}/services/{id}/claim`.
    Claim,
    /// `GET /zones/{z}/services/{id}/invocations`.
    Invocations,
    /// `POST /zones/{z}/invocations`.
    Invoke,
    /// `GET /zones/{z}/invocations/{id}`.
    Invocation,
    /// `POST /zones/{z}/invocations/{id}/complete`.
    Complete,
    /// `POST /zones/{z}/invocations/{id}/cancel`.
    Cancel,
}

impl Op {
    /// Where the caller's identity rows and rate are checked (decision 0033). The session
    /// start, the hot write, confirms them as the first read of its own transaction; every
    /// other route has them checked before it runs.
    pub fn identity_check(self) -> IdentityCheck {
        match self {
            Op::Start => IdentityCheck::InRoute,
            _ => IdentityCheck::Now,
        }
    }
}

/// One route.
#[derive(Debug)]
pub struct Route {
    /// Method.
    pub method: Method,
    /// Template; `{name}` matches one non-empty segment.
    pub path: &'static str,
    /// Operation.
    pub op: Op,
    /// Whether `CARACAL_COORDINATOR_TOKEN` may call it (otherwise only session mandates).
    pub operator: bool,
}

const fn route(method: Method, path: &'static str, op: Op, operator: bool) -> Route {
    Route {
        method,
        path,
        op,
        operator,
    }
}

/// Every route. Literal segments come before parameters where both could match.
pub const ROUTES: &[Route] = &[
    route(Method::POST, "/zones/{z}/agents", Op::Start, false),
    route(Method::GET, "/zones/{z}/agents", Op::List, true),
    route(Method::GET, "/zones/{z}/agents/{id}", Op::Get, true),
    route(
        Method::DELETE,
        "/zones/{z}/agents/{id}",
        Op::Terminate,
        true,
    ),
    route(
        Method::POST,
        "/zones/{z}/agents/{id}/heartbeat",
        Op::Heartbeat,
        false,
    ),
    route(
        Method::POST,
        "/zones/{z}/agents/{id}/lease",
        Op::Lease,
        false,
    ),
    route(
        Method::GET,
        "/zones/{z}/agents/{id}/children",
        Op::Children,
        true,
    ),
    route(
        Method::GET,
        "/zones/{z}/agents/{id}/effective-authority",
        Op::EffectiveAuthority,
        true,
    ),
    route(
        Method::PATCH,
        "/zones/{z}/agents/{id}/suspend",
        Op::Suspend,
        true,
    ),
    route(
        Method::PATCH,
        "/zones/{z}/agents/{id}/resume",
        Op::Resume,
        true,
    ),
    route(Method::POST, "/zones/{z}/delegations", Op::Delegate, false),
    route(
        Method::GET,
        "/zones/{z}/delegations/active",
        Op::Active,
        true,
    ),
    route(
        Method::GET,
        "/zones/{z}/delegations/inbound/{s}",
        Op::Inbound,
        true,
    ),
    route(
        Method::GET,
        "/zones/{z}/delegations/inbound/{s}/{id}",
        Op::InboundOne,
        true,
    ),
    route(
        Method::GET,
        "/zones/{z}/delegations/outbound/{s}",
        Op::Outbound,
        true,
    ),
    route(
        Method::PATCH,
        "/zones/{z}/delegations/{id}/revoke",
        Op::Revoke,
        true,
    ),
    route(
        Method::GET,
        "/zones/{z}/delegations/{id}/traverse",
        Op::Traverse,
        true,
    ),
    route(
        Method::GET,
        "/zones/{z}/delegations/{id}/impact",
        Op::Impact,
        true,
    ),
    route(Method::POST, "/zones/{z}/services", Op::Register, false),
    route(Method::GET, "/zones/{z}/services", Op::Services, true),
    route(Method::GET, "/zones/{z}/services/{id}", Op::Service, true),
    route(
        Method::DELETE,
        "/zones/{z}/services/{id}",
        Op::Deregister,
        true,
    ),
    route(
        Method::PATCH,
        "/zones/{z}/services/{id}/health",
        Op::ServiceHealth,
        false,
    ),
    route(
        Method::POST,
        "/zones/{z}/services/{id}/claim",
        Op::Claim,
        false,
    ),
    route(
        Method::GET,
        "/zones/{z}/services/{id}/invocations",
        Op::Invocations,
        true,
    ),
    route(Method::POST, "/zones/{z}/invocations", Op::Invoke, false),
    route(
        Method::GET,
        "/zones/{z}/invocations/{id}",
        Op::Invocation,
        true,
    ),
    route(
        Method::POST,
        "/zones/{z}/invocations/{id}/complete",
        Op::Complete,
        false,
    ),
    route(
        Method::POST,
        "/zones/{z}/invocations/{id}/cancel",
        Op::Cancel,
        true,
    ),
];

impl Route {
    /// The path parameters when `segments` match the template.
    pub fn matches<'a>(&self, segments: &[&'a str]) -> Option<Vec<&'a str>> {
        let template: Vec<&str> = self.path.trim_start_matches('/').split('/').collect();
        if template.len() != segments.len() {
            return None;
        }
        let mut params = Vec::new();
        for (want, got) in template.iter().zip(segments) {
            if want.starts_with('{') {
                if got.is_empty() {
                    return None;
                }
                params.push(*got);
            } else if want != got {
                return None;
            }
        }
        Some(params)
    }
}

/// How a path resolves.
#[derive(Debug)]
pub enum Found<'a> {
    /// A route and its parameters (the zone first).
    Route(&'static Route, Vec<&'a str>),
    /// The path exists with other methods.
    WrongMethod,
    /// No route has the path.
    Missing,
}

/// The route of `method` on `segments`.
pub fn find<'a>(segments: &[&'a str], method: &Method) -> Found<'a> {
    let mut path_known = false;
    for route in ROUTES {
        let Some(params) = route.matches(segments) else {
            continue;
        };
        if route.method == *method {
            return Found::Route(route, params);
        }
        path_known = true;
    }
    if path_known {
        Found::WrongMethod
    } else {
        Found::Missing
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(method: Method, path: &str) -> Option<(Op, Vec<String>)> {
        let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        match find(&segments, &method) {
            Found::Route(route, params) => {
                Some((route.op, params.into_iter().map(str::to_owned).collect()))
            }
            Found::WrongMethod | Found::Missing => None,
        }
    }

    #[test]
    fn literal_segments_win_and_parameters_come_in_order() {
        assert_eq!(
            op(Method::GET, "/zones/z1/delegations/active").map(|o| o.0),
            Some(Op::Active)
        );
        assert_eq!(
            op(Method::GET, "/zones/z1/delegations/inbound/s1/e1"),
            Some((Op::InboundOne, vec!["z1".into(), "s1".into(), "e1".into()]))
        );
        assert_eq!(
            op(Method::DELETE, "/zones/z1/agents/a1").map(|o| o.0),
            Some(Op::Terminate)
        );
        assert!(op(Method::GET, "/zones/z1/agents/").is_none());
        let segments = ["zones", "z1", "agents", "a1"];
        assert!(matches!(find(&segments, &Method::PUT), Found::WrongMethod));
        assert!(matches!(find(&["zones"], &Method::GET), Found::Missing));
    }

    #[test]
    fn the_operator_token_reaches_exactly_the_operator_routes() {
        let agent_only: Vec<Op> = ROUTES
            .iter()
            .filter(|r| !r.operator)
            .map(|r| r.op)
            .collect();
        assert_eq!(
            agent_only,
            vec![
                Op::Start,
                Op::Heartbeat,
                Op::Lease,
                Op::Delegate,
                Op::Register,
                Op::ServiceHealth,
                Op::Claim,
                Op::Invoke,
                Op::Complete,
            ]
        );
    }
}
