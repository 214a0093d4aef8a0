//! Gateway state: the immutable [`Snapshot`] the request path decides from, its builder,
//! the swap handle, and the live authority view (revocations, agent sessions, edges).
//!
//! What this crate owns: reading Postgres as `caracal_gateway` (read-only) into a snapshot
//! off the request path (`build`), swapping it in one store and healing missed
//! invalidations by polling (`handle`), and the authority view that revocations bite in at
//! once, including mid-stream (`authority`).
//!
//! What it must never do: let a failed build replace a good snapshot; report a view as
//! fresh when its consumer or its poll has not completed within the bound; log a secret.

pub mod authority;
pub mod build;
pub mod handle;
pub mod plugins;
pub mod snapshot;
pub mod standalone;

pub use authority::{Anchors, AuthorityView, Prefetched, ViewError};
pub use handle::{GATEWAY_STREAMS, Refresh, StateHandle};
pub use plugins::{InjectMode, PluginHook, PluginRef, PluginState};
pub use snapshot::{
    Application, Binding, Credential, KeyPlacement, OAuthClient, Operation, PolicySlot, Provider,
    RateLimit, Secret, Signer, Snapshot, ZoneState,
};
