//! The hash chain of the credit ledger: every `TeamCredits` event records in its metadata
//! the hash of its predecessor (`prev_hash`) and its own (`hash`), sealed at append time
//! inside the append transaction. An auditor recomputes the chain from the stored events;
//! an edited, deleted or reordered event breaks it at that event.
//!
//! `hash = SHA-256(canonical encoding of aggregate type, aggregate id, sequence, event
//! type, event version, payload, prev_hash)`. The encoding length-prefixes every field and
//! writes the payload as canonical JSON (object keys sorted, no whitespace), so the hash
//! does not depend on how a database stores JSON (PostgreSQL's `jsonb` reorders keys).

use std::collections::HashMap;
use std::sync::Mutex;

use application::event_store::{NewEvent, StoredEvent, StreamAppend};
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
    hex::encode(event_digest(aggregate_type, aggregate_id, sequence, event_type, event_version, payload, prev_hash))
}

/// Whether `recorded` (hex, as stored) is `digest` — [`event_hash`]'s comparison, with the
/// digest written in hex on the stack (only the lower-case form is ever written).
pub fn hash_matches(recorded: &str, digest: [u8; 32]) -> bool {
    let mut expected = [0u8; 64];
    hex::encode_to_slice(digest, &mut expected).is_ok() && recorded.as_bytes() == expected
}

/// The hash of one event given its predecessor's hash, as bytes.
pub fn event_digest(
    aggregate_type: &str,
    aggregate_id: &str,
    sequence: i64,
    event_type: &str,
    event_version: &str,
    payload: &Value,
    prev_hash: &str,
) -> [u8; 32] {
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
    let mut canonical = String::with_capacity(512);
    write_canonical(payload, &mut canonical);
    field(canonical.as_bytes());
    field(prev_hash.as_bytes());
    hasher.finalize().into()
}

/// JSON with object keys sorted at every level and no insignificant whitespace.
pub fn write_canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            out.push('{');
            // serde_json's map keeps its keys sorted unless its `preserve_order` feature
            // is on somewhere in the build; the hash must not depend on that.
            if map.keys().is_sorted() {
                write_members(map.iter(), out);
            } else {
                let mut members: Vec<(&String, &Value)> = map.iter().collect();
                members.sort_by(|a, b| a.0.cmp(b.0));
                write_members(members.into_iter(), out);
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
        Value::String(text) => write_string(text, out),
        other => {
            use std::fmt::Write;
            // Numbers, booleans and null: their compact JSON, written in place.
            let _ = write!(out, "{other}");
        }
    }
}

fn write_members<'a>(members: impl Iterator<Item = (&'a String, &'a Value)>, out: &mut String) {
    for (n, (key, value)) in members.enumerate() {
        if n > 0 {
            out.push(',');
        }
        write_string(key, out);
        out.push(':');
        write_canonical(value, out);
    }
}

/// A JSON string exactly as serde_json writes it: most need no escape and are copied.
fn write_string(text: &str, out: &mut String) {
    if text.bytes().any(|b| b == b'"' || b == b'\\' || b < 0x20) {
        out.push_str(&Value::String(text.to_string()).to_string());
    } else {
        out.push('"');
        out.push_str(text);
        out.push('"');
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

/// Chained streams' last known events and their hashes, as this process saw them
/// committed or read: an append that follows one of them seals from the remembered hash
/// instead of looking it up inside its transaction. Safe because the events are
/// immutable: the event at a stream's sequence `n` has one hash forever, and an append
/// that expects another sequence (a stale tip) misses the memory and looks up as before.
#[derive(Default)]
pub struct ChainTips {
    tips: Mutex<HashMap<String, (i64, String)>>,
}

/// Streams remembered at most (twice the team writers a process keeps,
/// `application::credits::WRITERS_MAX`); the memory starts over when full.
const CHAIN_TIPS_MAX: usize = 20_000;

impl ChainTips {
    /// Hashes of the events the chained appends follow, where remembered.
    pub fn known(&self, appends: &[StreamAppend]) -> HashMap<String, String> {
        let tips = self.tips.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        appends
            .iter()
            .filter(|a| is_chained(&a.aggregate_type) && a.expected_sequence > 0)
            .filter_map(|a| match tips.get(&a.aggregate_id) {
                Some((sequence, hash)) if *sequence == a.expected_sequence => Some((a.aggregate_id.clone(), hash.clone())),
                _ => None,
            })
            .collect()
    }

    /// Remembers the last chained event of each stream among `events` (committed or read).
    pub fn record(&self, events: &[StoredEvent]) {
        let mut newest: HashMap<&str, (i64, &str)> = HashMap::new();
        for event in events.iter().filter(|e| is_chained(&e.aggregate_type)) {
            let Some(hash) = event.metadata.get("hash").and_then(Value::as_str) else { continue };
            let entry = newest.entry(event.aggregate_id.as_str()).or_insert((event.sequence, hash));
            if event.sequence >= entry.0 {
                *entry = (event.sequence, hash);
            }
        }
        if newest.is_empty() {
            return;
        }
        let mut tips = self.tips.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if tips.len() + newest.len() > CHAIN_TIPS_MAX {
            tips.clear();
        }
        for (id, (sequence, hash)) in newest {
            match tips.get_mut(id) {
                Some(tip) if tip.0 >= sequence => {}
                Some(tip) => *tip = (sequence, hash.to_string()),
                None => {
                    tips.insert(id.to_string(), (sequence, hash.to_string()));
                }
            }
        }
    }
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
    fn canonical_strings_and_numbers_are_serde_jsons_own() {
        // Keys sorted already (serde_json's default map): canonical is its compact output.
        let value = serde_json::json!({
            "quote\"d": "a \"b\" \\ c / d",
            "control": "tab\tnew\nline\u{1}\u{1f}\u{7f}",
            "unicode": "crème brûlée — 日本 🎨",
            "numbers": [0, -1, 1.5, 1e300, -0.0, 18446744073709551615u64, i64::MIN],
            "flags": [true, false, null],
            "empty": {"": "", "a": []},
        });
        let mut out = String::new();
        write_canonical(&value, &mut out);
        assert_eq!(out, serde_json::to_string(&value).unwrap());
    }

    #[test]
    fn the_hash_covers_sequence_payload_and_predecessor() {
        let payload = serde_json::json!({"type": "X", "amount": 5});
        let base = event_hash("TeamCredits", "t", 1, "X", "1", &payload, GENESIS_HASH);
        assert_ne!(base, event_hash("TeamCredits", "t", 2, "X", "1", &payload, GENESIS_HASH));
        assert_ne!(base, event_hash("TeamCredits", "t", 1, "X", "1", &serde_json::json!({"type": "X", "amount": 6}), GENESIS_HASH));
        assert_ne!(base, event_hash("TeamCredits", "t", 1, "X", "1", &payload, &base));
        assert_eq!(base, event_hash("TeamCredits", "t", 1, "X", "1", &serde_json::json!({"amount": 5, "type": "X"}), GENESIS_HASH));
        let digest = |sequence| event_digest("TeamCredits", "t", sequence, "X", "1", &payload, GENESIS_HASH);
        assert!(hash_matches(&base, digest(1)));
        assert!(!hash_matches(&base.to_uppercase(), digest(1)));
        assert!(!hash_matches(&base[1..], digest(1)));
        assert!(!hash_matches(&base, digest(2)));
    }

    fn stored(aggregate_type: &str, id: &str, sequence: i64, hash: &str) -> StoredEvent {
        StoredEvent {
            log_position: application::event_store::LogPosition { commit_order: sequence, position: sequence },
            aggregate_type: aggregate_type.into(),
            aggregate_id: id.into(),
            sequence,
            event_type: "X".into(),
            event_version: "1".into(),
            payload: serde_json::json!({}),
            metadata: serde_json::json!({"hash": hash}),
            recorded_at: chrono::Utc::now(),
        }
    }

    fn append_after(aggregate_type: &str, id: &str, expected_sequence: i64) -> StreamAppend {
        StreamAppend {
            aggregate_type: aggregate_type.into(),
            aggregate_id: id.into(),
            expected_sequence,
            events: vec![NewEvent { event_type: "X".into(), event_version: "1".into(), payload: serde_json::json!({}), metadata: Value::Null }],
            snapshot: None,
        }
    }

    #[test]
    fn tips_answer_only_appends_that_follow_the_remembered_event() {
        let tips = ChainTips::default();
        tips.record(&[stored("TeamCredits", "a", 1, "h1"), stored("TeamCredits", "a", 2, "h2"), stored("GenerationJob", "j", 1, "x")]);
        // An older read does not move the tip back.
        tips.record(&[stored("TeamCredits", "a", 1, "h1")]);
        let known = tips.known(&[append_after("TeamCredits", "a", 2), append_after("GenerationJob", "j", 1)]);
        assert_eq!(known, HashMap::from([("a".to_string(), "h2".to_string())]));
        // Behind or ahead of the tip, and unknown streams: looked up by the store.
        assert!(tips.known(&[append_after("TeamCredits", "a", 1), append_after("TeamCredits", "a", 3), append_after("TeamCredits", "b", 4)]).is_empty());
    }
}
