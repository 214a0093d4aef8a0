use argon2::{Algorithm, Argon2, Version};

use super::{Argon2Params, PasswordError, decode_base64, dummy_verify, hash_secret, verify_secret};

/// Cheap parameters so the tests stay fast in debug builds.
const FAST: Argon2Params = Argon2Params {
    m_kib: 64,
    t: 1,
    p: 1,
};

/// Standard base64 with padding, written out here so the test does not share
/// code with the decoder under test.
fn base64_standard(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn legacy_hash(secret: &[u8], salt: &[u8]) -> Vec<u8> {
    let params = argon2::Params::new(65_536, 3, 2, Some(32)).unwrap();
    let mut out = vec![0_u8; 32];
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
        .hash_password_into(secret, salt, &mut out)
        .unwrap();
    out
}

#[test]
fn default_params_are_the_spec_defaults() {
    assert_eq!(
        Argon2Params::default(),
        Argon2Params {
            m_kib: 19_456,
            t: 2,
            p: 1
        }
    );
    assert_eq!(
        Argon2Params::LEGACY,
        Argon2Params {
            m_kib: 65_536,
            t: 3,
            p: 2
        }
    );
}

#[test]
fn hash_with_default_params_round_trips_as_phc() {
    let stored = hash_secret(&Argon2Params::default(), b"s3cret").unwrap();
    assert!(
        stored.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
        "{stored}"
    );
    assert!(verify_secret(b"s3cret", &stored).unwrap());
    assert!(!verify_secret(b"s3cret!", &stored).unwrap());
}

#[test]
fn hash_uses_the_given_params_and_verifies_with_them() {
    let stored = hash_secret(&FAST, b"client-secret").unwrap();
    assert!(
        stored.starts_with("$argon2id$v=19$m=64,t=1,p=1$"),
        "{stored}"
    );
    assert!(verify_secret(b"client-secret", &stored).unwrap());
}

#[test]
fn wrong_secret_does_not_verify() {
    let stored = hash_secret(&FAST, b"client-secret").unwrap();
    assert!(!verify_secret(b"client-secreT", &stored).unwrap());
    assert!(!verify_secret(b"", &stored).unwrap());
}

#[test]
fn same_secret_hashes_differently_each_time() {
    let a = hash_secret(&FAST, b"x").unwrap();
    let b = hash_secret(&FAST, b"x").unwrap();
    assert_ne!(a, b);
}

#[test]
fn legacy_upstream_form_verifies() {
    let salt = b"upstream-salt-16";
    let hash = legacy_hash(b"legacy-secret", salt);
    let stored = format!(
        "argon2id${}${}",
        base64_standard(salt),
        base64_standard(&hash)
    );
    assert!(verify_secret(b"legacy-secret", &stored).unwrap());
    assert!(!verify_secret(b"legacy-secreT", &stored).unwrap());

    // The same hash in URL-safe alphabet without padding is accepted too.
    let url_safe = |text: String| {
        text.trim_end_matches('=')
            .replace('+', "-")
            .replace('/', "_")
    };
    let unpadded = format!(
        "argon2id${}${}",
        url_safe(base64_standard(salt)),
        url_safe(base64_standard(&hash))
    );
    assert!(verify_secret(b"legacy-secret", &unpadded).unwrap());
}

#[test]
fn malformed_stored_hashes_are_errors_not_false() {
    let good = hash_secret(&FAST, b"x").unwrap();
    let truncated = &good[..good.rfind('$').unwrap()];
    let cases = [
        "",
        "not a hash",
        "$argon2id$",
        "$argon2id$v=19$m=64,t=1,p=1",
        truncated,
        "$argon2id$v=19$m=64,t=1,p=1$!!!$!!!",
        "$argon2id$v=19$m=4294967295,t=1,p=1$c2FsdHNhbHRzYWx0$aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaGhhc2g",
        "$argon2id$v=19$m=64,t=1000000,p=1$c2FsdHNhbHRzYWx0$aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaGhhc2g",
        "argon2id$",
        "argon2id$c2FsdHNhbHQ=",
        "argon2id$c2FsdHNhbHQ=$aGFzaGhhc2hoYXNoaGFzaA==$extra",
        "argon2id$not*base64$aGFzaGhhc2hoYXNoaGFzaA==",
        "argon2id$c2FsdA==$aGFzaGhhc2hoYXNoaGFzaA==",
        "argon2id$c2FsdHNhbHQ=$aGFzaA==",
    ];
    for stored in cases {
        match verify_secret(b"x", stored) {
            Err(PasswordError::MalformedHash { reason }) => {
                assert!(!reason.is_empty());
            }
            other => panic!("{stored:?}: {other:?}"),
        }
    }
}

#[test]
fn phc_string_of_another_algorithm_is_unsupported() {
    let argon2i =
        "$argon2i$v=19$m=64,t=1,p=1$c2FsdHNhbHRzYWx0$aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaGhhc2g";
    assert!(matches!(
        verify_secret(b"x", argon2i),
        Err(PasswordError::UnsupportedAlgorithm { .. })
    ));
    let other = "$pbkdf2-sha256$i=1000$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA";
    assert!(matches!(
        verify_secret(b"x", other),
        Err(PasswordError::UnsupportedAlgorithm { .. })
    ));
}

#[test]
fn invalid_params_are_rejected_when_hashing() {
    let too_little_memory = Argon2Params { m_kib: 1, ..FAST };
    assert!(matches!(
        hash_secret(&too_little_memory, b"x"),
        Err(PasswordError::InvalidParams { .. })
    ));
    let too_much_memory = Argon2Params {
        m_kib: super::MAX_M_KIB + 1,
        ..FAST
    };
    assert!(too_much_memory.validate().is_err());
}

#[test]
fn params_are_read_from_caracal_argon2_variables() {
    let params = Argon2Params::from_lookup(|name| match name {
        "CARACAL_ARGON2_M_KIB" => Some("32768".to_owned()),
        "CARACAL_ARGON2_T" => Some(" 3 ".to_owned()),
        "CARACAL_ARGON2_P" => Some(String::new()),
        _ => None,
    })
    .unwrap();
    assert_eq!(
        params,
        Argon2Params {
            m_kib: 32_768,
            t: 3,
            p: 1
        }
    );
    assert_eq!(
        Argon2Params::from_lookup(|_| None).unwrap(),
        Argon2Params::default()
    );
    let err =
        Argon2Params::from_lookup(|name| (name == "CARACAL_ARGON2_T").then(|| "0".to_owned()))
            .unwrap_err();
    assert_eq!(
        err.to_string(),
        "CARACAL_ARGON2_T: expected a positive integer"
    );
}

#[test]
fn dummy_verify_completes_for_valid_and_invalid_params() {
    dummy_verify(&FAST);
    dummy_verify(&Argon2Params { m_kib: 1, ..FAST });
}

#[test]
fn base64_decoder_accepts_both_alphabets_and_rejects_garbage() {
    assert_eq!(decode_base64("aGk=").unwrap(), b"hi");
    assert_eq!(decode_base64("aGk").unwrap(), b"hi");
    assert_eq!(
        decode_base64("-_-_").unwrap(),
        decode_base64("+/+/").unwrap()
    );
    assert_eq!(
        decode_base64(&base64_standard(&[0xfb, 0xff, 0x00, 0x10])).unwrap(),
        [0xfb, 0xff, 0x00, 0x10]
    );
    assert!(decode_base64("").is_none());
    assert!(decode_base64("a").is_none());
    assert!(decode_base64("aGk===").is_none());
    assert!(decode_base64("a b=").is_none());
}
