//! The REST door's generic guard for the text that comes in, checked before anything is
//! parsed further or stored. The rule itself — no NUL and no other C0 control character
//! except tab, newline and carriage return, and a bound on every length — is
//! `domain::text`, the same the value types (`Prompt`, `ModelName`, …) hold at every
//! door; here it is applied to *every* string of a request, fields without a value type
//! of their own (ids, options, unknown fields) included, with the door's wide bounds.
//!
//! JSON bodies are checked whole by [`check_json`] (from `ApiJson`, so no endpoint can
//! miss it): a violation is a 422 naming the field by its JSON path. Path parameters and
//! query strings are checked by [`check_path_and_query`], in the layer on every route:
//! a path id that cannot be an id is a 404 (the resource cannot exist), a query
//! parameter a 422 naming it. Webhook bodies are checked after their signature
//! ([`first_violation`]).
//!
//! The bounds are public so the OpenAPI document can state them (`maxLength`). Fields
//! with a value type (names, prompts, reasons) are bounded again, tighter, by it.

use axum::extract::{Query, RawPathParams, Request};
use axum::http::StatusCode;
use domain::text;
use serde_json::Value;

use super::problem::Problem;

pub use domain::text::{refused_char, storable, REFERENCE_MODEL_ID_CHARS_MAX};

/// Longest string anywhere in a JSON body (characters). Prompts and descriptions, the
/// longest fields, are bounded at `domain::jobs::PROMPT_CHARS_MAX` (4,000).
pub const JSON_STRING_CHARS_MAX: usize = 10_000;
/// Longest value of a query parameter (characters); cursors are far shorter.
pub const QUERY_VALUE_CHARS_MAX: usize = text::TOKEN_CHARS_MAX;
/// Longest path parameter (characters): ids are UUIDs or slugs, storage keys a few
/// hundred characters at most.
pub const PATH_PARAM_CHARS_MAX: usize = text::TOKEN_CHARS_MAX;
// Fields whose values come from a closed list: any value longer than these is not on
// the list and is refused (422) as unknown, so the document may state them as maxLength
// (the reference-model id's bound is the domain's, re-exported above).
/// Longest Stripe price id accepted by checkout.
pub const PRICE_ID_CHARS_MAX: usize = 255;
/// Longest resolution or quality name (`1024x1024`, `standard`).
pub const OPTION_CHARS_MAX: usize = 32;

/// Replaces refused characters in every string and key of `value` (see [`storable`]).
pub fn make_storable(value: &mut Value) {
    match value {
        Value::String(text) => {
            if refused_char(text).is_some() {
                *text = storable(text);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(make_storable),
        Value::Object(fields) => {
            if fields.keys().any(|key| refused_char(key).is_some()) {
                let old = std::mem::take(fields);
                fields.extend(old.into_iter().map(|(key, item)| (storable(&key), item)));
            }
            fields.values_mut().for_each(make_storable);
        }
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}

/// Why `text` breaks the rule (`domain::text::check`), if it does.
fn violation(text: &str, chars_max: usize) -> Option<String> {
    text::check(text, chars_max).err().map(|error| error.to_string())
}

/// Checks every string (and object key) of a JSON document: a 422 naming the first
/// field at fault by its path (`metadata.label`, `items[2]`).
pub fn check_json(value: &Value) -> Result<(), Problem> {
    match first_violation(value, &mut String::new()) {
        Some((field, why)) => {
            let shown = if field.is_empty() { "the body" } else { field.as_str() };
            Err(Problem::invalid_field(&field, format!("{shown} {why}")))
        }
        None => Ok(()),
    }
}

/// The path and reason of the first string in `value` the rule refuses.
pub fn first_violation(value: &Value, path: &mut String) -> Option<(String, String)> {
    match value {
        Value::String(text) => violation(text, JSON_STRING_CHARS_MAX).map(|why| (path.clone(), why)),
        Value::Array(items) => items.iter().enumerate().find_map(|(index, item)| {
            let len = path.len();
            path.push_str(&format!("[{index}]"));
            let found = first_violation(item, path);
            path.truncate(len);
            found
        }),
        Value::Object(fields) => fields.iter().find_map(|(key, item)| {
            let len = path.len();
            if !path.is_empty() {
                path.push('.');
            }
            if let Some(why) = violation(key, JSON_STRING_CHARS_MAX) {
                // The key itself may hold the control character: shown escaped.
                path.push_str(&format!("{key:?}"));
                let found = (path.clone(), format!("has a key that {why}"));
                path.truncate(len);
                return Some(found);
            }
            path.push_str(key);
            let found = first_violation(item, path);
            path.truncate(len);
            found
        }),
        Value::Null | Value::Bool(_) | Value::Number(_) => None,
    }
}

/// Path parameters (decoded) and query parameters follow the rule, checked on every API
/// route before any extractor reads them (`http::api_route_checks`). A path that is not
/// UTF-8 is a 400; a path parameter the rule refuses cannot name anything (404); a query
/// parameter it refuses is a 422 naming it.
pub fn check_path_and_query(params: Result<RawPathParams, axum::extract::rejection::RawPathParamsRejection>, request: &Request) -> Result<(), Problem> {
    let params = match params {
        Ok(params) => params,
        Err(rejection) => {
            let status = rejection.status();
            let problem = if status == StatusCode::BAD_REQUEST {
                Problem::new(StatusCode::BAD_REQUEST, "malformed-path", "Malformed path").detail(rejection.body_text())
            } else {
                Problem::for_status(status).detail(rejection.body_text())
            };
            return Err(problem);
        }
    };
    for (name, value) in params.iter() {
        if violation(value, PATH_PARAM_CHARS_MAX).is_some() {
            return Err(Problem::not_found().detail(format!("no such resource ({name} cannot be an id)")));
        }
    }
    if request.uri().query().is_some() {
        let pairs = match Query::<Vec<(String, String)>>::try_from_uri(request.uri()) {
            Ok(Query(pairs)) => pairs,
            Err(rejection) => {
                return Err(Problem::new(StatusCode::BAD_REQUEST, "malformed-query", "Malformed query string")
                    .detail(rejection.body_text()));
            }
        };
        for (name, value) in &pairs {
            if let Some(why) = violation(name, QUERY_VALUE_CHARS_MAX) {
                return Err(Problem::invalid_field(&format!("{name:?}"), format!("a query parameter name {why}")));
            }
            if let Some(why) = violation(value, QUERY_VALUE_CHARS_MAX) {
                return Err(Problem::invalid_field(name, format!("query parameter {name} {why}")));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[track_caller]
    fn check(value: Value, field: Option<&str>) {
        let found = first_violation(&value, &mut String::new()).map(|(field, _)| field);
        assert_eq!(found.as_deref(), field, "{value}");
    }

    #[test]
    fn controls_are_refused_by_path_tab_and_newline_kept() {
        check(json!({"name": "a\tb\nc\r"}), None);
        check(json!({"name": "a\u{0}b"}), Some("name"));
        check(json!({"metadata": {"label": "x\u{1b}"}}), Some("metadata.label"));
        check(json!({"items": ["ok", "bad\u{7}"]}), Some("items[1]"));
        check(json!({"a\u{0}": 1}), Some("\"a\\0\""));
        check(json!("\u{0}"), Some(""));
        check(json!({"n": 1, "b": true, "z": null}), None);
        // DEL and C1 are not C0: accepted (they hurt no store).
        check(json!({"name": "\u{7f}\u{85}"}), None);
    }

    #[test]
    fn storable_text_replaces_only_refused_characters() {
        let mut value = json!({"a\u{0}": ["x\u{1}y", "tab\tok"]});
        make_storable(&mut value);
        assert_eq!(value, json!({"a\u{fffd}": ["x\u{fffd}y", "tab\tok"]}));
    }

    #[test]
    fn lengths_are_bounded() {
        check(json!({"p": "x".repeat(JSON_STRING_CHARS_MAX)}), None);
        check(json!({"p": "x".repeat(JSON_STRING_CHARS_MAX + 1)}), Some("p"));
    }
}
