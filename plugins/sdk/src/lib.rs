//! Write plugins for the Caracal gateway: WebAssembly components that authorize requests or
//! inject upstream credentials.
//!
//! This crate owns the guest side of the contract in `wit/gateway.wit` (package
//! `caracal:gateway@0.1.0`): the bindings wit-bindgen generates for its two worlds, one trait
//! per world, the export macros, and small helpers that plugins keep needing (reading the
//! binding's JSON configuration, looking up headers, building header operations, encoding a
//! MAC, reading the gateway's clock). It never does I/O and never holds a credential: the
//! gateway keeps credentials and hands a plugin only opaque handles.
//!
//! # The two kinds of plugin
//!
//! | World | Trait | Export macro | Runs |
//! | --- | --- | --- | --- |
//! | `authorizer` | [`Authorizer`] | [`export_authorizer!`] | after the gateway's own checks, before the upstream is contacted; allows (adding audit attributes) or denies |
//! | `credential-injector` | [`CredentialInjector`] | [`export_injector!`] | while the outbound request is built; returns header and query operations that the gateway checks and applies |
//!
//! A plugin crate implements one of the traits on a type of its own and exports it with the
//! matching macro, once. One component implements exactly one world.
//!
//! # An authorizer
//!
//! ```no_run
//! use caracal_plugin_sdk::{Authorizer, Call, Decision, Needs, config};
//!
//! #[derive(serde::Deserialize)]
//! #[serde(deny_unknown_fields)]
//! struct Settings {
//!     read_only: bool,
//! }
//!
//! struct ReadOnly;
//!
//! impl Authorizer for ReadOnly {
//!     fn configure(config: &str) -> Result<Needs, String> {
//!         config::parse::<Settings>(config)?;
//!         Ok(Needs::default())
//!     }
//!
//!     fn authorize(call: Call) -> Decision {
//!         let settings = match config::parse::<Settings>(&call.config) {
//!             Ok(settings) => settings,
//!             Err(err) => return Decision::deny(err.to_string()),
//!         };
//!         if settings.read_only && call.request.method != "GET" {
//!             return Decision::deny(format!("method {} is not GET", call.request.method));
//!         }
//!         Decision::allow_with([("rule", "read-only")])
//!     }
//! }
//!
//! caracal_plugin_sdk::export_authorizer!(ReadOnly);
//! ```
//!
//! # A credential injector
//!
//! ```no_run
//! use caracal_plugin_sdk::{Call, Credential, CredentialInjector, HeaderOp, PRIMARY};
//!
//! struct BearerInAuthorization;
//!
//! impl CredentialInjector for BearerInAuthorization {
//!     fn inject(_call: Call, _credentials: Vec<Credential>) -> Result<Vec<HeaderOp>, String> {
//!         Ok(vec![HeaderOp::attach_header("authorization", PRIMARY, Some("Bearer"))])
//!     }
//! }
//!
//! caracal_plugin_sdk::export_injector!(BearerInAuthorization);
//! ```
//!
//! # Building
//!
//! A plugin is a `cdylib` built for `wasm32-wasip2`:
//!
//! ```toml
//! [lib]
//! crate-type = ["cdylib"]
//! ```
//!
//! `cargo build --target wasm32-wasip2 --release` then writes the component to
//! `target/wasm32-wasip2/release/<crate_name>.wasm`; the Rust toolchain turns the core module
//! into a component by itself.
//!
//! The export macros expand to wit-bindgen's ABI glue, which is `unsafe` code, under an
//! `#[allow(unsafe_code)]`: a plugin crate may `deny` that lint but not `forbid` it.
//!
//! # What the gateway guarantees and expects
//!
//! - Every call gets a fresh instance with its own memory limit and deadline, so a plugin
//!   keeps no state between calls. `configure` runs once per binding, when it is loaded; the
//!   configuration text comes again with every call in [`Call::config`].
//! - A trap (a panic, for instance), a deadline overrun, running out of memory, an error result
//!   or output the gateway refuses fails the request with 503 `plugin_failed`. Plugins should
//!   therefore return a denial or an error instead of panicking: the audit event then says why.
//! - There is no file system, network, environment or clock: read the time from
//!   [`Call::now_unix_ms`] (see [`time::UtcDateTime`]), which the gateway took at admission.
//!
//! # Where to start reading
//!
//! [`Authorizer`] and [`CredentialInjector`], then the helpers: [`config::parse`],
//! [`RequestHead::header`], [`HeaderOp`]'s constructors and the header name checks in
//! [`injector`], [`encoding`], [`time`] and [`testing`]. The types
//! of the contract ([`Call`], [`RequestHead`], [`Principal`], [`Mandate`], [`Resource`],
//! [`Needs`], ...) are re-exported from the generated bindings and documented from the WIT.
//!
//! On a native target (`cargo test`) the generated code compiles, so plugin logic kept in
//! plain functions can be unit-tested there, with calls from [`testing::CallBuilder`]; calling a host function such as
//! [`hmac_sha256`] outside a component is not possible and panics.

pub mod authorizer;
pub mod config;
pub mod encoding;
pub mod injector;
pub mod testing;
pub mod time;

mod request;

pub use authorizer::Authorizer;
pub use generated::authorizer::caracal::gateway::types::{
    Attribute, Call, Header, Mandate, Needs, Principal, RequestHead, Resource,
};
pub use generated::authorizer::{Decision, Denial};
pub use generated::injector::caracal::gateway::credentials::{
    Credential, CredentialError, CredentialKind,
};
pub use generated::injector::{AttachHeader, AttachQuery, HeaderOp};
pub use injector::{CredentialInjector, PRIMARY, RESOURCE_MANDATE, hmac_sha256};

/// The code wit-bindgen generates from `wit/gateway.wit`, one private module per world, and
/// the paths the export macros reach it by.
///
/// The two worlds share the interface `types`: it is generated once, with the authorizer
/// world, and the injector's bindings refer to it, so a [`Call`] is the same type in both.
///
/// Each world's exports are described only by its export macro (wit-bindgen's
/// `pub_export_macro`), which writes the world's component type into the plugin crate that
/// invokes it, so a component exports exactly the world its crate exported. wit-bindgen also
/// writes an import-only description of each world into this crate, and both are linked into
/// every plugin: a component therefore also declares the other world's types, including a
/// type-only import of `caracal:gateway/credentials` in an authorizer. That import has no
/// function (an authorizer that called [`hmac_sha256`](crate::hmac_sha256) would import it
/// and fail to load), and hosts need not provide type-only imports.
#[doc(hidden)]
pub mod generated {
    pub use wit_bindgen::rt as wit_bindgen_rt;

    /// What the authorizer's export macro uses.
    pub mod authorizer {
        pub use super::authorizer_world::{
            __export_world_authorizer_cabi, __post_return_authorize, __post_return_configure,
            _export_authorize_cabi, _export_configure_cabi, Decision, Denial, Guest, caracal,
        };
    }

    /// What the injector's export macro uses.
    pub mod injector {
        pub use super::injector_world::{
            __export_world_credential_injector_cabi, __post_return_configure, __post_return_inject,
            _export_configure_cabi, _export_inject_cabi, AttachHeader, AttachQuery, Guest,
            HeaderOp, caracal,
        };
    }

    /// The `authorizer` world.
    #[allow(
        unsafe_code,
        clippy::unwrap_used,
        clippy::panic,
        reason = "generated ABI glue: raw pointers into linear memory, and wit-bindgen's own checks"
    )]
    mod authorizer_world {
        wit_bindgen::generate!({
            path: "../../wit",
            world: "caracal:gateway/authorizer",
            pub_export_macro: true,
            disable_custom_section_link_helpers: true,
            additional_derives: [PartialEq, Eq],
            runtime_path: "crate::generated::wit_bindgen_rt",
            with: {
                "caracal:gateway/types@0.1.0": generate,
            },
        });
    }

    /// The `credential-injector` world.
    #[allow(
        unsafe_code,
        clippy::unwrap_used,
        clippy::panic,
        reason = "generated ABI glue: raw pointers into linear memory, and wit-bindgen's own checks"
    )]
    mod injector_world {
        wit_bindgen::generate!({
            path: "../../wit",
            world: "caracal:gateway/credential-injector",
            pub_export_macro: true,
            disable_custom_section_link_helpers: true,
            additional_derives: [PartialEq, Eq],
            runtime_path: "crate::generated::wit_bindgen_rt",
            with: {
                "caracal:gateway/types@0.1.0": crate::generated::authorizer::caracal::gateway::types,
                "caracal:gateway/credentials@0.1.0": generate,
            },
        });
    }
}

/// Export a type implementing [`Authorizer`] as the component's `authorizer` world.
///
/// Invoke it once, at the top level of the plugin crate, with the name of the type (a plain
/// identifier in scope):
///
/// ```ignore
/// caracal_plugin_sdk::export_authorizer!(MyAuthorizer);
/// ```
#[macro_export]
macro_rules! export_authorizer {
    ($ty:ident) => {
        #[allow(
            unsafe_code,
            reason = "the exported functions are wit-bindgen's ABI glue, expanded here"
        )]
        const _: () = {
    $crate::__export_authorizer_impl!($ty with_types_in $crate::generated::authorizer);
        };
    };
}

/// Export a type implementing [`CredentialInjector`] as the component's `credential-injector`
/// world.
///
/// Invoke it once, at the top level of the plugin crate, with the name of the type (a plain
/// identifier in scope):
///
/// ```ignore
/// caracal_plugin_sdk::export_injector!(MyInjector);
/// ```
#[macro_export]
macro_rules! export_injector {
    ($ty:ident) => {
        #[allow(
            unsafe_code,
            reason = "the exported functions are wit-bindgen's ABI glue, expanded here"
        )]
        const _: () = {
            $crate::__export_credential_injector_impl!(
                $ty with_types_in $crate::generated::injector
            );
        };
    };
}
