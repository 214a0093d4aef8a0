//! One call: a fresh store with its memory limiter, deadline and credentials; instantiation
//! from the `InstancePre`; the export; the classification of what went wrong.

use std::fmt;
use std::sync::Arc;

use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio::time::Instant;
use wasmtime::component::ResourceTable;
use wasmtime::{ResourceLimiter, Store, Trap, UpdateDeadline};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use zeroize::Zeroizing;

use crate::bindings::{
    Call, CredentialError, CredentialKind, CredentialsHost, Decision, Needs, PluginPre,
    WitCredential,
};
use crate::engine::{PluginHost, first_line};
use crate::ops::{CheckedOp, InjectRules, check_ops};
use crate::{
    Authorization, CallLimits, CompiledPlugin, FailureCause, MAX_DETAIL_BYTES, PluginFailure,
};

/// The largest message `hmac-sha256` accepts.
const MAX_MAC_MESSAGE_BYTES: usize = 1024 * 1024;
/// Audit attributes an authorizer may return.
const MAX_ATTRIBUTES: usize = 32;
/// Longest attribute key.
const MAX_ATTRIBUTE_KEY_BYTES: usize = 64;
/// Longest attribute value.
const MAX_ATTRIBUTE_VALUE_BYTES: usize = 1024;

/// One credential the host holds for a call. `Debug` never shows the bytes.
pub struct HostCredential {
    /// The handle the guest uses (`primary`, `resource-mandate`).
    pub name: String,
    /// What it is.
    pub kind: CredentialKind,
    secret: Zeroizing<Vec<u8>>,
}

impl HostCredential {
    /// A credential named `name`.
    pub fn new(name: impl Into<String>, kind: CredentialKind, secret: Zeroizing<Vec<u8>>) -> Self {
        HostCredential {
            name: name.into(),
            kind,
            secret,
        }
    }

    /// The bytes, for the gateway that attaches them. Never passed to a guest.
    pub fn expose(&self) -> &[u8] {
        &self.secret
    }
}

impl fmt::Debug for HostCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HostCredential")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// The credentials of one call, by handle.
#[derive(Debug, Default)]
pub struct CredentialSet {
    items: Vec<HostCredential>,
}

impl CredentialSet {
    /// An empty set.
    pub fn new() -> Self {
        CredentialSet::default()
    }

    /// Adds a credential; a second one with the same handle replaces the first.
    pub fn insert(&mut self, credential: HostCredential) {
        self.items.retain(|c| c.name != credential.name);
        self.items.push(credential);
    }

    /// The credential behind a handle.
    pub fn get(&self, handle: &str) -> Option<&HostCredential> {
        self.items.iter().find(|c| c.name == handle)
    }

    /// Whether no credential is held.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    fn handles(&self) -> Vec<WitCredential> {
        self.items
            .iter()
            .map(|c| WitCredential {
                name: c.name.clone(),
                kind: c.kind,
            })
            .collect()
    }
}

/// The data of a call's store.
pub(crate) struct CallState {
    wasi: WasiCtx,
    table: ResourceTable,
    limiter: MemoryLimiter,
    credentials: Option<Arc<CredentialSet>>,
    until: Instant,
    /// Epoch ticks the call has seen (see `new_store`).
    ticks: u32,
}

impl WasiView for CallState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// `types` has no functions; its host trait is empty.
impl crate::bindings::TypesHost for CallState {}

impl CredentialsHost for CallState {
    fn hmac_sha256(
        &mut self,
        handle: String,
        message: Vec<u8>,
    ) -> Result<Vec<u8>, CredentialError> {
        if message.len() > MAX_MAC_MESSAGE_BYTES {
            return Err(CredentialError::MessageTooLarge);
        }
        let credential = self
            .credentials
            .as_ref()
            .and_then(|set| set.get(&handle))
            .ok_or(CredentialError::UnknownCredential)?;
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(credential.expose())
            .map_err(|_invalid| CredentialError::UnknownCredential)?;
        mac.update(&message);
        Ok(mac.finalize().into_bytes().to_vec())
    }
}

/// Counts the linear memory of every memory in the store against one limit, and remembers a
/// refusal so that the trap that follows (a guest allocator aborts) is reported as the limit.
struct MemoryLimiter {
    limit: usize,
    used: usize,
    refused: bool,
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let after = self.used.saturating_sub(current).saturating_add(desired);
        if after > self.limit {
            self.refused = true;
            return Ok(false);
        }
        self.used = after;
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }
}

impl PluginHost {
    /// Runs the plugin's `configure` with a binding's config: what the plugin needs, or why it
    /// refuses the config (a [`FailureCause::GuestError`] whose detail is the guest's message).
    pub async fn configure(
        &self,
        plugin: &CompiledPlugin,
        config: &str,
        limits: CallLimits,
    ) -> Result<Needs, PluginFailure> {
        let until = Instant::now() + limits.deadline;
        let _permit = self.acquire(until).await?;
        let mut store = self.new_store(limits, until, None);
        let outcome = tokio::time::timeout_at(until, async {
            match &plugin.pre {
                PluginPre::Authorizer(pre) => {
                    let bindings = pre.instantiate_async(&mut store).await?;
                    bindings.call_configure(&mut store, config).await
                }
                PluginPre::Injector(pre) => {
                    let bindings = pre.instantiate_async(&mut store).await?;
                    bindings.call_configure(&mut store, config).await
                }
            }
        })
        .await;
        match settle(outcome, &store)? {
            Ok(needs) => Ok(needs),
            Err(message) => Err(PluginFailure::new(FailureCause::GuestError, message)),
        }
    }

    /// Runs an authorizer on one request.
    pub async fn authorize(
        &self,
        plugin: &CompiledPlugin,
        call: &Call,
        limits: CallLimits,
    ) -> Result<Authorization, PluginFailure> {
        let PluginPre::Authorizer(pre) = &plugin.pre else {
            return Err(PluginFailure::new(
                FailureCause::Unavailable,
                "the plugin is not an authorizer",
            ));
        };
        let until = Instant::now() + limits.deadline;
        let _permit = self.acquire(until).await?;
        let mut store = self.new_store(limits, until, None);
        let outcome = tokio::time::timeout_at(until, async {
            let bindings = pre.instantiate_async(&mut store).await?;
            bindings.call_authorize(&mut store, call).await
        })
        .await;
        match settle(outcome, &store)? {
            Decision::Allow(attributes) => Ok(Authorization::Allow {
                attributes: check_attributes(attributes)?,
            }),
            Decision::Deny(denial) => {
                if denial.reason.len() > MAX_DETAIL_BYTES {
                    return Err(PluginFailure::new(
                        FailureCause::BadOutput,
                        format!(
                            "the denial reason is {} bytes, more than {MAX_DETAIL_BYTES}",
                            denial.reason.len()
                        ),
                    ));
                }
                Ok(Authorization::Deny {
                    reason: denial.reason,
                    attributes: check_attributes(denial.attributes)?,
                })
            }
        }
    }

    /// Runs an injector on one request and checks its operations against `rules`. The guest
    /// sees the handles of `credentials`, never their bytes.
    pub async fn inject(
        &self,
        plugin: &CompiledPlugin,
        call: &Call,
        credentials: Arc<CredentialSet>,
        rules: &InjectRules,
        limits: CallLimits,
    ) -> Result<Vec<CheckedOp>, PluginFailure> {
        let PluginPre::Injector(pre) = &plugin.pre else {
            return Err(PluginFailure::new(
                FailureCause::Unavailable,
                "the plugin is not a credential injector",
            ));
        };
        let handles = credentials.handles();
        let until = Instant::now() + limits.deadline;
        let _permit = self.acquire(until).await?;
        let mut store = self.new_store(limits, until, Some(Arc::clone(&credentials)));
        let outcome = tokio::time::timeout_at(until, async {
            let bindings = pre.instantiate_async(&mut store).await?;
            bindings.call_inject(&mut store, call, &handles).await
        })
        .await;
        match settle(outcome, &store)? {
            Ok(ops) => check_ops(ops, &credentials, rules),
            Err(message) => Err(PluginFailure::new(FailureCause::GuestError, message)),
        }
    }

    async fn acquire(
        &self,
        until: Instant,
    ) -> Result<tokio::sync::SemaphorePermit<'_>, PluginFailure> {
        match tokio::time::timeout_at(until, self.permits().acquire()).await {
            Ok(Ok(permit)) => Ok(permit),
            Ok(Err(_)) | Err(_) => Err(PluginFailure::new(
                FailureCause::Capacity,
                "no plugin call slot became free before the deadline",
            )),
        }
    }

    fn new_store(
        &self,
        limits: CallLimits,
        until: Instant,
        credentials: Option<Arc<CredentialSet>>,
    ) -> Store<CallState> {
        let mut wasi = WasiCtx::builder();
        wasi.allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false);
        let state = CallState {
            wasi: wasi.build(),
            table: ResourceTable::new(),
            limiter: MemoryLimiter {
                limit: usize::try_from(limits.memory_bytes).unwrap_or(usize::MAX),
                used: 0,
                refused: false,
            },
            credentials,
            until,
            ticks: 0,
        };
        let mut store = Store::new(self.engine(), state);
        store.limiter(|state| &mut state.limiter);
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(|mut store| {
            let state = store.data_mut();
            if Instant::now() >= state.until {
                return Ok(UpdateDeadline::Interrupt);
            }
            state.ticks = state.ticks.saturating_add(1);
            // The first tick a call sees may fall anywhere in it, so a short call that
            // happens to cross one runs on: yielding would queue it behind every ready task,
            // and on a busy worker that wait alone could cost it its deadline. From the
            // second tick on it has run for a whole tick period and yields at each tick.
            if state.ticks < 2 {
                Ok(UpdateDeadline::Continue(1))
            } else {
                Ok(UpdateDeadline::Yield(1))
            }
        });
        store
    }
}

/// Turns the outcome of a guarded call into the guest's value or the cause of the failure.
fn settle<T>(
    outcome: Result<wasmtime::Result<T>, tokio::time::error::Elapsed>,
    store: &Store<CallState>,
) -> Result<T, PluginFailure> {
    match outcome {
        Ok(Ok(value)) => Ok(value),
        Err(_) => Err(PluginFailure::new(
            FailureCause::Timeout,
            "the call did not finish before its deadline",
        )),
        Ok(Err(error)) => Err(classify(&error, store.data())),
    }
}

fn classify(error: &wasmtime::Error, state: &CallState) -> PluginFailure {
    if state.limiter.refused {
        return PluginFailure::new(
            FailureCause::MemoryLimit,
            format!(
                "the guest asked for more than its memory limit of {} bytes",
                state.limiter.limit
            ),
        );
    }
    match error.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => PluginFailure::new(
            FailureCause::Timeout,
            "the guest was interrupted at its deadline",
        ),
        Some(trap) => PluginFailure::new(FailureCause::Trap, trap.to_string()),
        None => PluginFailure::new(FailureCause::Trap, first_line(error)),
    }
}

fn check_attributes(
    attributes: Vec<crate::Attribute>,
) -> Result<Vec<(String, String)>, PluginFailure> {
    if attributes.len() > MAX_ATTRIBUTES {
        return Err(PluginFailure::new(
            FailureCause::BadOutput,
            format!(
                "{} audit attributes, more than {MAX_ATTRIBUTES}",
                attributes.len()
            ),
        ));
    }
    attributes
        .into_iter()
        .map(|a| {
            if a.key.is_empty() || a.key.len() > MAX_ATTRIBUTE_KEY_BYTES {
                return Err(PluginFailure::new(
                    FailureCause::BadOutput,
                    format!("an audit attribute key must have 1 to {MAX_ATTRIBUTE_KEY_BYTES} bytes"),
                ));
            }
            if a.value.len() > MAX_ATTRIBUTE_VALUE_BYTES {
                return Err(PluginFailure::new(
                    FailureCause::BadOutput,
                    format!(
                        "the value of audit attribute {} is longer than {MAX_ATTRIBUTE_VALUE_BYTES} bytes",
                        a.key
                    ),
                ));
            }
            Ok((a.key, a.value))
        })
        .collect()
}
