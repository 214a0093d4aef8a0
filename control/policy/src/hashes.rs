//! Content and manifest hashes of policy objects (`authority-and-policy.md` §5.7).

use sha2::{Digest, Sha256};

/// Lowercase hex SHA-256 of a policy version's UTF-8 content.
pub fn content_sha256(content: &str) -> String {
    hex::encode(Sha256::digest(content.as_bytes()))
}

/// Lowercase hex SHA-256 of a manifest's compact serialization.
///
/// The serialization is `[{"policy_version_id":"…"},…]`: manifest order, that one key, no
/// whitespace, strings escaped as JSON requires.
pub fn manifest_sha256<S: AsRef<str>>(policy_version_ids: &[S]) -> String {
    hex::encode(Sha256::digest(
        compact_manifest(policy_version_ids).as_bytes(),
    ))
}

/// The compact manifest JSON that [`manifest_sha256`] hashes.
pub(crate) fn compact_manifest<S: AsRef<str>>(policy_version_ids: &[S]) -> String {
    let mut json = String::from("[");
    for (index, id) in policy_version_ids.iter().enumerate() {
        if index > 0 {
            json.push(',');
        }
        json.push_str("{\"policy_version_id\":");
        push_json_string(&mut json, id.as_ref());
        json.push('}');
    }
    json.push(']');
    json
}

/// Appends `value` as a JSON string literal, escaped the way `serde_json` does.
fn push_json_string(out: &mut String, value: &str) {
    out.push('"');
    for ch in value.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            c if u32::from(c) < 0x20 => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_hash_is_lowercase_hex_sha256_of_the_utf8_bytes() {
        assert_eq!(
            content_sha256(""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            content_sha256("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn manifest_is_serialized_compactly_in_manifest_order() {
        assert_eq!(
            compact_manifest(&["b", "a"]),
            r#"[{"policy_version_id":"b"},{"policy_version_id":"a"}]"#
        );
        assert_eq!(
            manifest_sha256(&["b", "a"]),
            content_sha256(r#"[{"policy_version_id":"b"},{"policy_version_id":"a"}]"#)
        );
        assert_ne!(manifest_sha256(&["a", "b"]), manifest_sha256(&["b", "a"]));
    }

    #[test]
    fn manifest_escaping_matches_serde_json() {
        let odd = "q\"u\\o\nte\u{1}\u{7f}é";
        let expected =
            serde_json::to_string(&serde_json::json!([{ "policy_version_id": odd }])).unwrap();
        assert_eq!(compact_manifest(&[odd]), expected);
    }

    #[test]
    fn empty_manifest_serializes_as_an_empty_array() {
        assert_eq!(compact_manifest::<&str>(&[]), "[]");
    }
}
