use std::collections::HashMap;
use std::path::PathBuf;

use super::{Kek, KekParseError, KekRing};
use crate::key_source::KeyConfigError;

const SPEC_KEK: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
const OTHER_KEK: &str = "1f1e1d1c1b1a191817161514131211100f0e0d0c0b0a09080706050403020100";

fn lookup_from(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
    let map: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    move |name| map.get(name).cloned()
}

/// A file under the temp dir, removed on drop.
struct TempFile(PathBuf);

impl TempFile {
    fn with_contents(name: &str, contents: &str) -> Self {
        let path =
            std::env::temp_dir().join(format!("control-crypto-kek-{}-{name}", std::process::id()));
        std::fs::write(&path, contents).unwrap();
        Self(path)
    }

    fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ignored = std::fs::remove_file(&self.0);
    }
}

#[test]
fn spec_kek_has_spec_dek_id() {
    let kek = Kek::from_hex(SPEC_KEK).unwrap();
    assert_eq!(kek.dek_id().as_str(), "kek:fad070c93b661a58");
}

#[test]
fn kek_hex_accepts_uppercase_and_surrounding_whitespace() {
    let kek = Kek::from_hex(&format!("  {}\n", SPEC_KEK.to_uppercase())).unwrap();
    assert_eq!(kek.dek_id(), "kek:fad070c93b661a58");
}

#[test]
fn kek_debug_shows_only_the_dek_id() {
    let kek = Kek::from_hex(SPEC_KEK).unwrap();
    let debug = format!("{kek:?}");
    assert!(debug.contains("kek:fad070c93b661a58"), "{debug}");
    assert!(!debug.contains("0001020304"), "{debug}");
    let ring = KekRing::new(kek, None).unwrap();
    let debug = format!("{ring:?}");
    assert!(!debug.contains("0001020304"), "{debug}");
}

#[test]
fn short_kek_is_rejected_with_its_length_but_not_its_value() {
    let err = Kek::from_hex("deadbeef42").unwrap_err();
    assert_eq!(err, KekParseError::WrongLength { found: 10 });
    let message = err.to_string();
    assert_eq!(
        message,
        "expected 64 hex characters (32 bytes), found 10 characters"
    );
    assert!(!message.contains("deadbeef42"));
}

#[test]
fn non_hex_kek_is_rejected_without_its_value() {
    let value = format!("{}zz", &SPEC_KEK[..62]);
    let err = Kek::from_hex(&value).unwrap_err();
    assert_eq!(err, KekParseError::NotHex);
    let message = err.to_string();
    assert!(message.contains("is not hexadecimal"), "{message}");
    assert!(!message.contains(&value));
}

#[test]
fn non_ascii_kek_of_64_characters_is_not_hex() {
    let value = format!("{}é", &SPEC_KEK[..63]);
    assert_eq!(Kek::from_hex(&value).unwrap_err(), KekParseError::NotHex);
}

#[test]
fn all_zero_kek_is_rejected() {
    let err = Kek::from_hex(&"0".repeat(64)).unwrap_err();
    assert_eq!(err, KekParseError::AllZero);
    assert!(err.to_string().contains("is all zero"));
    assert_eq!(
        Kek::from_bytes(&[0; 32]).unwrap_err(),
        KekParseError::AllZero
    );
}

#[test]
fn ring_loads_current_key_from_variable() {
    let ring = KekRing::from_lookup(lookup_from(&[("ZONE_KEK", SPEC_KEK)])).unwrap();
    assert_eq!(ring.current().dek_id(), "kek:fad070c93b661a58");
    assert!(ring.previous().is_none());
    assert_eq!(
        ring.to_string(),
        "ZONE_KEK is kek:fad070c93b661a58, ZONE_KEK_PREVIOUS unset"
    );
}

#[test]
fn ring_loads_keys_from_files_with_trailing_newline() {
    let current = TempFile::with_contents("current", &format!("{SPEC_KEK}\n"));
    let previous = TempFile::with_contents("previous", &format!("{OTHER_KEK}\r\n"));
    let ring = KekRing::from_lookup(lookup_from(&[
        ("ZONE_KEK_FILE", current.path()),
        ("ZONE_KEK_PREVIOUS_FILE", previous.path()),
        ("ZONE_KEK_PROVIDER", "local"),
    ]))
    .unwrap();
    assert_eq!(ring.current().dek_id(), "kek:fad070c93b661a58");
    let previous_id = ring.previous().unwrap().dek_id().clone();
    assert!(ring.holds(previous_id.as_str()));
    assert!(ring.holds("kek:fad070c93b661a58"));
    assert!(!ring.holds("kek:0000000000000000"));
    assert_eq!(
        ring.to_string(),
        format!("ZONE_KEK is kek:fad070c93b661a58, ZONE_KEK_PREVIOUS is {previous_id}")
    );
}

#[test]
fn empty_variables_count_as_unset() {
    let ring = KekRing::from_lookup(lookup_from(&[
        ("ZONE_KEK", SPEC_KEK),
        ("ZONE_KEK_FILE", ""),
        ("ZONE_KEK_PREVIOUS", " "),
        ("ZONE_KEK_PROVIDER", ""),
    ]))
    .unwrap();
    assert!(ring.previous().is_none());
}

#[test]
fn missing_kek_is_not_configured() {
    let err = KekRing::from_lookup(lookup_from(&[])).unwrap_err();
    assert!(matches!(err, KeyConfigError::NotConfigured { ref var } if var == "ZONE_KEK"));
    assert_eq!(
        err.to_string(),
        "ZONE_KEK is not configured: set ZONE_KEK or ZONE_KEK_FILE"
    );
}

#[test]
fn both_kek_and_kek_file_is_an_error() {
    let file = TempFile::with_contents("both", SPEC_KEK);
    let err = KekRing::from_lookup(lookup_from(&[
        ("ZONE_KEK", SPEC_KEK),
        ("ZONE_KEK_FILE", file.path()),
    ]))
    .unwrap_err();
    assert!(matches!(err, KeyConfigError::BothSet { .. }));
    let message = err.to_string();
    assert!(
        message.contains("ZONE_KEK and ZONE_KEK_FILE are both set"),
        "{message}"
    );
    assert!(!message.contains(SPEC_KEK));
}

#[test]
fn both_previous_and_previous_file_is_an_error() {
    let err = KekRing::from_lookup(lookup_from(&[
        ("ZONE_KEK", SPEC_KEK),
        ("ZONE_KEK_PREVIOUS", OTHER_KEK),
        ("ZONE_KEK_PREVIOUS_FILE", "/nonexistent"),
    ]))
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("ZONE_KEK_PREVIOUS and ZONE_KEK_PREVIOUS_FILE are both set")
    );
}

#[test]
fn unreadable_kek_file_names_variable_and_path() {
    let path = std::env::temp_dir().join(format!(
        "control-crypto-kek-{}-does-not-exist",
        std::process::id()
    ));
    let path = path.to_str().unwrap();
    let err = KekRing::from_lookup(lookup_from(&[("ZONE_KEK_FILE", path)])).unwrap_err();
    assert!(matches!(err, KeyConfigError::Unreadable { .. }));
    let message = err.to_string();
    assert!(
        message.starts_with(&format!("ZONE_KEK_FILE: cannot read {path}: ")),
        "{message}"
    );
}

#[test]
fn wrong_length_kek_names_the_variable_but_not_the_value() {
    let err = KekRing::from_lookup(lookup_from(&[("ZONE_KEK", "deadbeef42")])).unwrap_err();
    let message = err.to_string();
    assert_eq!(
        message,
        "ZONE_KEK: expected 64 hex characters (32 bytes), found 10 characters"
    );
    assert!(!message.contains("deadbeef42"));
}

#[test]
fn invalid_kek_file_names_the_file_but_not_the_value() {
    let value = format!("{}xy", &OTHER_KEK[..62]);
    let file = TempFile::with_contents("nothex", &value);
    let err = KekRing::from_lookup(lookup_from(&[("ZONE_KEK_FILE", file.path())])).unwrap_err();
    let message = err.to_string();
    assert_eq!(
        message,
        format!("ZONE_KEK_FILE ({}): value is not hexadecimal", file.path())
    );
    assert!(!message.contains(&value));
}

#[test]
fn invalid_previous_kek_names_the_previous_variable() {
    let err = KekRing::from_lookup(lookup_from(&[
        ("ZONE_KEK", SPEC_KEK),
        ("ZONE_KEK_PREVIOUS", &"0".repeat(64)),
    ]))
    .unwrap_err();
    assert_eq!(err.to_string(), "ZONE_KEK_PREVIOUS: value is all zero");
}

#[test]
fn provider_other_than_local_is_rejected() {
    let err = KekRing::from_lookup(lookup_from(&[
        ("ZONE_KEK", SPEC_KEK),
        ("ZONE_KEK_PROVIDER", "vault"),
    ]))
    .unwrap_err();
    assert!(matches!(err, KeyConfigError::UnsupportedProvider { .. }));
    let message = err.to_string();
    assert_eq!(
        message,
        "ZONE_KEK_PROVIDER: must be `local` or empty, found \"vault\""
    );
    assert!(!message.contains(SPEC_KEK));
}

#[test]
fn previous_equal_to_current_is_rejected() {
    let err = KekRing::from_lookup(lookup_from(&[
        ("ZONE_KEK", SPEC_KEK),
        ("ZONE_KEK_PREVIOUS", &SPEC_KEK.to_uppercase()),
    ]))
    .unwrap_err();
    assert!(matches!(err, KeyConfigError::PreviousEqualsCurrent { .. }));
    let message = err.to_string();
    assert!(message.contains("kek:fad070c93b661a58"), "{message}");
    assert!(!message.contains(SPEC_KEK));
}

#[test]
fn oversized_kek_file_is_refused() {
    let file = TempFile::with_contents("huge", &"a".repeat(5000));
    let err = KekRing::from_lookup(lookup_from(&[("ZONE_KEK_FILE", file.path())])).unwrap_err();
    assert!(matches!(err, KeyConfigError::Unreadable { .. }));
    assert!(
        err.to_string()
            .ends_with("key file is larger than 4096 bytes"),
        "{err}"
    );
}
