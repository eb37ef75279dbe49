//! The configuration reference: every key of [`Settings`] with its environment variable
//! and default, derived from the settings type itself (its serialized defaults, plus the
//! secret keys, which are never serialized). README's "Configuration reference" table is
//! checked against it by a test, so a key added to the settings without a row there (or
//! a row whose default went stale) fails the build's tests; the failure prints the rows
//! to paste.

use serde_json::Value;

use crate::config::Settings;

/// Keys whose values are secrets: `#[serde(skip_serializing)]`, so absent from the
/// serialized defaults. Each is `Option<SecretString>`, unset by default.
pub const SECRET_KEYS: [&str; 8] = [
    "auth.operator_key",
    "storage.url_signing_key",
    "storage.s3.secret_access_key",
    "stripe.secret_key",
    "stripe.webhook_secret",
    "fal.key",
    "metrics.bearer_token",
    "webhooks.signing_key",
];

/// One configuration key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyReference {
    /// Dotted TOML path, e.g. `database.url`.
    pub key: String,
    /// The environment variable that sets it, e.g. `KILN_DATABASE__URL`.
    pub env: String,
    /// The default as README shows it: `` `value` ``, or `unset`, or `none` (empty list).
    pub default: String,
}

/// Every key, in the order of the settings type (secrets after their section's keys).
pub fn reference() -> Vec<KeyReference> {
    let defaults = serde_json::to_value(Settings::default()).unwrap_or(Value::Null);
    let mut keys = Vec::new();
    flatten("", &defaults, &mut keys);
    for secret in SECRET_KEYS {
        let section_end = keys.iter().rposition(|k: &KeyReference| section(&k.key) == section(secret)).map_or(keys.len(), |i| i + 1);
        keys.insert(section_end, entry(secret, "unset".to_string()));
    }
    keys
}

fn section(key: &str) -> &str {
    key.rsplit_once('.').map_or("", |(section, _)| section)
}

fn entry(key: &str, default: String) -> KeyReference {
    KeyReference { key: key.to_string(), env: format!("KILN_{}", key.replace('.', "__").to_uppercase()), default }
}

fn flatten(prefix: &str, value: &Value, out: &mut Vec<KeyReference>) {
    match value {
        Value::Object(fields) => {
            for (name, value) in fields {
                let key = if prefix.is_empty() { name.clone() } else { format!("{prefix}.{name}") };
                flatten(&key, value, out);
            }
        }
        Value::Null => out.push(entry(prefix, "unset".into())),
        Value::Array(items) if items.is_empty() => out.push(entry(prefix, "none".into())),
        Value::String(text) => out.push(entry(prefix, format!("`{text}`"))),
        other => out.push(entry(prefix, format!("`{other}`"))),
    }
}

/// The rows of the README table for `keys` (`| key | env | default | … |`), with the
/// description column left for a person to fill in.
pub fn markdown_rows(keys: &[KeyReference]) -> String {
    keys.iter().map(|k| format!("| `{}` | `{}` | {} | … |\n", k.key, k.env, k.default)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const README: &str = include_str!("../../README.md");
    const START: &str = "<!-- config-reference:start -->";
    const END: &str = "<!-- config-reference:end -->";

    /// `(key, env, default)` of each row of README's reference table.
    fn readme_rows() -> Vec<(String, String, String)> {
        let start = README.find(START).expect("README has the config-reference start marker");
        let end = README.find(END).expect("README has the config-reference end marker");
        README[start..end]
            .lines()
            .filter(|line| line.starts_with("| `"))
            .map(|line| {
                let cells: Vec<&str> = line.trim_matches('|').split(" | ").map(str::trim).collect();
                let unquote = |cell: &str| cell.trim_matches('`').to_string();
                (unquote(cells[0]), unquote(cells[1]), cells.get(2).map_or(String::new(), |c| c.to_string()))
            })
            .collect()
    }

    #[test]
    fn the_readme_lists_every_key_with_its_variable_and_default() {
        let expected = reference();
        let rows = readme_rows();
        let missing: Vec<KeyReference> =
            expected.iter().filter(|k| !rows.iter().any(|(key, _, _)| key == &k.key)).cloned().collect();
        assert!(missing.is_empty(), "README's configuration reference lacks these keys; add rows:\n{}", markdown_rows(&missing));
        for (key, env, default) in &rows {
            let Some(known) = expected.iter().find(|k| &k.key == key) else {
                panic!("README lists `{key}`, which is not a setting");
            };
            assert_eq!(env, &known.env, "environment variable of {key}");
            assert_eq!(default, &known.default, "default of {key} (row to paste: {})", markdown_rows(std::slice::from_ref(known)));
        }
        assert_eq!(rows.len(), expected.len(), "each key listed once");
    }

    #[test]
    fn every_listed_key_is_accepted_from_the_environment() {
        // A row of the reference that the loader refused would be a lie; secrets and
        // string keys take any text, the rest their default.
        for key in reference() {
            figment::Jail::expect_with(|jail| {
                let value = match key.default.as_str() {
                    "unset" if key.key.ends_with("_url") => "http://127.0.0.1:1".to_string(),
                    "unset" => "some-value-long-enough-for-any-key-0123456789".to_string(),
                    "none" => "[]".to_string(),
                    quoted => quoted.trim_matches('`').to_string(),
                };
                jail.set_env(&key.env, &value);
                Settings::load(None).map_err(|e| format!("{}={value}: {e:?}", key.env))?;
                Ok(())
            });
        }
    }
}
