//! The `plugin_bindings` area (not served yet: its table is empty, so its paths answer 404).

use crate::{
    areas::Reply,
    error::ApiError,
    request::AdminRequest,
    routes::{Route, unknown_op},
    state::Api,
};

/// The area's operations.
pub const ROUTES: &[Route] = &[];

/// Runs operation `op` with its path parameters.
pub async fn handle(
    _api: &Api,
    _req: &AdminRequest,
    op: &str,
    _p: &[&str],
) -> Result<Reply, ApiError> {
    Err(unknown_op(op))
}
