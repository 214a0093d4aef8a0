//! Steps 18–22: which resource, and may this mandate reach it at all.

use std::{ops::ControlFlow, sync::Arc};

use control_model::{Denial, ErrorCode};
use http::Request;
use hyper::body::Incoming;

use super::{Authenticated, Gateway, Refusal, RequestCtx, Resolved};

impl Gateway {
    pub(super) fn resolve(
        &self,
        ctx: &mut RequestCtx,
        auth: &Authenticated,
        req: &Request<Incoming>,
    ) -> ControlFlow<Refusal, Resolved> {
        let policy_denied =
            |cause| ControlFlow::Break(Refusal::caused(Denial::forbidden("policy denied"), cause));
        // Step 18: the resource exists in the zone.
        let identifier = req
            .headers()
            .get("x-caracal-resource")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        let Some(binding) = auth.zone.resources.get(identifier).map(Arc::clone) else {
            return policy_denied("resource_not_found");
        };
        // Step 19: inside the delegation.
        if let Some(proof) = auth.revalidated.proof()
            && !proof.allows_resource(&binding.resource_id, &binding.identifier)
        {
            return policy_denied("resource_outside_delegation");
        }
        // Step 20: the operation floor.
        if binding.enforced {
            let method = req.method().as_str().to_ascii_uppercase();
            let path = req.uri().path();
            let Some(operation) = binding.operation(&method, path) else {
                return ControlFlow::Break(Refusal::caused(
                    Denial::new(
                        403,
                        ErrorCode::OperationNotPermitted,
                        format!(
                            "operation {method} {path} is not declared on resource {}; declare it or set operation_enforcement to transport_uniform",
                            binding.identifier
                        ),
                    ),
                    "operation_not_permitted",
                ));
            };
            if !auth.mandate.scopes().any(|s| s == operation.scope) {
                return ControlFlow::Break(Refusal::caused(
                    Denial::new(
                        403,
                        ErrorCode::OperationNotPermitted,
                        format!(
                            "operation {method} {path} on resource {} requires scope {}, which the presented mandate does not carry",
                            binding.identifier, operation.scope
                        ),
                    ),
                    "operation_not_permitted",
                ));
            }
        }
        // Step 21: the control audience needs a control key, which never comes this way.
        if binding.is_control {
            return ControlFlow::Break(Refusal::caused(
                Denial::forbidden("control resource requires a control key"),
                "control_resource_requires_control_key",
            ));
        }
        // Step 22: authorization-code grants are not held by this gateway; the provider's
        // material is unavailable and step 29 answers for it.
        ctx.audit.set("provider_id", binding.provider.id.clone());
        ctx.audit.set("auth_mode", binding.provider.auth_mode());
        ControlFlow::Continue(Resolved { binding })
    }
}
