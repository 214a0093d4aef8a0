//! Header and URI handling around the upstream hop: the path traversal check (step 10), what is stripped
//! from the outbound request (wire-contract §4.5) and from the upstream response (§4.7), the trace and
//! forwarding headers the gateway sets, the reserved credential header names, and the outbound URI.
//!
//! Everything here is a pure function over headers and strings: no I/O, no secrets logged. The one secret
//! that passes through (an `api_key` placed in the query) only lands in the returned URI.

use std::borrow::Cow;
use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use url::Url;

/// Hop-by-hop headers (RFC 9110 §7.6.1 plus the legacy `Proxy-Connection` and `Keep-Alive`).
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "proxy-connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Decoding rounds of the traversal check; a path that still decodes after this many is refused.
const MAX_DECODE_ROUNDS: usize = 5;

/// Step 10: true when the path (no query) has a `.` or `..` segment or a backslash, after percent-decoding
/// repeatedly until stable (max 5 rounds; still changing after 5 -> treat as traversal). Also `%2f` decoded to
/// '/' creates segments that count.
pub(crate) fn path_traversal(path: &str) -> bool {
    let mut current: Cow<'_, [u8]> = Cow::Borrowed(path.as_bytes());
    for _ in 0..MAX_DECODE_ROUNDS {
        if has_dot_segment_or_backslash(&current) {
            return true;
        }
        match percent_decode(&current) {
            Some(decoded) => current = Cow::Owned(decoded),
            None => return false,
        }
    }
    has_dot_segment_or_backslash(&current) || percent_decode(&current).is_some()
}

fn has_dot_segment_or_backslash(path: &[u8]) -> bool {
    path.contains(&b'\\')
        || path
            .split(|byte| *byte == b'/')
            .any(|segment| segment == b"." || segment == b"..")
}

/// One round of percent-decoding; `None` when there was nothing to decode (the input is stable). A `%`
/// not followed by two hex digits stays as it is.
fn percent_decode(input: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(input.len());
    let mut changed = false;
    let mut rest = input;
    while let Some((&byte, tail)) = rest.split_first() {
        if byte == b'%'
            && let [high, low, after @ ..] = tail
            && let (Some(high), Some(low)) = (hex_value(*high), hex_value(*low))
        {
            out.push((high << 4) | low);
            changed = true;
            rest = after;
            continue;
        }
        out.push(byte);
        rest = tail;
    }
    changed.then_some(out)
}

fn hex_value(digit: u8) -> Option<u8> {
    match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'a'..=b'f' => Some(digit - b'a' + 10),
        b'A'..=b'F' => Some(digit - b'A' + 10),
        _ => None,
    }
}

/// Removes the hop-by-hop headers and every header the `Connection` header names (read first, while it
/// is still there).
fn remove_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|value| value.as_bytes().split(|byte| *byte == b','))
        .filter_map(|token| HeaderName::from_bytes(token.trim_ascii()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
}

fn remove_prefixed(headers: &mut HeaderMap, prefixes: &[&str]) {
    let doomed: Vec<HeaderName> = headers
        .keys()
        .filter(|name| {
            prefixes
                .iter()
                .any(|prefix| name.as_str().starts_with(prefix))
        })
        .cloned()
        .collect();
    for name in doomed {
        headers.remove(name);
    }
}

/// Removes from an outbound request: hop-by-hop (Connection, Proxy-Connection, Keep-Alive, Proxy-Authenticate,
/// Proxy-Authorization, TE, Trailer, Transfer-Encoding, Upgrade, every header named in Connection), every
/// X-Caracal-*, every X-Forwarded-*, Forwarded, X-Real-IP, Authorization, Host, and the `caracal.*` members of
/// `baggage` (other members kept; header removed when none remain).
pub(crate) fn sanitize_request(headers: &mut HeaderMap) {
    remove_hop_by_hop(headers);
    remove_prefixed(headers, &["x-caracal-", "x-forwarded-"]);
    for name in [
        header::FORWARDED,
        HeaderName::from_static("x-real-ip"),
        header::AUTHORIZATION,
        header::HOST,
    ] {
        headers.remove(name);
    }
    filter_baggage(headers);
}

/// Drops the `caracal.*` members of every `baggage` header (hints from the client libraries that must not
/// reach an upstream). When something was dropped, the kept members are rejoined into one header. A value
/// that is not visible ASCII is dropped whole: it cannot be valid baggage and could hide a member.
fn filter_baggage(headers: &mut HeaderMap) {
    let baggage = HeaderName::from_static("baggage");
    let mut kept: Vec<String> = Vec::new();
    let mut dropped = false;
    for value in headers.get_all(&baggage) {
        let Ok(text) = value.to_str() else {
            dropped = true;
            continue;
        };
        for member in text.split(',') {
            let member = member.trim_matches([' ', '\t']);
            if member.is_empty() {
                continue;
            }
            let key = member
                .find(['=', ';'])
                .map_or(member, |end| &member[..end])
                .trim_matches([' ', '\t']);
            if is_caracal_member(key) {
                dropped = true;
            } else {
                kept.push(member.to_owned());
            }
        }
    }
    if !dropped {
        return;
    }
    headers.remove(&baggage);
    if kept.is_empty() {
        return;
    }
    if let Ok(value) = HeaderValue::from_str(&kept.join(",")) {
        headers.insert(baggage, value);
    }
}

fn is_caracal_member(key: &str) -> bool {
    const PREFIX: &str = "caracal.";
    key.get(..PREFIX.len())
        .is_some_and(|head| head.eq_ignore_ascii_case(PREFIX))
}

/// Response filtering (§4.7): hop-by-hop (+ Connection-named), every `X-Caracal-*` (the
/// spec names `X-Caracal-Identity`; an upstream must not speak for the gateway either, e.g.
/// with its own `X-Caracal-Revoked` or `X-Caracal-Token-Expires-In`), Server, X-Powered-By,
/// X-AspNet-Version, X-AspNetMvc-Version, Refresh, Location / Content-Location when absolute
/// (has a scheme) or protocol-relative (`//`).
pub(crate) fn filter_response(headers: &mut HeaderMap) {
    remove_hop_by_hop(headers);
    let caracal: Vec<HeaderName> = headers
        .keys()
        .filter(|name| name.as_str().starts_with("x-caracal-"))
        .cloned()
        .collect();
    for name in caracal {
        headers.remove(name);
    }
    for name in [
        "server",
        "x-powered-by",
        "x-aspnet-version",
        "x-aspnetmvc-version",
        "refresh",
    ] {
        headers.remove(name);
    }
    for name in [header::LOCATION, header::CONTENT_LOCATION] {
        let leaves = headers
            .get_all(&name)
            .iter()
            .any(|value| points_off_origin(value.as_bytes()));
        if leaves {
            headers.remove(name);
        }
    }
}

/// True for a reference a browser would resolve to another origin: it has a scheme, or starts with two
/// slashes. Read the way browsers read it: leading spaces and control characters skipped, tabs ignored,
/// and a backslash taken as a slash (`/\evil.example` goes to `evil.example`).
fn points_off_origin(value: &[u8]) -> bool {
    let cleaned: Vec<u8> = value
        .iter()
        .copied()
        .filter(|byte| !matches!(byte, b'\t' | b'\n' | b'\r'))
        .skip_while(|byte| *byte <= b' ')
        .collect();
    matches!(cleaned.as_slice(), [b'/' | b'\\', b'/' | b'\\', ..]) || has_scheme(&cleaned)
}

/// RFC 3986 `scheme ":"` at the start: a letter, then letters, digits, `+`, `-` or `.`, then a colon.
fn has_scheme(reference: &[u8]) -> bool {
    let Some((first, rest)) = reference.split_first() else {
        return false;
    };
    if !first.is_ascii_alphabetic() {
        return false;
    }
    for byte in rest {
        match byte {
            b':' => return true,
            b'+' | b'-' | b'.' => {}
            other if other.is_ascii_alphanumeric() => {}
            _ => return false,
        }
    }
    false
}

/// Length of a version-00 `traceparent`: `vv-<32>-<16>-ff`.
const TRACEPARENT_LEN: usize = 55;

/// W3C traceparent: keep the inbound value when valid (version 2 lowercase hex, not "ff"; version 00 exactly 4
/// fields; trace-id 32 lowercase hex not all zero; parent-id 16 lowercase hex not all zero; flags 2 hex;
/// versions > 00 may have more fields after a '-'), else generate `00-<32hex>-<16hex>-01` (random).
/// Returns (header value, trace id).
///
/// Flags must be lowercase hex as well (W3C `2HEXDIGLC`).
pub(crate) fn traceparent(inbound: Option<&HeaderValue>) -> (HeaderValue, String) {
    if let Some(value) = inbound
        && let Some(trace_id) = valid_trace_id(value.as_bytes())
    {
        return (value.clone(), trace_id);
    }
    new_traceparent()
}

/// The trace id of a valid `traceparent`, or `None`.
fn valid_trace_id(value: &[u8]) -> Option<String> {
    if value.len() < TRACEPARENT_LEN {
        return None;
    }
    let (head, extra) = value.split_at(TRACEPARENT_LEN);
    let [v1, v2, b'-', rest @ ..] = head else {
        return None;
    };
    let version = [*v1, *v2];
    if !is_lower_hex(&version) || version == *b"ff" {
        return None;
    }
    match (version == *b"00", extra.first()) {
        (_, None) => {}
        (false, Some(b'-')) => {}
        _ => return None,
    }
    let (trace_id, rest) = rest.split_at(32);
    let [b'-', rest @ ..] = rest else {
        return None;
    };
    let (parent_id, rest) = rest.split_at(16);
    let [b'-', f1, f2] = rest else {
        return None;
    };
    let ids_valid = [trace_id, parent_id]
        .iter()
        .all(|id| is_lower_hex(id) && id.iter().any(|digit| *digit != b'0'));
    if !ids_valid || !is_lower_hex(&[*f1, *f2]) {
        return None;
    }
    std::str::from_utf8(trace_id).ok().map(str::to_owned)
}

fn is_lower_hex(digits: &[u8]) -> bool {
    digits
        .iter()
        .all(|digit| matches!(digit, b'0'..=b'9' | b'a'..=b'f'))
}

fn new_traceparent() -> (HeaderValue, String) {
    let trace: u128 = rand::random::<u128>().max(1);
    let parent: u64 = rand::random::<u64>().max(1);
    let trace_id = format!("{trace:032x}");
    match HeaderValue::try_from(format!("00-{trace_id}-{parent:016x}-01")) {
        Ok(value) => (value, trace_id),
        // Hex digits and dashes are always a valid header value; this arm exists so nothing can panic.
        Err(_invalid) => (
            HeaderValue::from_static("00-00000000000000000000000000000001-0000000000000001-01"),
            "00000000000000000000000000000001".to_owned(),
        ),
    }
}

/// X-Forwarded-For value: the peer IP, or with trust_proxy the first entry of the inbound XFF that parses as an IP
/// (else the peer).
///
/// An IPv4-mapped IPv6 address (a dual-stack listener's view of an IPv4 peer) is written as IPv4.
pub(crate) fn forwarded_for(
    peer: IpAddr,
    inbound: Option<&HeaderValue>,
    trust_proxy: bool,
) -> HeaderValue {
    let client = inbound
        .filter(|_| trust_proxy)
        .and_then(|value| value.to_str().ok())
        .and_then(|list| {
            list.split(',')
                .find_map(|entry| entry.trim().parse::<IpAddr>().ok())
        })
        .unwrap_or(peer)
        .to_canonical();
    HeaderValue::try_from(client.to_string())
        .unwrap_or_else(|_invalid| HeaderValue::from_static("unknown"))
}

/// Credential header names may not be reserved: baggage, connection, content-*, expect, forwarded, host,
/// keep-alive, proxy-*, te, traceparent, tracestate, trailer, transfer-encoding, upgrade, via, x-real-ip,
/// x-request-id, x-caracal-*, x-forwarded-*.
pub(crate) fn is_reserved(name: &HeaderName) -> bool {
    const EXACT: [&str; 15] = [
        "baggage",
        "connection",
        "expect",
        "forwarded",
        "host",
        "keep-alive",
        "te",
        "traceparent",
        "tracestate",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "via",
        "x-real-ip",
        "x-request-id",
    ];
    const PREFIXES: [&str; 4] = ["content-", "proxy-", "x-caracal-", "x-forwarded-"];
    // HeaderName is always lower case.
    let name = name.as_str();
    EXACT.contains(&name) || PREFIXES.iter().any(|prefix| name.starts_with(prefix))
}

/// The outbound URI: upstream path + request path joined with exactly one '/', the caller's query merged
/// with the upstream URL's query (the upstream URL's keys win: drop caller pairs whose key the upstream query
/// has), minus caller params named `drop_param` (api_key query placement), plus `add` appended
/// (form-urlencoded value; the caller never sees it). Returns the full absolute URI string.
///
/// Keys are compared after form-decoding (`api%5Fkey` is `api_key`); kept pairs travel in their original
/// encoding, upstream pairs first. The upstream URL's userinfo and fragment never reach the result.
pub(crate) fn outbound_uri(
    upstream: &Url,
    path: &str,
    caller_query: Option<&str>,
    drop_param: Option<&str>,
    add: Option<(&str, &str)>,
) -> Result<http::Uri, &'static str> {
    let Some(host) = upstream.host_str() else {
        return Err("upstream url has no host");
    };
    if path.contains(['?', '#']) {
        return Err("request path carries a query or fragment");
    }
    let mut uri = String::with_capacity(
        upstream.as_str().len() + path.len() + caller_query.map_or(0, str::len) + 64,
    );
    uri.push_str(upstream.scheme());
    uri.push_str("://");
    uri.push_str(host);
    if let Some(port) = upstream.port() {
        uri.push(':');
        uri.push_str(&port.to_string());
    }
    uri.push_str(upstream.path().trim_end_matches('/'));
    uri.push('/');
    uri.push_str(path.trim_start_matches('/'));
    let query = merge_query(upstream.query(), caller_query, drop_param, add);
    if !query.is_empty() {
        uri.push('?');
        uri.push_str(&query);
    }
    http::Uri::try_from(uri).or(Err("outbound uri is invalid"))
}

fn merge_query(
    upstream: Option<&str>,
    caller: Option<&str>,
    drop_param: Option<&str>,
    add: Option<(&str, &str)>,
) -> String {
    let upstream = upstream.unwrap_or_default();
    let upstream_keys: Vec<Cow<'_, str>> = form_urlencoded::parse(upstream.as_bytes())
        .map(|(key, _)| key)
        .collect();
    let mut pairs: Vec<&str> = upstream
        .split('&')
        .filter(|pair| !pair.is_empty())
        .collect();
    for pair in caller.unwrap_or_default().split('&') {
        let Some((key, _)) = form_urlencoded::parse(pair.as_bytes()).next() else {
            continue;
        };
        let shadowed = upstream_keys.contains(&key);
        if !shadowed && drop_param != Some(key.as_ref()) {
            pairs.push(pair);
        }
    }
    let mut query = pairs.join("&");
    if let Some((name, value)) = add {
        let added = form_urlencoded::Serializer::new(String::new())
            .append_pair(name, value)
            .finish();
        if !query.is_empty() {
            query.push('&');
        }
        query.push_str(&added);
    }
    query
}

#[cfg(test)]
mod tests;
