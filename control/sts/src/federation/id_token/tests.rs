use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use rsa::{
    pkcs8::DecodePrivateKey as _, signature::SignatureEncoding as _, signature::Signer as _,
};
use serde_json::json;

use super::*;

/// A throwaway 2048-bit test key (generated for these tests only; it protects nothing).
const RSA_TEST_KEY: &str = r"-----BEGIN PRIVATE KEY-----
MIIEvgIBADANBgkqhkiG9w0BAQEFAASCBKgwggSkAgEAAoIBAQDI3Bx7DTDBf3+C
GnebDzn7ne5+NOeXdm3+0SlXeDRxafSgFUSn91RzOR60E8CDgu+RLpf2UmPALHzz
xGvRGCq6H0eGdqNvIb1B1hhJLvzJdxzom08QzrS3H4Xjx/8jeu3zVmcAByUn6DHV
/yGzn51OEDh4NY/mH3USeIi2Gc8EehYU7JC+HizqXI/bIbezNdAr6a3lnQHjUe0Z
3vZaM0c++KAfzlli2S3lw6sDfCW2LzA9eEBidDc+1VcSY3mtiSY4DV//kZSjIWD/
m7opm1Vn/V9Yarf0elV5mON0D5lakB+StWHG+fDj0nMUmbM7xA11O43MXZaRDNul
kvJh5pRVAgMBAAECggEAIf3D8RwMl/ZeavNVMd+8CYWS1ndYCPURDMozQ5rzTw0m
CZBH19/+gehU9pcQIYFfTvOyYkxTlrJArBUdxNsg4fIIrev2YQh16YYUgpAJ1gNL
GF8uHHNKuGHEjAVsu0Gisqc405Oh+VStWGBugOIeYhdTIx63XTOOIaPVyPFprAE7
T1+fRIIG4SRYBzZtBTkgWScezG9f/dNQVYlozvCqkrEn4rRNQJLFBCrnkiy3hbdS
FfUFxCILLNFyCP/74G3am1CO9JTYwi8P9sgSEA4LNHbtRpP9zL7J5rZrJ4ondxQW
lyrJkaCH/cxp0eMnNoR4/OmAHboKIBfbcORllM4++QKBgQDvGWZi3TVMH6fq/p7Y
j2w0Wv9tiBBwy8lVkq4JKLos5gXronlsYrR5htqVIfF+klAOEtWnLYCoGa8r84uH
ZTDvXVlTPkTQt3oMjwRKrnYTNGV/91TZ3sucFqZ/KgYfYA7SXk6fL06UpVm1z+zB
6inOkJ9E2A3NPmJOvAbpki/CXQKBgQDXDsDVdu6a6ADi/G9igl6gVuuImyDvikHP
538TQmqCQu8OZfrL0piBoyY8jD13h1Y8pyCEz17ficYKMeFWhncb7kGIRWAlh3Iq
+1mYh667E9uaHuWDTt9lRNEq+Jb7fmPs6rDfN2tuYQ0WJribwqHbYFfqIIQ1sPUy
oy8ysf/qWQKBgQDmao7t1YnIS3VyFGCWCFlZdxxSvN5DJVBoRAutze7k1+N6uj/T
wKd1ugypzWVB+dRmS6ZUDpi+5smWTIT5PP5Unpw3iXmdvkNDGQwkwE4Pod3y3TKL
J5cGXBml0KTH1bVS7AlOhLNwsoxqlu7tzTDu3RZvrNpYIbdxcugibXvTDQKBgBYt
GUlp2DT1E5JUgY/g7a0PCX6usHjDAwJTVtE/mggQquILNg9qiftkPX8k3vnCZOwg
N8Q6NghLBrbqadgoSYQBz5Qjw0RbcTRpctW9uBDmfVCpOvWNXo/sxrztoXQRlnBJ
yy9ZYaSiMV1FZOf67AHZL3efHsMCmmY8WZOas08RAoGBALwLEJx0wakaCzoPqO8U
BlTKGzxJwQq1IhfJ0TNFn2gofO9uD/g87EpcAYM8Ggdo6fQ6UicHYdKvE/GqEnMj
f+D5Ge7BFaKuWmGBrcWU75Sfcvo/PB8ApgQnh3sVqbGa0lw2PXphowjXfNnnlD2O
fMF3uvDN5koD66liYvEew7rL
-----END PRIVATE KEY-----";

const NOW: i64 = 1_790_000_000;

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn rsa_key() -> rsa::RsaPrivateKey {
    rsa::RsaPrivateKey::from_pkcs8_pem(RSA_TEST_KEY).unwrap()
}

fn rsa_jwk(kid: &str) -> Jwk {
    Jwk {
        kid: kid.into(),
        alg: Some("RS256".into()),
        key: VerifyKey::Rsa(rsa_key().to_public_key()),
    }
}

fn rs256(header: &serde_json::Value, claims: &serde_json::Value) -> String {
    let input = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let signer = rsa::pkcs1v15::SigningKey::<rsa::sha2::Sha256>::new(rsa_key());
    let sig = signer.sign(input.as_bytes()).to_vec();
    format!("{input}.{}", b64(&sig))
}

fn claims() -> serde_json::Value {
    json!({"iss": "https://issuer.example", "sub": "user-1", "aud": "app", "iat": NOW, "exp": NOW + 300})
}

fn header() -> serde_json::Value {
    json!({"alg": "RS256", "kid": "k1", "typ": "JWT"})
}

#[test]
fn an_rs256_token_verifies_and_yields_its_sub_byte_exact() {
    let token = rs256(&header(), &claims());
    let parsed = parse(&token).unwrap();
    assert_eq!(parsed.alg, Alg::Rs256);
    assert_eq!(parsed.issuer().unwrap(), "https://issuer.example");
    parsed.verify(&rsa_jwk("k1")).unwrap();
    assert_eq!(parsed.check_claims(Some("app"), NOW).unwrap(), "user-1");
    // An audience list works too; no configured audience accepts any.
    let mut c = claims();
    c["aud"] = json!(["other", "app"]);
    let token = rs256(&header(), &c);
    assert_eq!(
        parse(&token)
            .unwrap()
            .check_claims(Some("app"), NOW)
            .unwrap(),
        "user-1"
    );
    assert_eq!(
        parse(&token).unwrap().check_claims(None, NOW).unwrap(),
        "user-1"
    );
}

#[test]
fn an_es256_token_verifies() {
    let key = control_crypto::ZoneSigningKey::generate();
    let token = key.sign_jwt("ec", claims().to_string().as_bytes()).unwrap();
    let parsed = parse(&token).unwrap();
    assert_eq!(parsed.alg, Alg::Es256);
    let set = crate::federation::jwks::KeySet::parse(
        json!({"keys": [key.public_key().to_jwk("ec")]})
            .to_string()
            .as_bytes(),
    )
    .unwrap();
    parsed.verify(set.find("ec").unwrap()).unwrap();
    // The RSA key cannot verify an ES256 token.
    assert_eq!(parsed.verify(&rsa_jwk("ec")), Err(Rejection::KeyMismatch));
}

#[test]
fn a_tampered_token_does_not_verify() {
    let token = rs256(&header(), &claims());
    let (input, sig) = token.rsplit_once('.').unwrap();
    let (head, _) = input.split_once('.').unwrap();
    let mut other = claims();
    other["sub"] = json!("admin");
    let forged = format!("{head}.{}.{sig}", b64(other.to_string().as_bytes()));
    assert_eq!(
        parse(&forged).unwrap().verify(&rsa_jwk("k1")),
        Err(Rejection::BadSignature)
    );
}

#[test]
fn header_rules() {
    let none = format!(
        "{}.{}.",
        b64(br#"{"alg":"none","kid":"k1"}"#),
        b64(claims().to_string().as_bytes())
    );
    assert_eq!(parse(&none).unwrap_err(), Rejection::UnsupportedAlgorithm);
    let hs = rs256(&json!({"alg": "HS256", "kid": "k1"}), &claims());
    assert_eq!(parse(&hs).unwrap_err(), Rejection::UnsupportedAlgorithm);
    let crit = rs256(
        &json!({"alg": "RS256", "kid": "k1", "crit": ["exp"]}),
        &claims(),
    );
    assert_eq!(parse(&crit).unwrap_err(), Rejection::Critical);
    let no_kid = rs256(&json!({"alg": "RS256"}), &claims());
    assert_eq!(parse(&no_kid).unwrap_err(), Rejection::MissingKid);
    for bad in [
        "",
        "a.b",
        "a.b.c.d",
        "!!.e30.sig",
        "e30.e30.",
        "bm90anNvbg.e30.c2ln",
    ] {
        assert!(parse(bad).is_err(), "{bad}");
    }
    assert_eq!(
        parse(&"a".repeat(MAX_ID_TOKEN_BYTES + 1)).unwrap_err(),
        Rejection::TooLarge
    );
    let mut no_iss = claims();
    no_iss.as_object_mut().unwrap().remove("iss");
    assert_eq!(
        parse(&rs256(&header(), &no_iss)).unwrap().issuer(),
        Err(Rejection::MissingIssuer)
    );
}

#[test]
fn time_and_audience_rules_with_leeway() {
    let check = |c: serde_json::Value| {
        parse(&rs256(&header(), &c))
            .unwrap()
            .check_claims(Some("app"), NOW)
            .map(str::to_owned)
    };
    let mut c = claims();
    c["aud"] = json!("other");
    assert_eq!(check(c), Err(Rejection::Audience));
    let mut c = claims();
    c.as_object_mut().unwrap().remove("aud");
    assert_eq!(check(c), Err(Rejection::Audience));
    let mut c = claims();
    c.as_object_mut().unwrap().remove("exp");
    assert_eq!(check(c), Err(Rejection::MissingExpiry));
    let mut c = claims();
    c["exp"] = json!(NOW - 61);
    assert_eq!(check(c), Err(Rejection::Expired));
    let mut c = claims();
    c["exp"] = json!(NOW - 30);
    assert!(check(c).is_ok(), "within the leeway");
    let mut c = claims();
    c["exp"] = json!("soon");
    assert_eq!(check(c), Err(Rejection::Malformed));
    let mut c = claims();
    c["nbf"] = json!(NOW + 61);
    assert_eq!(check(c), Err(Rejection::NotYetValid));
    let mut c = claims();
    c["iat"] = json!(NOW + 120);
    assert_eq!(check(c), Err(Rejection::IssuedInFuture));
    let mut c = claims();
    c["iat"] = json!(NOW + 30);
    c["nbf"] = json!(NOW + 30);
    c["exp"] = json!((NOW + 300) as f64 + 0.5);
    assert!(check(c).is_ok());
}

#[test]
fn sub_rules() {
    for ok in [
        "user-1",
        "Usér Ünïcode/例え@x.jp",
        "auth0|123",
        "caracal",
        "x:caracal:y",
        &"a".repeat(512),
    ] {
        assert_eq!(check_sub(ok), Ok(()), "{ok}");
    }
    let cases: [(&str, Rejection); 11] = [
        ("", Rejection::MissingSub),
        (&"a".repeat(513), Rejection::SubTooLong),
        ("caracal:app-1", Rejection::SubReservedPrefix),
        (" user", Rejection::SubWhitespace),
        ("user\n", Rejection::SubWhitespace),
        ("user\u{00A0}", Rejection::SubWhitespace),
        ("user\u{0007}bell", Rejection::SubControl),
        ("us\u{0000}er", Rejection::SubControl),
        ("user\u{202E}cba", Rejection::SubBidi),
        ("user\u{2066}x", Rejection::SubBidi),
        ("user\u{FFFD}", Rejection::SubReplacement),
    ];
    for (sub, expected) in cases {
        assert_eq!(check_sub(sub), Err(expected), "{sub:?}");
    }
    // A 512-byte multibyte sub is accepted; one more byte is not.
    let multi = "é".repeat(256);
    assert_eq!(multi.len(), 512);
    assert_eq!(check_sub(&multi), Ok(()));
    assert_eq!(check_sub(&format!("{multi}a")), Err(Rejection::SubTooLong));
    let mut c = claims();
    c["sub"] = json!(42);
    assert_eq!(
        parse(&rs256(&header(), &c))
            .unwrap()
            .check_claims(None, NOW),
        Err(Rejection::MissingSub)
    );
}
