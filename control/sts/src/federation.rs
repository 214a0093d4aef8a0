//! Federation (wire-contract §2.4 D): an external id_token for a `use=session`,
//! `sub_type=user` mandate.
//!
//! The request-shape rules are enforced here. Verifying id_tokens against the zone's
//! `subject_issuers` and their JWKS is not built yet; until it is, every federation request
//! fails closed with 401 `invalid_token` and says why.

use control_model::{Denial, ErrorCode, ZoneId};
use control_store::applications::ApplicationRow;

use crate::{error::StsError, exchange::Answer, form::TokenRequest, state::Sts};

pub(crate) async fn exchange(
    _sts: &Sts,
    _request_id: &str,
    req: &TokenRequest,
    _application: &ApplicationRow,
    _zone: &ZoneId,
) -> Result<Answer, StsError> {
    let extra = !req.resources.is_empty()
        || req.scope.is_some()
        || req.session_id.is_some()
        || req.agent_session_id.is_some()
        || req.delegation_edge_id.is_some()
        || req.approval_id.is_some();
    if extra {
        return Ok(Answer::Denied(Denial::bad_request(
            "federation takes no resource, scope, session, delegation or approval",
        )));
    }
    Ok(Answer::Denied(Denial::new(
        401,
        ErrorCode::InvalidToken,
        "invalid subject_token: federation is not available on this server yet",
    )))
}
