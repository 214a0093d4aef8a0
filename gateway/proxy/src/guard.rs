//! Upstream guard against server-side request forgery (wire-contract §4.6, check 27).
//!
//! Two layers, because neither is enough alone:
//! - [`UpstreamGuard::check_url`] runs per request on the resource's `upstream_url`: scheme, userinfo,
//!   `UPSTREAM_HOST_ALLOWLIST`, and a host written as a literal IP. hyper-util's `HttpConnector` never
//!   hands a literal IP to its resolver, so this is the only place such a host is checked.
//! - [`GuardedResolver`] sits inside the connector and checks every address a name resolves to, at dial
//!   time. A name that resolved to a harmless address when the resource was saved and to the metadata
//!   service now (DNS rebinding) is still refused.
//!
//! Loopback and private ranges stay allowed: upstreams commonly live there.

use std::error::Error;
use std::fmt;
use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};

use hyper_util::client::legacy::connect::dns::Name;
use url::{Host, Url};

/// What the resolver's error says when every resolved address was blocked (the catalog description of
/// check 27).
pub(crate) const NOT_ADDRESSABLE: &str = "upstream not addressable";

/// The per-request half of the guard: which upstream URLs may be dialled at all.
#[derive(Debug, Clone, Default)]
pub(crate) struct UpstreamGuard {
    /// Normalised hosts (lower case, no brackets, no trailing dot); `None` allows every host.
    allowlist: Option<Vec<String>>,
}

impl UpstreamGuard {
    /// A guard with `UPSTREAM_HOST_ALLOWLIST` (`None` when unset). `Some` with no entries allows no host.
    pub(crate) fn new(allowlist: Option<Vec<String>>) -> Self {
        let allowlist =
            allowlist.map(|hosts| hosts.iter().map(|host| normalize_host(host)).collect());
        Self { allowlist }
    }

    /// Scheme http/https, no userinfo, a host, host in the allowlist when set, and a literal IP host not in a
    /// blocked class. Err carries a short non-secret reason for the audit draft.
    pub(crate) fn check_url(&self, url: &Url) -> Result<(), &'static str> {
        if !matches!(url.scheme(), "http" | "https") {
            return Err("upstream scheme is not http or https");
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err("upstream url carries userinfo");
        }
        let Some(host) = url.host() else {
            return Err("upstream url has no host");
        };
        if let Some(allowlist) = &self.allowlist {
            let name = normalize_host(url.host_str().unwrap_or_default());
            if !allowlist.contains(&name) {
                return Err("upstream host not in the allowlist");
            }
        }
        let literal = match host {
            Host::Domain(_) => None,
            Host::Ipv4(v4) => Some(IpAddr::V4(v4)),
            Host::Ipv6(v6) => Some(IpAddr::V6(v6)),
        };
        if literal.is_some_and(address_blocked) {
            return Err("upstream address is in a blocked class");
        }
        Ok(())
    }
}

/// Lower case, without IPv6 brackets or a trailing dot (`Example.COM.` and `example.com` are one DNS name).
fn normalize_host(host: &str) -> String {
    let host = host.trim();
    let host = host
        .strip_prefix('[')
        .and_then(|inner| inner.strip_suffix(']'))
        .unwrap_or(host);
    host.trim_end_matches('.').to_ascii_lowercase()
}

/// Link-local (169.254/16, fe80::/10), multicast, unspecified (0.0.0.0, ::), also IPv4-mapped/compatible
/// (::ffff:a.b.c.d) and NAT64 64:ff9b::/96-embedded IPv4 in those classes, and the IPv4 broadcast.
/// Loopback and private ranges are ALLOWED.
pub(crate) fn address_blocked(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4_blocked(v4),
        IpAddr::V6(v6) => v6_blocked(v6),
    }
}

fn v4_blocked(ip: Ipv4Addr) -> bool {
    ip.is_link_local() || ip.is_multicast() || ip.is_unspecified() || ip.is_broadcast()
}

fn v6_blocked(ip: Ipv6Addr) -> bool {
    if ip.is_unspecified() || ip.is_multicast() || ip.is_unicast_link_local() {
        return true;
    }
    // `::1` has the shape of an IPv4-compatible address (0.0.0.1); it is plain loopback.
    if ip.is_loopback() {
        return false;
    }
    embedded_v4(ip).is_some_and(v4_blocked)
}

/// The IPv4 address carried in the low 32 bits of an IPv4-mapped (`::ffff:0:0/96`), IPv4-compatible
/// (`::/96`) or NAT64 well-known-prefix (`64:ff9b::/96`) address.
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    match ip.segments() {
        [0, 0, 0, 0, 0, 0xffff, _, _]
        | [0, 0, 0, 0, 0, 0, _, _]
        | [0x64, 0xff9b, 0, 0, 0, 0, _, _] => {
            let [.., a, b, c, d] = ip.octets();
            Some(Ipv4Addr::new(a, b, c, d))
        }
        _ => None,
    }
}

/// The error carried inside the resolver's `io::Error` when nothing addressable is left. It has no fields:
/// neither the name nor the addresses reach the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct NotAddressable;

impl fmt::Display for NotAddressable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(NOT_ADDRESSABLE)
    }
}

impl Error for NotAddressable {}

/// True when `err` or anything in its source chain is the guard's refusal (also when wrapped in an
/// `io::Error`, whose `source` hides its payload). Lets the dispatch phase answer check 27 instead of
/// "upstream unreachable" when the connector fails.
pub(crate) fn is_not_addressable(err: &(dyn Error + 'static)) -> bool {
    let mut current = Some(err);
    while let Some(err) = current {
        if err.is::<NotAddressable>() {
            return true;
        }
        if let Some(io_err) = err.downcast_ref::<io::Error>()
            && io_err
                .get_ref()
                .is_some_and(|inner| inner.is::<NotAddressable>())
        {
            return true;
        }
        current = err.source();
    }
    false
}

/// A resolver for hyper_util::client::legacy::connect::HttpConnector::new_with_resolver: resolves with
/// tokio::net::lookup_host (port 0; tokio runs the blocking lookup on its blocking pool) and drops blocked
/// addresses; when nothing is left it fails with an io::Error "upstream not addressable" (DNS rebinding
/// cannot bypass the guard: the check is at dial time).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct GuardedResolver;

/// The addresses that survived the guard, in resolver order.
pub(crate) type GuardedAddrs = std::vec::IntoIter<SocketAddr>;

impl tower_service::Service<Name> for GuardedResolver {
    type Response = GuardedAddrs;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<GuardedAddrs, io::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), io::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        Box::pin(async move {
            let resolved = tokio::net::lookup_host((name.as_str(), 0)).await?;
            let allowed: Vec<SocketAddr> = resolved
                .filter(|addr| !address_blocked(addr.ip()))
                .collect();
            if allowed.is_empty() {
                return Err(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    NotAddressable,
                ));
            }
            Ok(allowed.into_iter())
        })
    }
}

#[cfg(test)]
mod tests;
