//! Property tests for the parsers and hashes of adopter documents: validation answers every
//! input with a verdict (never a panic or a crash), and the manifest hash matches `serde_json`'s
//! compact serialization.

use control_policy::{SCHEMA_VERSION, content_sha256, manifest_sha256, validate_document};
use proptest::prelude::*;

const HEADER: &str = "package caracal.authz\n\nimport rego.v1\n\n# caracal:data-document\n\n";

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn validation_gives_a_verdict_for_any_rego_like_body(
        body in "[a-z_\\[\\]{}()\"`.:=+\\-*|&<>! \n#0-9,;]{0,300}"
    ) {
        let content = format!("{HEADER}{body}");
        let verdict = validate_document(&content, SCHEMA_VERSION);
        if let Err(err) = verdict {
            prop_assert!(!err.code().is_empty());
        }
    }

    #[test]
    fn validation_gives_a_verdict_for_any_text(content in "\\PC{0,200}") {
        let _verdict = validate_document(&content, SCHEMA_VERSION);
    }

    #[test]
    fn long_chains_of_any_operator_are_rejected_or_accepted_without_crashing(
        operator in prop::sample::select(vec!["+", "-", "*", "|", "&", "==", ".", "in"]),
        length in 1_usize..400,
    ) {
        let chain = vec!["x"; length].join(&format!(" {operator} "));
        let content = format!("{HEADER}restrict := [y | x := 1; y := {chain}]\n");
        let _verdict = validate_document(&content, SCHEMA_VERSION);
    }

    #[test]
    fn manifest_hash_is_the_hash_of_serde_json_compact_output(
        ids in prop::collection::vec("\\PC{0,40}", 1..8)
    ) {
        let entries: Vec<serde_json::Value> = ids
            .iter()
            .map(|id| serde_json::json!({"policy_version_id": id}))
            .collect();
        let compact = serde_json::to_string(&entries).map_err(|err| TestCaseError::fail(err.to_string()))?;
        prop_assert_eq!(manifest_sha256(&ids), content_sha256(&compact));
    }
}
