//! The OpenAPI 3.1 document, generated from the route tables (`server::routes`) and the
//! JSON Schemas of the request and answer types (schemars, draft 2020-12, which OpenAPI 3.1
//! uses). It is served at `GET /v1/openapi.json` and committed as `docs/openapi.json`; a
//! test fails when the two differ (`make openapi` rewrites the file).

use schemars::{
    JsonSchema,
    generate::{Contract, SchemaSettings},
};
use serde_json::{Map, Value, json};

use crate::{
    auth::Need,
    routes::{Answer, RequestBody, Route},
    server,
};

/// The error body every refusal carries.
#[derive(Debug, serde::Serialize, JsonSchema)]
pub struct ProblemBody {
    /// The snake_case code.
    pub error: String,
    /// Human-readable message.
    pub message: String,
    /// The request id (also in `X-Request-Id`).
    pub request_id: String,
    /// Structured details, e.g. `{"issues":[{path,message}]}` for `invalid_body`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub details: Option<Value>,
    /// A refinement of the code, e.g. the policy validation code of `invalid_rego`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_description: Option<String>,
}

fn settings(contract: Contract) -> SchemaSettings {
    let mut settings = SchemaSettings::draft2020_12();
    settings.definitions_path = "/components/schemas".into();
    settings.meta_schema = None;
    settings.contract = contract;
    settings
}

/// The path parameters of a template, in order.
fn path_params(template: &str) -> Vec<&str> {
    template
        .split('/')
        .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
        .collect()
}

fn problem_response(description: String, problem: &Value) -> Value {
    json!({
        "description": description,
        "content": {"application/json": {"schema": problem}},
    })
}

/// Refusals every operation may answer, by status, with their codes.
fn common_refusals(route: &Route) -> Vec<(u16, &'static str)> {
    let mut refusals = vec![
        (401, "invalid_admin_token"),
        (429, "rate_limited"),
        (403, "admin_token_zone_mismatch"),
        (503, "database_unavailable"),
    ];
    match route.need {
        Need::Read => {}
        Need::Write => refusals.extend([
            (403, "admin_token_read_only"),
            (403, "admin_token_approve_only"),
        ]),
        Need::Decide => {
            refusals.extend([
                (403, "admin_token_read_only"),
                (403, "approve_capability_required"),
            ]);
        }
    }
    match route.body {
        RequestBody::None => {}
        RequestBody::Json(_) => refusals.extend([
            (400, "invalid_body"),
            (413, "payload_too_large"),
            (415, "unsupported_media_type"),
        ]),
        RequestBody::Raw(_) => refusals.extend([
            (408, "request_timeout"),
            (413, "payload_too_large"),
            (415, "unsupported_media_type"),
            (503, "too_many_uploads"),
        ]),
    }
    let paged = matches!(route.answer, Answer::Page(_) | Answer::PageOf(..));
    if paged || !route.query.is_empty() {
        refusals.push((400, "invalid_query"));
    }
    if paged {
        refusals.push((400, "invalid_cursor"));
    }
    refusals
}

/// Builds the document.
pub fn document() -> Value {
    let mut requests = settings(Contract::Deserialize).into_generator();
    let mut answers = settings(Contract::Serialize).into_generator();
    let problem = Value::from(answers.subschema_for::<ProblemBody>());
    let mut paths = Map::new();
    for route in server::routes() {
        let mut parameters: Vec<Value> = path_params(route.path)
            .into_iter()
            .map(|name| json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}}))
            .collect();
        parameters.extend(route.query.iter().map(|q| {
            json!({"name": q.name, "in": "query", "required": false, "description": q.description, "schema": {"type": "string"}})
        }));
        let mut responses = Map::new();
        match route.answer {
            Answer::Json(status, schema) => {
                responses.insert(status.to_string(), json!({"description": route.summary, "content": {"application/json": {"schema": Value::from(schema(&mut answers))}}}));
            }
            Answer::Accepted(schema) => {
                responses.insert("202".to_owned(), json!({"description": route.summary, "content": {"application/json": {"schema": Value::from(schema(&mut answers))}}}));
            }
            Answer::Page(schema) => {
                parameters.push(json!({"name": "limit", "in": "query", "required": false, "schema": {"type": "integer", "minimum": 1, "maximum": 500, "default": 200}}));
                parameters.push(json!({"name": "cursor", "in": "query", "required": false, "schema": {"type": "string"}}));
                let page = json!({
                    "type": "object",
                    "required": ["items", "next_cursor"],
                    "properties": {
                        "items": {"type": "array", "items": Value::from(schema(&mut answers))},
                        "next_cursor": {"type": ["string", "null"]},
                    },
                });
                responses.insert("200".to_owned(), json!({"description": route.summary, "content": {"application/json": {"schema": page}}}));
            }
            Answer::PageOf(schema, shape) => {
                parameters.push(json!({"name": "limit", "in": "query", "required": false, "schema": {"type": "integer", "minimum": 1, "maximum": shape.max_limit, "default": shape.default_limit}}));
                parameters.push(json!({"name": "cursor", "in": "query", "required": false, "schema": {"type": "string"}}));
                let page = json!({
                    "type": "object",
                    "required": ["items", "next_cursor"],
                    "properties": {
                        "items": {"type": "array", "items": Value::from(schema(&mut answers))},
                        "next_cursor": {"type": ["string", "null"]},
                    },
                });
                let mut content = json!({"application/json": {"schema": page}});
                let mut response = json!({"description": route.summary});
                if shape.csv {
                    content["text/csv"] = json!({"schema": {"type": "string"}});
                    response["headers"] = json!({
                        "content-disposition": {"description": "`attachment; filename=\"audit.csv\"` for CSV", "schema": {"type": "string"}},
                        "x-next-cursor": {"description": "CSV only: the cursor of the next part, when more follows", "schema": {"type": "string"}},
                    });
                }
                response["content"] = content;
                responses.insert("200".to_owned(), response);
            }
            Answer::Array(schema) => {
                let array = json!({"type": "array", "items": Value::from(schema(&mut answers))});
                responses.insert("200".to_owned(), json!({"description": route.summary, "content": {"application/json": {"schema": array}}}));
            }
            Answer::NoContent => {
                responses.insert("204".to_owned(), json!({"description": route.summary}));
            }
            Answer::Bytes(media_type) => {
                responses.insert("200".to_owned(), json!({"description": route.summary, "content": {media_type: {"schema": {"type": "string", "format": "binary"}}}}));
            }
        }
        let mut refusals = common_refusals(route);
        refusals.extend(route.refusals.iter().copied());
        let mut by_status: std::collections::BTreeMap<u16, Vec<&str>> =
            std::collections::BTreeMap::new();
        for (status, code) in refusals {
            let codes = by_status.entry(status).or_default();
            if !codes.contains(&code) {
                codes.push(code);
            }
        }
        for (status, codes) in by_status {
            responses.insert(
                status.to_string(),
                problem_response(format!("error: {}", codes.join(", ")), &problem),
            );
        }
        let mut operation = json!({
            "operationId": route.op,
            "summary": route.summary,
            "tags": [route.op.split('.').next().unwrap_or("admin")],
            "parameters": parameters,
            "responses": responses,
        });
        let request_body = match route.body {
            RequestBody::None => None,
            RequestBody::Json(body) => Some(
                json!({"required": true, "content": {"application/json": {"schema": Value::from(body(&mut requests))}}}),
            ),
            RequestBody::Raw(raw) => Some(json!({
                "required": true,
                "description": raw.description,
                "content": {raw.media_type: {"schema": {"type": "string", "format": "binary"}}},
            })),
        };
        if let (Some(body), Some(map)) = (request_body, operation.as_object_mut()) {
            map.insert("requestBody".to_owned(), body);
        }
        let item = paths
            .entry(format!("/v1{}", route.path))
            .or_insert_with(|| json!({}));
        if let Some(item) = item.as_object_mut() {
            item.insert(route.method.as_str().to_ascii_lowercase(), operation);
        }
    }
    paths.insert(
        "/v1/openapi.json".to_owned(),
        json!({"get": {
            "operationId": "meta.openapi",
            "summary": "This document",
            "tags": ["meta"],
            "responses": {
                "200": {"description": "The OpenAPI 3.1 document", "content": {"application/json": {"schema": {"type": "object"}}}},
                "401": problem_response("error: invalid_admin_token".to_owned(), &problem),
            },
        }}),
    );
    let mut schemas = requests.take_definitions(true);
    for (name, schema) in answers.take_definitions(true) {
        schemas.entry(name).or_insert(schema);
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Caracal admin API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "The /v1 admin API of Caracal in Rust, wire-compatible with Caracal 1.0. Generated from the route tables of control-api.",
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
    })
}

/// The document as served and committed: pretty JSON with a trailing newline.
pub fn document_text() -> String {
    let mut text = serde_json::to_string_pretty(&document()).unwrap_or_default();
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    const COMMITTED: &str = "../../docs/openapi.json";

    /// The committed document is the generated one. `UPDATE_OPENAPI=1` rewrites it.
    #[test]
    fn openapi_document_is_committed() {
        let generated = document_text();
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(COMMITTED);
        if std::env::var_os("UPDATE_OPENAPI").is_some() {
            std::fs::write(&path, &generated).unwrap();
        }
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == generated,
            "docs/openapi.json is stale: run `make openapi`"
        );
    }

    #[test]
    fn every_operation_has_a_unique_id_and_every_ref_resolves() {
        let doc = document();
        let text = doc.to_string();
        let schemas = doc["components"]["schemas"].as_object().unwrap();
        for (i, _) in text.match_indices("#/components/schemas/") {
            let rest = &text[i + "#/components/schemas/".len()..];
            let name = &rest[..rest.find('"').unwrap()];
            assert!(schemas.contains_key(name), "dangling $ref {name}");
        }
        let mut ids = std::collections::HashSet::new();
        for item in doc["paths"].as_object().unwrap().values() {
            for op in item.as_object().unwrap().values() {
                assert!(ids.insert(op["operationId"].as_str().unwrap().to_owned()));
            }
        }
    }
}
