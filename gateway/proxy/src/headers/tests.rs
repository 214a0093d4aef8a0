use std::net::IpAddr;

use http::header::{HeaderMap, HeaderName, HeaderValue};
use url::Url;

use super::{
    filter_response, forwarded_for, is_reserved, outbound_uri, path_traversal, sanitize_request,
    traceparent,
};

fn map(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for (name, value) in pairs {
        headers.append(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        );
    }
    headers
}

fn names(headers: &HeaderMap) -> Vec<&str> {
    let mut names: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
    names.sort_unstable();
    names
}

#[test]
fn path_traversal_matrix() {
    let cases: &[(&str, bool)] = &[
        ("/", false),
        ("/a/b/c", false),
        ("/a..b", false),
        ("/..a", false),
        ("/a../b", false),
        ("/a/.b/c", false),
        ("/a/b.", false),
        ("/a//b", false),
        ("/files/100%25", false),
        ("/a%2541", false),
        ("/search/%E2%9C%93", false),
        ("/bad%zz/ok", false),
        ("/a/../b", true),
        ("/..", true),
        ("/a/..", true),
        ("/a/./b", true),
        ("/.", true),
        ("/a/.", true),
        ("/a/%2e%2e/b", true),
        ("/a/%2E%2E/b", true),
        ("/a/%2e/b", true),
        ("/a/.%2e/b", true),
        ("/a/%252e%252e/b", true),
        ("/a/%25252e%25252e/b", true),
        ("/a%2f..%2fb", true),
        ("/a%2F.%2Fb", true),
        ("/a%252f..%252fb", true),
        ("/a\\b", true),
        ("\\", true),
        ("/a%5cb", true),
        ("/a%5Cb", true),
        ("/a%255cb", true),
        ("/a/..%5c/b", true),
    ];
    for (path, traversal) in cases {
        assert_eq!(path_traversal(path), *traversal, "{path}");
    }
}

#[test]
fn path_traversal_gives_up_after_five_rounds() {
    // six levels of encoding: still decodable after five rounds, refused though no dot shows up
    assert!(path_traversal("/a%252525252541"));
    // five levels: the fifth round ends in a stable plain path
    assert!(!path_traversal("/a%2525252541"));
    // four levels
    assert!(!path_traversal("/a%25252541"));
    // dots reached only in the fifth round still count
    assert!(path_traversal("/a/%252525252e%252525252e/b"));
    assert!(path_traversal("/a%252525255cb"));
}

#[test]
fn sanitize_request_strips_hop_by_hop_identity_and_forwarding_headers() {
    let mut headers = map(&[
        ("connection", "keep-alive, Upgrade, X-Secret-Hop"),
        ("proxy-connection", "keep-alive"),
        ("keep-alive", "timeout=5"),
        ("proxy-authenticate", "Basic"),
        ("proxy-authorization", "Basic Zm9vOmJhcg=="),
        ("te", "trailers"),
        ("trailer", "x-checksum"),
        ("transfer-encoding", "chunked"),
        ("upgrade", "websocket"),
        ("x-secret-hop", "1"),
        ("x-caracal-resource", "crm"),
        ("x-caracal-client-id", "app"),
        ("x-forwarded-for", "1.2.3.4"),
        ("x-forwarded-host", "evil"),
        ("forwarded", "for=1.2.3.4"),
        ("x-real-ip", "1.2.3.4"),
        ("authorization", "Bearer mandate"),
        ("host", "gateway:8081"),
        ("content-type", "application/json"),
        ("accept", "*/*"),
        ("x-custom", "kept"),
        (
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        ),
    ]);
    sanitize_request(&mut headers);
    assert_eq!(
        names(&headers),
        ["accept", "content-type", "traceparent", "x-custom"]
    );
}

#[test]
fn sanitize_request_removes_every_header_named_in_every_connection_header() {
    let mut headers = map(&[
        ("connection", "close,x-one"),
        ("connection", " X-Two ,, not a header name, x-three"),
        ("x-one", "1"),
        ("x-two", "2"),
        ("x-three", "3"),
        ("x-four", "4"),
    ]);
    sanitize_request(&mut headers);
    assert_eq!(names(&headers), ["x-four"]);
}

#[test]
fn baggage_loses_only_caracal_members() {
    let cases: &[(&[&str], Option<&str>)] = &[
        (&["userId=alice,caracal.session=s1"], Some("userId=alice")),
        (
            &["caracal.agent_session=a1, tenant=acme;prop=1 , caracal.hop=2,region=eu"],
            Some("tenant=acme;prop=1,region=eu"),
        ),
        (&["CARACAL.session=s1", "caracal.hop = 3;x"], None),
        (&["caracal.session=s1,caracal.delegation_edge=e1"], None),
        (
            &["userId=alice", "caracal.parent_edge=p"],
            Some("userId=alice"),
        ),
        (&["caracalx=1,caracal=2"], Some("caracalx=1,caracal=2")),
    ];
    for (values, expected) in cases {
        let pairs: Vec<(&str, &str)> = values.iter().map(|value| ("baggage", *value)).collect();
        let mut headers = map(&pairs);
        sanitize_request(&mut headers);
        let got: Vec<&str> = headers
            .get_all("baggage")
            .iter()
            .map(|value| value.to_str().unwrap())
            .collect();
        match expected {
            Some(expected) => assert_eq!(got, [*expected], "{values:?}"),
            None => assert!(got.is_empty(), "{values:?}"),
        }
    }
}

#[test]
fn baggage_without_caracal_members_is_left_as_sent() {
    let mut headers = map(&[("baggage", "a=1"), ("baggage", "b=2 ; p")]);
    sanitize_request(&mut headers);
    let got: Vec<&[u8]> = headers
        .get_all("baggage")
        .iter()
        .map(HeaderValue::as_bytes)
        .collect();
    assert_eq!(got, [b"a=1".as_slice(), b"b=2 ; p".as_slice()]);
}

#[test]
fn baggage_that_is_not_ascii_is_dropped() {
    let mut headers = HeaderMap::new();
    headers.insert(
        "baggage",
        HeaderValue::from_bytes(b"caracal.session=\xff").unwrap(),
    );
    headers.append("baggage", HeaderValue::from_static("a=1"));
    sanitize_request(&mut headers);
    assert_eq!(headers.get("baggage").unwrap(), "a=1");
    assert_eq!(headers.get_all("baggage").iter().count(), 1);
}

#[test]
fn filter_response_strips_fingerprints_and_hop_by_hop() {
    let mut headers = map(&[
        ("connection", "close, x-upstream-hop"),
        ("x-upstream-hop", "1"),
        ("keep-alive", "timeout=5"),
        ("transfer-encoding", "chunked"),
        ("trailer", "x-checksum"),
        ("upgrade", "h2c"),
        ("proxy-authenticate", "Basic"),
        ("x-caracal-identity", "mandate"),
        ("server", "nginx/1.2"),
        ("x-powered-by", "PHP/5"),
        ("x-aspnet-version", "4.0"),
        ("x-aspnetmvc-version", "5.2"),
        ("refresh", "0; url=https://evil.example"),
        ("content-type", "text/plain"),
        ("x-custom", "kept"),
        ("location", "/next"),
    ]);
    filter_response(&mut headers);
    assert_eq!(names(&headers), ["content-type", "location", "x-custom"]);
}

#[test]
fn filter_response_drops_locations_that_leave_the_origin() {
    let cases: &[(&str, bool)] = &[
        ("/next", true),
        ("next?x=http://a", true),
        ("../up", true),
        ("?page=2", true),
        ("#frag", true),
        ("/a:b", true),
        ("https://evil.example/", false),
        ("HTTP://evil.example/", false),
        ("javascript:alert(1)", false),
        ("mailto:a@b", false),
        ("http:evil.example", false),
        ("//evil.example/", false),
        ("/\\evil.example", false),
        ("\\\\evil.example", false),
        ("\\/evil.example", false),
        ("  //evil.example", false),
        ("/\t/evil.example", false),
        ("ht\ttp://evil.example", false),
    ];
    for (value, kept) in cases {
        for name in ["location", "content-location"] {
            let mut headers = map(&[(name, value)]);
            filter_response(&mut headers);
            assert_eq!(headers.contains_key(name), *kept, "{name}: {value:?}");
        }
    }
}

const VALID: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

#[test]
fn traceparent_accept_and_reject_matrix() {
    let cases: &[(&str, bool)] = &[
        (VALID, true),
        (
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00",
            true,
        ),
        (
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-ff",
            true,
        ),
        (
            "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            true,
        ),
        (
            "cc-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-what-ever",
            true,
        ),
        (
            "fe-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-",
            true,
        ),
        (
            "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            false,
        ),
        (
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra",
            false,
        ),
        (
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-",
            false,
        ),
        (
            "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01extra",
            false,
        ),
        (
            "0A-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            false,
        ),
        (
            "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",
            false,
        ),
        (
            "00-0af7651916cd43dd8448eb211c80319c-B7AD6B7169203331-01",
            false,
        ),
        (
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-0F",
            false,
        ),
        (
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            false,
        ),
        (
            "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
            false,
        ),
        (
            "00-0af7651916cd43dd8448eb211c80319-b7ad6b7169203331-01",
            false,
        ),
        (
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b716920333-01",
            false,
        ),
        (
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-1",
            false,
        ),
        (
            "00_0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            false,
        ),
        (
            "00-0af7651916cd43dd8448eb211c80319c_b7ad6b7169203331-01",
            false,
        ),
        (
            "00-0af7651916cd43dd8448eb211c80319g-b7ad6b7169203331-01",
            false,
        ),
        (
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-0g",
            false,
        ),
        (
            " 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            false,
        ),
        ("", false),
        ("garbage", false),
    ];
    for (value, accepted) in cases {
        let inbound = HeaderValue::from_str(value).unwrap();
        let (out, trace_id) = traceparent(Some(&inbound));
        assert_eq!(out == inbound, *accepted, "{value:?}");
        if *accepted {
            assert_eq!(trace_id, value[3..35], "{value:?}");
        } else {
            assert_generated(&out, &trace_id);
        }
    }
}

fn assert_generated(value: &HeaderValue, trace_id: &str) {
    let text = value.to_str().unwrap();
    assert_eq!(text.len(), 55, "{text}");
    assert!(text.starts_with("00-") && text.ends_with("-01"), "{text}");
    assert_eq!(&text[3..35], trace_id);
    assert_eq!(text.as_bytes()[35], b'-');
    // a generated value passes its own validation
    let (again, again_id) = traceparent(Some(value));
    assert_eq!(&again, value);
    assert_eq!(again_id, trace_id);
}

#[test]
fn traceparent_is_generated_when_absent_and_differs_per_call() {
    let (first, first_id) = traceparent(None);
    let (second, second_id) = traceparent(None);
    assert_generated(&first, &first_id);
    assert_generated(&second, &second_id);
    assert_ne!(first_id, second_id);
}

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

#[test]
fn forwarded_for_matrix() {
    let peer = ip("10.0.0.9");
    let cases: &[(Option<&str>, bool, &str)] = &[
        (None, false, "10.0.0.9"),
        (None, true, "10.0.0.9"),
        (Some("203.0.113.7"), false, "10.0.0.9"),
        (Some("203.0.113.7"), true, "203.0.113.7"),
        (Some("203.0.113.7, 10.0.0.1"), true, "203.0.113.7"),
        (Some("unknown, 2001:db8::1, 10.0.0.1"), true, "2001:db8::1"),
        (Some(" 198.51.100.2 "), true, "198.51.100.2"),
        (Some("1.2.3.4:80, 5.6.7.8"), true, "5.6.7.8"),
        (Some("not-an-ip"), true, "10.0.0.9"),
        (Some(""), true, "10.0.0.9"),
        (Some("::ffff:192.0.2.1"), true, "192.0.2.1"),
    ];
    for (inbound, trust, expected) in cases {
        let inbound = inbound.map(|value| HeaderValue::from_str(value).unwrap());
        let got = forwarded_for(peer, inbound.as_ref(), *trust);
        assert_eq!(got, *expected, "{inbound:?} trust={trust}");
    }
    assert_eq!(
        forwarded_for(ip("::ffff:10.1.1.1"), None, false),
        "10.1.1.1"
    );
    assert_eq!(forwarded_for(ip("::1"), None, false), "::1");
}

#[test]
fn reserved_credential_header_names() {
    let reserved = [
        "baggage",
        "Connection",
        "content-type",
        "content-length",
        "expect",
        "forwarded",
        "host",
        "keep-alive",
        "proxy-authorization",
        "proxy-anything",
        "te",
        "traceparent",
        "tracestate",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "via",
        "x-real-ip",
        "x-request-id",
        "X-Caracal-Identity",
        "x-caracal-anything",
        "x-forwarded-for",
        "x-forwarded-anything",
    ];
    let allowed = [
        "authorization",
        "x-api-key",
        "api-key",
        "content",
        "x-caracal",
        "x-forwarded",
        "proxy",
        "tea",
        "x-request-ids",
        "ocp-apim-subscription-key",
    ];
    for name in reserved {
        assert!(
            is_reserved(&HeaderName::from_bytes(name.as_bytes()).unwrap()),
            "{name}"
        );
    }
    for name in allowed {
        assert!(
            !is_reserved(&HeaderName::from_bytes(name.as_bytes()).unwrap()),
            "{name}"
        );
    }
}

fn uri(upstream: &str, path: &str, query: Option<&str>) -> String {
    outbound_uri(&Url::parse(upstream).unwrap(), path, query, None, None)
        .unwrap()
        .to_string()
}

#[test]
fn outbound_uri_joins_paths_with_exactly_one_slash() {
    let cases: &[(&str, &str, &str)] = &[
        ("http://up:8080", "/contacts", "http://up:8080/contacts"),
        ("http://up:8080/", "/contacts", "http://up:8080/contacts"),
        (
            "http://up:8080/v1",
            "/contacts",
            "http://up:8080/v1/contacts",
        ),
        (
            "http://up:8080/v1/",
            "/contacts",
            "http://up:8080/v1/contacts",
        ),
        (
            "http://up:8080/v1//",
            "//contacts",
            "http://up:8080/v1/contacts",
        ),
        (
            "http://up:8080/v1",
            "contacts/",
            "http://up:8080/v1/contacts/",
        ),
        ("http://up:8080/v1", "/", "http://up:8080/v1/"),
        ("http://up:8080/v1", "", "http://up:8080/v1/"),
        (
            "https://up/base/api",
            "/a/b%20c",
            "https://up/base/api/a/b%20c",
        ),
        ("https://up:443/v1", "/x", "https://up/v1/x"),
        ("https://up:8443/v1", "/x", "https://up:8443/v1/x"),
        ("http://[::1]:9000/v1", "/x", "http://[::1]:9000/v1/x"),
        ("http://up/v1#frag", "/x", "http://up/v1/x"),
    ];
    for (upstream, path, expected) in cases {
        assert_eq!(uri(upstream, path, None), *expected, "{upstream} + {path}");
    }
}

#[test]
fn outbound_uri_merges_queries_with_upstream_keys_winning() {
    let cases: &[(&str, Option<&str>, &str)] = &[
        ("http://up/v1", None, "http://up/v1/x"),
        ("http://up/v1", Some(""), "http://up/v1/x"),
        ("http://up/v1?", Some(""), "http://up/v1/x"),
        ("http://up/v1", Some("a=1&b=2"), "http://up/v1/x?a=1&b=2"),
        (
            "http://up/v1?tenant=acme",
            None,
            "http://up/v1/x?tenant=acme",
        ),
        (
            "http://up/v1?tenant=acme",
            Some("a=1"),
            "http://up/v1/x?tenant=acme&a=1",
        ),
        (
            "http://up/v1?tenant=acme",
            Some("tenant=evil&a=1&tenant=again"),
            "http://up/v1/x?tenant=acme&a=1",
        ),
        (
            "http://up/v1?tenant=acme",
            Some("tenan%74=evil&a=%20b"),
            "http://up/v1/x?tenant=acme&a=%20b",
        ),
        (
            "http://up/v1?a+b=1",
            Some("a%20b=2&c=3"),
            "http://up/v1/x?a+b=1&c=3",
        ),
        (
            "http://up/v1?flag",
            Some("flag=1&&x"),
            "http://up/v1/x?flag&x",
        ),
        (
            "http://up/v1?k=1&k=2",
            Some("k=3"),
            "http://up/v1/x?k=1&k=2",
        ),
    ];
    for (upstream, query, expected) in cases {
        assert_eq!(
            uri(upstream, "/x", *query),
            *expected,
            "{upstream} ? {query:?}"
        );
    }
}

#[test]
fn outbound_uri_drops_the_credential_parameter_and_appends_the_secret() {
    let upstream = Url::parse("https://api.example.com/v2?format=json").unwrap();
    let got = outbound_uri(
        &upstream,
        "/search",
        Some("q=cats&api_key=caller-forged&api%5Fkey=again&page=2"),
        Some("api_key"),
        Some(("api_key", "s3cr&t=+ /")),
    )
    .unwrap();
    assert_eq!(
        got.to_string(),
        "https://api.example.com/v2/search?format=json&q=cats&page=2&api_key=s3cr%26t%3D%2B+%2F"
    );
    let only_added = outbound_uri(&upstream, "/", None, Some("k"), Some(("k", "v"))).unwrap();
    assert_eq!(
        only_added.to_string(),
        "https://api.example.com/v2/?format=json&k=v"
    );
    let bare = Url::parse("http://up").unwrap();
    let dropped = outbound_uri(&bare, "/x", Some("k=forged"), Some("k"), None).unwrap();
    assert_eq!(dropped.to_string(), "http://up/x");
}

#[test]
fn outbound_uri_refuses_what_cannot_be_a_path() {
    let upstream = Url::parse("http://up/v1").unwrap();
    assert!(outbound_uri(&upstream, "/x?y=1", None, None, None).is_err());
    assert!(outbound_uri(&upstream, "/x#y", None, None, None).is_err());
    assert!(outbound_uri(&upstream, "/x y", None, None, None).is_err());
}

#[test]
fn outbound_uri_never_carries_upstream_userinfo() {
    let upstream = Url::parse("http://user:pass@up/v1").unwrap();
    let got = outbound_uri(&upstream, "/x", None, None, None).unwrap();
    assert_eq!(got.to_string(), "http://up/v1/x");
}
