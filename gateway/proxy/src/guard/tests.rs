use std::error::Error;
use std::fmt;
use std::io;
use std::net::IpAddr;

use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::dns::Name;
use tower_service::Service;
use url::Url;

use super::{GuardedResolver, NOT_ADDRESSABLE, UpstreamGuard, address_blocked, is_not_addressable};

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

fn assert_blocked(cases: &[&str], expected: bool) {
    for case in cases {
        assert_eq!(address_blocked(ip(case)), expected, "address {case}");
    }
}

#[test]
fn ipv4_link_local_multicast_unspecified_and_broadcast_are_blocked() {
    assert_blocked(
        &[
            "169.254.169.254",
            "169.254.0.0",
            "169.254.255.255",
            "224.0.0.1",
            "239.255.255.250",
            "0.0.0.0",
            "255.255.255.255",
        ],
        true,
    );
}

#[test]
fn ipv6_link_local_multicast_and_unspecified_are_blocked() {
    assert_blocked(
        &[
            "::",
            "fe80::1",
            "febf:ffff::1",
            "ff02::1",
            "ff05::1:3",
            "ff0e::1",
        ],
        true,
    );
}

#[test]
fn ipv4_mapped_and_compatible_addresses_are_judged_by_their_ipv4() {
    assert_blocked(
        &[
            "::ffff:169.254.169.254",
            "::ffff:224.0.0.1",
            "::ffff:0.0.0.0",
            "::ffff:255.255.255.255",
            "::169.254.169.254",
            "::224.0.0.251",
        ],
        true,
    );
    assert_blocked(
        &[
            "::ffff:127.0.0.1",
            "::ffff:10.1.2.3",
            "::ffff:8.8.8.8",
            "::10.0.0.1",
        ],
        false,
    );
}

#[test]
fn nat64_embedded_addresses_are_judged_by_their_ipv4() {
    assert_blocked(
        &[
            "64:ff9b::169.254.169.254",
            "64:ff9b::a9fe:a9fe",
            "64:ff9b::e000:1",
            "64:ff9b::",
        ],
        true,
    );
    assert_blocked(
        &[
            "64:ff9b::10.0.0.1",
            "64:ff9b::8.8.8.8",
            "64:ff9b::127.0.0.1",
        ],
        false,
    );
}

#[test]
fn loopback_private_and_public_addresses_are_allowed() {
    assert_blocked(
        &[
            "127.0.0.1",
            "127.255.0.9",
            "10.0.0.1",
            "172.16.0.1",
            "192.168.1.10",
            "100.64.0.1",
            "169.253.255.255",
            "169.255.0.1",
            "223.255.255.255",
            "240.0.0.1",
            "8.8.8.8",
            "::1",
            "fc00::1",
            "fd12:3456::1",
            "fec0::1",
            "fe7f::1",
            "2001:db8::1",
            "2606:4700::1111",
        ],
        false,
    );
}

fn check(guard: &UpstreamGuard, url: &str) -> Result<(), &'static str> {
    guard.check_url(&Url::parse(url).unwrap())
}

#[test]
fn check_url_without_allowlist() {
    let guard = UpstreamGuard::new(None);
    let cases: &[(&str, bool)] = &[
        ("http://crm.internal:8080/v1", true),
        ("https://api.example.com/", true),
        ("http://127.0.0.1:9000/", true),
        ("http://10.0.0.5/", true),
        ("http://[::1]:8080/", true),
        ("ftp://files.example.com/", false),
        ("file:///etc/passwd", false),
        ("ws://example.com/", false),
        ("http://user@example.com/", false),
        ("http://user:secret@example.com/", false),
        ("http://:secret@example.com/", false),
        ("http://169.254.169.254/latest/meta-data", false),
        ("http://0.0.0.0:8080/", false),
        ("http://0/", false),
        ("http://0xa9fea9fe/", false),
        ("http://[fe80::1]/", false),
        ("http://[::ffff:169.254.169.254]/", false),
        ("http://[64:ff9b::a9fe:a9fe]/", false),
        ("http://224.0.0.1/", false),
        ("http://255.255.255.255/", false),
    ];
    for (url, ok) in cases {
        assert_eq!(check(&guard, url).is_ok(), *ok, "{url}");
    }
}

#[test]
fn check_url_reasons_name_no_secret() {
    let guard = UpstreamGuard::new(None);
    let reason = check(&guard, "http://admin:hunter2@example.com/").unwrap_err();
    assert!(!reason.contains("hunter2") && !reason.contains("admin"));
    assert_eq!(
        check(&guard, "ftp://example.com/"),
        Err("upstream scheme is not http or https")
    );
    assert_eq!(
        check(&guard, "http://169.254.169.254/"),
        Err("upstream address is in a blocked class")
    );
}

#[test]
fn check_url_with_allowlist() {
    let guard = UpstreamGuard::new(Some(vec![
        "CRM.Example.com".to_owned(),
        "10.0.0.7".to_owned(),
        "[::1]".to_owned(),
        "169.254.169.254".to_owned(),
    ]));
    let cases: &[(&str, bool)] = &[
        ("https://crm.example.com/v1", true),
        ("https://CRM.EXAMPLE.COM:8443/", true),
        ("https://crm.example.com./", true),
        ("http://10.0.0.7:8080/", true),
        ("http://[::1]:8080/", true),
        ("https://evil.example.com/", false),
        ("https://example.com/", false),
        ("https://crm.example.com.evil.net/", false),
        ("http://10.0.0.8/", false),
        // allowlisted, still a blocked class
        ("http://169.254.169.254/", false),
        // allowlisted host, still no userinfo
        ("https://u:p@crm.example.com/", false),
    ];
    for (url, ok) in cases {
        assert_eq!(check(&guard, url).is_ok(), *ok, "{url}");
    }
    assert_eq!(
        check(&guard, "https://evil.example.com/"),
        Err("upstream host not in the allowlist")
    );
}

#[test]
fn an_empty_allowlist_allows_no_host() {
    let guard = UpstreamGuard::new(Some(Vec::new()));
    assert!(check(&guard, "http://127.0.0.1/").is_err());
}

async fn resolve(host: &str) -> io::Result<Vec<std::net::SocketAddr>> {
    let name: Name = host.parse().unwrap();
    GuardedResolver.call(name).await.map(Iterator::collect)
}

#[tokio::test]
async fn resolver_keeps_loopback_for_localhost() {
    let addrs = resolve("localhost").await.unwrap();
    assert!(!addrs.is_empty());
    assert!(
        addrs
            .iter()
            .all(|addr| addr.ip().is_loopback() && addr.port() == 0)
    );
}

#[tokio::test]
async fn resolver_refuses_names_resolving_only_to_blocked_addresses() {
    for host in [
        "169.254.169.254",
        "0.0.0.0",
        "224.0.0.1",
        "ff02::1",
        "::ffff:169.254.169.254",
    ] {
        let err = resolve(host).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::PermissionDenied, "{host}");
        assert_eq!(err.to_string(), NOT_ADDRESSABLE, "{host}");
        assert!(is_not_addressable(&err), "{host}");
    }
}

#[tokio::test]
async fn resolver_keeps_private_literals() {
    let addrs = resolve("10.1.2.3").await.unwrap();
    assert_eq!(addrs, vec!["10.1.2.3:0".parse().unwrap()]);
}

#[derive(Debug)]
struct Wrapper(io::Error);

impl fmt::Display for Wrapper {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("connect failed")
    }
}

impl Error for Wrapper {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        Some(&self.0)
    }
}

#[tokio::test]
async fn guard_refusal_is_recognised_through_a_source_chain() {
    let err = resolve("169.254.169.254").await.unwrap_err();
    assert!(is_not_addressable(&Wrapper(err)));
    let other = Wrapper(io::Error::new(io::ErrorKind::PermissionDenied, "denied"));
    assert!(!is_not_addressable(&other));
    assert!(!is_not_addressable(&io::Error::other(
        "upstream not addressable"
    )));
}

#[tokio::test]
async fn connector_with_the_guarded_resolver_dials_localhost() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let accept = tokio::spawn(async move { listener.accept().await.map(|(stream, _)| stream) });
    let mut connector = HttpConnector::new_with_resolver(GuardedResolver);
    let uri: http::Uri = format!("http://localhost:{port}/").parse().unwrap();
    let stream = connector.call(uri).await.unwrap();
    drop(stream);
    accept.await.unwrap().unwrap();
}
