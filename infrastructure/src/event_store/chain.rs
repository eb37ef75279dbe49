//! The hash chain of the credit ledger: every `TeamCredits` event records in its metadata
//! the hash of its predecessor (`prev_hash`) and its own (`hash`), sealed at append time
//! inside the append transaction. An auditor recomputes the chain from the stored events;
//! an edited, deleted or reordered event breaks it at that event.
//!
//! `hash = SHA-256(canonical encoding of aggregate type, aggregate id, sequence, event
//! type, event version, payload, prev_hash)`. The encoding length-prefixes every field and
//! writes the payload as canonical JSON (object keys sorted, no whitespace), so the hash
//! does not depend on how a database stores JSON (PostgreSQL's `jsonb` reorders keys).

use application::event_store::{NewEvent, StreamAppend};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// Streams whose events are chained.
pub const CHAINED_AGGREGATE_TYPE: &str = "TeamCredits";

/// `prev_hash` of a stream's first event.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

pub fn is_chained(aggregate_type: &str) -> bool {
    aggregate_type == CHAINED_AGGREGATE_TYPE
}

/// The hash of one event given its predecessor's hash (hex, lower case).
pub fn event_hash(
    aggregate_type: &str,
    aggregate_id: &str,
    sequence: i64,
    event_type: &str,
    event_version: &str,
    payload: &Value,
    prev_hash: &str,
) -> String {
    let mut hasher = Sha256::new();
    let mut field = |bytes: &[u8]| {
        hasher.update((bytes.len() as u64).to_be_bytes());
        hasher.update(bytes);
    };
    field(aggregate_type.as_bytes());
    field(aggregate_id.as_bytes());
    field(&sequence.to_be_bytes());
    field(event_type.as_bytes());
    field(event_version.as_bytes());
    let mut canonical = String::new();
    write_canonical(payload, &mut canonical);
    field(canonical.as_bytes());
    field(prev_hash.as_bytes());
    hex::encode(hasher.finalize())
}

/// JSON with object keys sorted at every level and no insignificant whitespace.
pub fn write_canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (n, key) in keys.into_iter().enumerate() {
                if n > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(key.clone()).to_string());
                out.push(':');
                write_canonical(&map[key], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (n, item) in items.iter().enumerate() {
                if n > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// `append` with `prev_hash` and `hash` added to the metadata of each event, chained from
/// `prev_hash` (the hash of event `expected_sequence`, or [`GENESIS_HASH`]). Metadata that
/// is not a JSON object is kept under `"context"`.
pub fn seal(append: &StreamAppend, prev_hash: &str) -> StreamAppend {
    let mut prev = prev_hash.to_string();
    let events = append
        .events
        .iter()
        .enumerate()
        .map(|(offset, event)| {
            let sequence = append.expected_sequence + 1 + offset as i64;
            let hash = event_hash(
                &append.aggregate_type,
                &append.aggregate_id,
                sequence,
                &event.event_type,
                &event.event_version,
                &event.payload,
                &prev,
            );
            let mut metadata = match &event.metadata {
                Value::Object(map) => map.clone(),
                Value::Null => serde_json::Map::new(),
                other => {
                    let mut map = serde_json::Map::new();
                    map.insert("context".into(), other.clone());
                    map
                }
            };
            metadata.insert("prev_hash".into(), Value::String(std::mem::replace(&mut prev, hash.clone())));
            metadata.insert("hash".into(), Value::String(hash));
            NewEvent { metadata: Value::Object(metadata), ..event.clone() }
        })
        .collect();
    StreamAppend { events, ..append.clone() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_json_sorts_keys_at_every_level() {
        let value: Value = serde_json::from_str(r#"{"b": 1, "a": {"d": [1, {"z": 2, "y": 3}], "c": null}}"#).unwrap();
        let mut out = String::new();
        write_canonical(&value, &mut out);
        assert_eq!(out, r#"{"a":{"c":null,"d":[1,{"y":3,"z":2}]},"b":1}"#);
    }

    #[test]
    fn the_hash_covers_sequence_payload_and_predecessor() {
        let payload = serde_json::json!({"type": "X", "amount": 5});
        let base = event_hash("TeamCredits", "t", 1, "X", "1", &payload, GENESIS_HASH);
        assert_ne!(base, event_hash("TeamCredits", "t", 2, "X", "1", &payload, GENESIS_HASH));
        assert_ne!(base, event_hash("TeamCredits", "t", 1, "X", "1", &serde_json::json!({"type": "X", "amount": 6}), GENESIS_HASH));
        assert_ne!(base, event_hash("TeamCredits", "t", 1, "X", "1", &payload, &base));
        assert_eq!(base, event_hash("TeamCredits", "t", 1, "X", "1", &serde_json::json!({"amount": 5, "type": "X"}), GENESIS_HASH));
    }
}
