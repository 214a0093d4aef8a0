//! The gateway's WebAssembly plugin host.
//!
//! Owns everything wasmtime: the one [`wasmtime::Engine`] of a process (pooling allocator when
//! the address space allows it, epoch interruption driven by a ticker), the only `bindgen!` of
//! the `caracal:gateway@0.1.0` worlds in `wit/`, compiled plugins ([`CompiledPlugin`], one
//! `InstancePre` per component, built when a snapshot is built and reused while the digest is
//! unchanged), and calls under limits: a fresh `Store` per call, a memory limit per instance, a
//! deadline per call, a semaphore sized to the pool in front of instantiation.
//!
//! What it must never do: hand a credential's bytes to a guest (credentials are named by
//! handles; the only import that touches them, `hmac-sha256`, returns a MAC), block a tokio
//! worker (calls are async and yield at every epoch tick), or let a guest's failure become an
//! allow: every trap, overrun, limit hit, error result or refused output is a
//! [`PluginFailure`] that the gateway turns into 503 `plugin_failed`.
//!
//! Start reading at [`PluginHost`]: [`PluginHost::start`], [`PluginHost::compile`],
//! [`PluginHost::configure`], [`PluginHost::authorize`] and [`PluginHost::inject`]. The checks
//! on what an injector returns live in [`ops`].

mod bindings;
mod call;
mod engine;
pub mod ops;

use std::fmt;
use std::time::Duration;

pub use bindings::{
    AttachHeader, AttachQuery, Attribute, Call, CredentialKind, Decision, Denial, Header, HeaderOp,
    Mandate, Needs, Principal, RequestHead, Resource,
};
pub use call::{CredentialSet, HostCredential};
pub use engine::{HostConfig, HostConfigError, PluginHost};

/// The WIT package every plugin implements.
pub const WIT_PACKAGE: &str = "caracal:gateway@0.1.0";

/// The world a plugin implements (`gateway_plugins.world`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum World {
    /// `authorizer`: exports `configure` and `authorize`.
    Authorizer,
    /// `credential-injector`: exports `configure` and `inject`, imports `credentials`.
    CredentialInjector,
}

impl World {
    /// The world's name as stored and as written in the WIT package.
    pub fn as_str(self) -> &'static str {
        match self {
            World::Authorizer => "authorizer",
            World::CredentialInjector => "credential-injector",
        }
    }

    /// Parses a stored world name.
    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "authorizer" => Some(World::Authorizer),
            "credential-injector" => Some(World::CredentialInjector),
            _ => None,
        }
    }
}

impl fmt::Display for World {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The limits of one call, from the binding (`deadline_ms`, `memory_limit_bytes`), capped by
/// the host's configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CallLimits {
    /// Wall-clock budget for acquiring a slot, instantiating and running the guest.
    pub deadline: Duration,
    /// The most linear memory (all memories of the instance together) the guest may hold.
    pub memory_bytes: u64,
}

impl CallLimits {
    /// The shortest deadline `configure` gets: it runs once per binding, off the request path
    /// (snapshot build, binding through the admin API), and may pay for a cold instance.
    pub const CONFIGURE_DEADLINE_FLOOR: Duration = Duration::from_millis(250);

    /// The limits of a `configure` call for a binding with these limits: the same memory,
    /// a deadline of at least [`CallLimits::CONFIGURE_DEADLINE_FLOOR`]. The gateway and the
    /// admin API use the same, so a config one accepts the other accepts.
    pub fn for_configure(self) -> CallLimits {
        CallLimits {
            deadline: self.deadline.max(Self::CONFIGURE_DEADLINE_FLOOR),
            memory_bytes: self.memory_bytes,
        }
    }
}

impl Default for CallLimits {
    /// The column defaults of `resource_plugin_bindings`: 5 ms and 16 MiB.
    fn default() -> Self {
        CallLimits {
            deadline: Duration::from_millis(5),
            memory_bytes: 16 * 1024 * 1024,
        }
    }
}

/// A component compiled and linked against its world, ready to instantiate.
pub struct CompiledPlugin {
    digest: [u8; 32],
    world: World,
    pre: bindings::PluginPre,
}

impl CompiledPlugin {
    /// SHA-256 of the component bytes.
    pub fn digest(&self) -> &[u8; 32] {
        &self.digest
    }

    /// Lowercase hex of [`CompiledPlugin::digest`].
    pub fn digest_hex(&self) -> String {
        hex::encode(self.digest)
    }

    /// The world the component implements.
    pub fn world(&self) -> World {
        self.world
    }
}

impl fmt::Debug for CompiledPlugin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CompiledPlugin")
            .field("digest", &self.digest_hex())
            .field("world", &self.world)
            .finish_non_exhaustive()
    }
}

/// Why a component could not be loaded (upload validation or snapshot build).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoadError {
    /// The bytes are not a WebAssembly component (a core module, or not WebAssembly at all).
    #[error("not a WebAssembly component: {0}")]
    NotAComponent(String),
    /// The component does not implement the world: a missing or mistyped export, or an
    /// import the host does not provide.
    #[error("the component does not implement world {world} of {package}: {detail}", package = WIT_PACKAGE)]
    WrongWorld {
        /// The world it was checked against.
        world: World,
        /// What did not match.
        detail: String,
    },
}

/// What went wrong in a plugin call. Every cause fails the request closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailureCause {
    /// The deadline passed (guest still running, or waiting on a host call).
    Timeout,
    /// The guest tried to hold more memory than its limit.
    MemoryLimit,
    /// The guest trapped (including a panic or an abort).
    Trap,
    /// The guest returned an error (`configure` or `inject`).
    GuestError,
    /// The guest returned output the host refuses (reserved header, bad name or value, too
    /// large, unknown handle, ...).
    BadOutput,
    /// No call slot became free within the deadline.
    Capacity,
    /// The plugin could not be loaded or configured when the snapshot was built.
    Unavailable,
}

impl FailureCause {
    /// The cause as written in audit events and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureCause::Timeout => "timeout",
            FailureCause::MemoryLimit => "memory_limit",
            FailureCause::Trap => "trap",
            FailureCause::GuestError => "guest_error",
            FailureCause::BadOutput => "bad_output",
            FailureCause::Capacity => "capacity",
            FailureCause::Unavailable => "unavailable",
        }
    }

    /// Every cause, for metric families.
    pub const ALL: [FailureCause; 7] = [
        FailureCause::Timeout,
        FailureCause::MemoryLimit,
        FailureCause::Trap,
        FailureCause::GuestError,
        FailureCause::BadOutput,
        FailureCause::Capacity,
        FailureCause::Unavailable,
    ];
}

/// A failed plugin call: the cause and a short detail for the audit event and the log. The
/// detail never holds a credential (guests never see one).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {detail}", cause.as_str())]
pub struct PluginFailure {
    /// The cause.
    pub cause: FailureCause,
    /// What happened, at most [`MAX_DETAIL_BYTES`] bytes.
    pub detail: String,
}

/// The longest failure detail or guest-provided reason kept (longer text is cut).
pub const MAX_DETAIL_BYTES: usize = 1024;

impl PluginFailure {
    /// A failure with a detail cut to [`MAX_DETAIL_BYTES`].
    pub fn new(cause: FailureCause, detail: impl Into<String>) -> Self {
        PluginFailure {
            cause,
            detail: truncate(detail.into(), MAX_DETAIL_BYTES),
        }
    }
}

/// What an authorizer decided, after the host checked the output's limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Authorization {
    /// Continue; the attributes go into the audit event.
    Allow {
        /// Audit attributes (checked: at most 32, bounded sizes).
        attributes: Vec<(String, String)>,
    },
    /// Refuse with 403.
    Deny {
        /// The guest's reason (audit only).
        reason: String,
        /// Audit attributes.
        attributes: Vec<(String, String)>,
    },
}

/// Cuts `text` to at most `max` bytes on a character boundary.
pub(crate) fn truncate(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut end = max;
        while end > 0 && !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

#[cfg(test)]
mod tests;
