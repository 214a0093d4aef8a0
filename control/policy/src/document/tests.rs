use super::*;

const HEADER: &str = "package caracal.authz\n\nimport rego.v1\n\n# caracal:data-document\n\n";

fn doc(body: &str) -> String {
    format!("{HEADER}{body}\n")
}

fn code_of(content: &str) -> String {
    match validate_document(content, SCHEMA_VERSION) {
        Ok(()) => "ok".to_owned(),
        Err(err) => err.code(),
    }
}

#[test]
fn a_document_defining_every_root_is_valid() {
    let content = doc(r#"
app_ids := {"crm": "app-1", "crm-legacy": "app-1"}

grants["resource://crm"] := {"application": "crm", "roles": {"reader": ["crm:read"]}}

grants[identifier] := {"application": "crm", "roles": {"writer": ["crm:write"]}} if {
	some identifier in ["resource://crm-2"]
}

confinement := [{"label_prefix": "sandbox-", "scopes": ["crm:read"]}]

restrict := []

risk contains {"scope": s, "tier": "high"} if {
	some s in data.caracal.authz.grants["resource://crm"].roles.reader
}

default approval_tiers := []
"#);
    assert_eq!(code_of(&content), "ok");
}

#[test]
fn empty_or_blank_content_is_empty_policy() {
    assert_eq!(code_of(""), "empty_policy");
    assert_eq!(code_of("  \n\t\n"), "empty_policy");
}

#[test]
fn content_over_262144_characters_is_too_large() {
    let mut content = doc("app_ids := {}");
    let filler = MAX_DOCUMENT_CHARS + 1 - content.chars().count();
    content.push_str(&"#".repeat(filler));
    assert_eq!(content.chars().count(), MAX_DOCUMENT_CHARS + 1);
    assert_eq!(code_of(&content), "content_too_large");
    content.pop();
    assert_eq!(code_of(&content), "ok");
}

#[test]
fn size_limit_counts_characters_not_bytes() {
    // 100,000 three-byte characters in a comment: 300 KB but well under the character limit.
    let content = doc(&format!("# {}\napp_ids := {{}}", "€".repeat(100_000)));
    assert_eq!(code_of(&content), "ok");
}

#[test]
fn an_unclosed_string_is_unterminated() {
    assert_eq!(
        code_of(&doc(r#"app_ids := {"crm": "app-1}"#)),
        "unterminated_string"
    );
    assert_eq!(
        code_of(&doc("app_ids := {\"crm\": `app-1}")),
        "unterminated_string"
    );
    assert_eq!(
        code_of(&doc(r#"app_ids := {"crm": "app-1\"}"#)),
        "unterminated_string"
    );
}

#[test]
fn delimiters_inside_strings_and_comments_do_not_count() {
    let content = doc("# ( [ {\napp_ids := {\"c(r[m\": `a}p)p`}");
    assert_eq!(code_of(&content), "ok");
}

#[test]
fn unpaired_brackets_are_unbalanced_delimiters() {
    assert_eq!(
        code_of(&doc("app_ids := {\"crm\": \"a\"")),
        "unbalanced_delimiters"
    );
    assert_eq!(code_of(&doc("risk := [1, 2)")), "unbalanced_delimiters");
    assert_eq!(code_of(&doc("risk := [1, 2]]")), "unbalanced_delimiters");
}

#[test]
fn a_module_without_a_package_line_is_missing_its_declaration() {
    assert_eq!(
        code_of("# caracal:data-document\nimport rego.v1\napp_ids := {}\n"),
        "missing_package_declaration"
    );
    assert_eq!(code_of("# only a comment\n"), "missing_package_declaration");
}

#[test]
fn a_package_name_that_is_not_a_dotted_identifier_path_is_invalid() {
    for name in [
        "caracal-authz",
        "1caracal.authz",
        "caracal..authz",
        "caracal.",
        "",
    ] {
        let content = format!("package {name}\n# caracal:data-document\napp_ids := {{}}\n");
        assert_eq!(code_of(&content), "invalid_package_name", "{name:?}");
    }
}

#[test]
fn regorus_parse_errors_report_line_and_column() {
    let content = doc("app_ids := {\"crm\": }");
    let err = validate_document(&content, SCHEMA_VERSION).unwrap_err();
    let ValidationError::ParseError { line, col, .. } = &err else {
        panic!("expected a parse error, got {err:?}");
    };
    assert_eq!(*line, 7);
    assert!(*col > 0);
    assert_eq!(err.code(), format!("rego_parse_error:{line}:{col}"));
}

#[test]
fn a_rego_v0_rule_body_is_a_parse_error() {
    let code = code_of(&doc("restrict[x] { x := 1 }"));
    assert!(code.starts_with("rego_parse_error:"), "{code}");
}

#[test]
fn another_package_is_rejected() {
    let content = "package caracal.other\n# caracal:data-document\napp_ids := {}\n";
    assert_eq!(code_of(content), "must_use_package_caracal_authz");
    let content = "package caracal\n# caracal:data-document\napp_ids := {}\n";
    assert_eq!(code_of(content), "must_use_package_caracal_authz");
}

#[test]
fn a_module_without_the_marker_line_is_not_a_data_document() {
    let content = "package caracal.authz\nimport rego.v1\napp_ids := {}\n";
    assert_eq!(code_of(content), "must_be_data_document");
    let content = "package caracal.authz\n# caracal:data-documents\napp_ids := {}\n";
    assert_eq!(code_of(content), "must_be_data_document");
}

#[test]
fn defining_result_is_rejected() {
    assert_eq!(
        code_of(&doc("app_ids := {}\nresult := {\"decision\": \"allow\"}")),
        "data_document_must_not_define_result"
    );
}

#[test]
fn a_module_without_rules_must_define_data() {
    assert_eq!(code_of(&doc("")), "data_document_must_define_data");
}

#[test]
fn rules_other_than_the_six_roots_are_rejected_by_name() {
    assert_eq!(
        code_of(&doc("app_ids := {}\nhelper := 1")),
        "data_document_rule_not_allowed:helper"
    );
    assert_eq!(
        code_of(&doc("allow if true")),
        "data_document_rule_not_allowed:allow"
    );
}

#[test]
fn functions_are_rejected_even_when_named_like_a_root() {
    assert_eq!(
        code_of(&doc("grants(x) := x")),
        "data_document_rule_not_allowed:grants"
    );
}

#[test]
fn every_banned_builtin_is_rejected_by_name() {
    let calls = [
        (
            "http.send",
            r#"http.send({"method": "GET", "url": "http://x"})"#,
        ),
        ("net.lookup_ip_addr", r#"net.lookup_ip_addr("example.com")"#),
        (
            "net.cidr_contains",
            r#"net.cidr_contains("10.0.0.0/8", "10.1.1.1")"#,
        ),
        (
            "net.cidr_intersects",
            r#"net.cidr_intersects("10.0.0.0/8", "10.1.0.0/16")"#,
        ),
        ("net.cidr_expand", r#"net.cidr_expand("10.0.0.0/30")"#),
        ("net.cidr_merge", r#"net.cidr_merge(["10.0.0.0/8"])"#),
        ("opa.runtime", "opa.runtime()"),
        ("rand.intn", r#"rand.intn("seed", 10)"#),
        ("time.now_ns", "time.now_ns()"),
        ("uuid.rfc4122", r#"uuid.rfc4122("seed")"#),
    ];
    assert_eq!(calls.len(), BANNED_BUILTINS.len());
    for (name, call) in calls {
        let content = doc(&format!("restrict contains x if {{\n\tx := {call}\n}}"));
        assert_eq!(code_of(&content), format!("forbidden_builtin:{name}"));
    }
}

#[test]
fn banned_builtins_are_found_inside_comprehensions_and_every() {
    let content = doc("risk := [x | some i in [1]; x := {\"tier\": rand.intn(\"s\", i)}]");
    assert_eq!(code_of(&content), "forbidden_builtin:rand.intn");
    let content = doc("restrict contains 1 if {\n\tevery x in [1] { x < time.now_ns() }\n}");
    assert_eq!(code_of(&content), "forbidden_builtin:time.now_ns");
}

#[test]
fn harmless_builtins_are_allowed() {
    let content = doc(r#"risk := [{"scope": lower("CRM:READ"), "tier": sprintf("%s", ["high"])}]"#);
    assert_eq!(code_of(&content), "ok");
}

#[test]
fn reading_input_is_rejected() {
    assert_eq!(
        code_of(&doc(
            "restrict contains x if {\n\tx := input.principal.id\n}"
        )),
        "input_reference_not_allowed"
    );
    assert_eq!(
        code_of(&doc("restrict := [input]")),
        "input_reference_not_allowed"
    );
    assert_eq!(
        code_of(
            "package caracal.authz\nimport input.principal\n# caracal:data-document\napp_ids := {}\n"
        ),
        "input_reference_not_allowed"
    );
}

#[test]
fn data_references_outside_the_six_roots_are_rejected_with_their_path() {
    let cases = [
        ("risk := data.other.risk", "data.other.risk"),
        (
            "risk := data.caracal.authz.result",
            "data.caracal.authz.result",
        ),
        ("risk := data.caracal.authz", "data.caracal.authz"),
        (
            "risk := [x | some k; x := data.caracal.authz[k]]",
            "data.caracal.authz",
        ),
        ("risk := data", "data"),
        ("risk := data.caracal.other.risk", "data.caracal.other.risk"),
    ];
    for (body, path) in cases {
        assert_eq!(
            code_of(&doc(body)),
            format!("data_reference_not_allowed:{path}"),
            "{body}"
        );
    }
}

#[test]
fn data_references_to_the_six_roots_are_allowed() {
    for root in DATA_ROOTS {
        let content = doc(&format!(
            "restrict contains x if {{\n\tsome x in data.caracal.authz.{root}\n}}"
        ));
        assert_eq!(code_of(&content), "ok", "{root}");
    }
    let content = doc(r#"risk := data.caracal.authz["grants"]["resource://crm"].roles"#);
    assert_eq!(code_of(&content), "ok");
}

#[test]
fn importing_data_outside_the_roots_is_rejected() {
    let content =
        "package caracal.authz\nimport data.other\n# caracal:data-document\napp_ids := {}\n";
    assert_eq!(code_of(content), "data_reference_not_allowed:data.other");
    let content = "package caracal.authz\nimport data.caracal.authz.grants\n# caracal:data-document\napp_ids := {}\n";
    assert_eq!(code_of(content), "ok");
}

#[test]
fn with_is_rejected() {
    let content = doc(
        "app_ids := {}\nrestrict contains x if {\n\tx := data.caracal.authz.app_ids with data.caracal.authz.app_ids as {\"a\": 1}\n}",
    );
    assert_eq!(code_of(&content), "with_not_allowed");
}

#[test]
fn an_unsupported_schema_version_is_rejected_with_the_version() {
    let content = doc("app_ids := {}");
    assert_eq!(
        validate_document(&content, "2025-01-01")
            .unwrap_err()
            .code(),
        "unsupported_schema_version:2025-01-01"
    );
}

#[test]
fn long_operator_chains_are_rejected_before_regorus_parses_them() {
    // Without the lexical bound, regorus overflows the stack on such chains.
    let cases = [
        format!("restrict := [{}]", vec!["1"; 40_000].join(" +\n")),
        format!("restrict := [{}]", vec!["1"; 200].join(" + ")),
        format!("restrict := [x{}]", "[0]".repeat(200)),
        format!("restrict := [data.caracal.authz.risk{}]", ".x".repeat(200)),
        format!("restrict := [1 {}]", "in [1] ".repeat(200)),
        format!("restrict := [{}1{}]", "(1 + ".repeat(100), ")".repeat(100)),
    ];
    for body in cases {
        let code = code_of(&doc(&body));
        assert!(code.starts_with("rego_parse_error:"), "{code}");
    }
}

#[test]
fn operator_chains_within_the_bound_are_accepted() {
    let body = format!("restrict := [{}]", vec!["1"; 100].join(" +\n"));
    assert_eq!(code_of(&doc(&body)), "ok");
    // Separators start a new expression: a long literal is not deep.
    let entries: Vec<String> = (0..2_000)
        .map(|i| format!("\"resource://r{i}\": {{\"application\": \"a.b\", \"roles\": {{}}}}"))
        .collect();
    let body = format!("grants := {{\n{}\n}}", entries.join(",\n"));
    assert_eq!(code_of(&doc(&body)), "ok");
}

#[test]
fn more_than_twenty_thousand_lines_still_parse() {
    let mut body = String::from("app_ids := {}\n");
    body.push_str(&"\n".repeat(25_000));
    body.push_str("restrict := []");
    assert_eq!(code_of(&doc(&body)), "ok");
}
