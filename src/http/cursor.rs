//! Opaque pagination cursors. A cursor is base64url (no padding) of a small versioned
//! document naming the list it belongs to and the position after which the next page
//! starts: `{"v":1,"l":"jobs","p":"…"}`. Clients pass `next_cursor` back unchanged; one
//! that is not base64url, not of this version or of another list is a 422
//! (`/problems/invalid-cursor`). The position inside stays private to the list, so it
//! can change with the version. Cursors are not secret: every query is scoped to the
//! caller's team, so a forged one can only page through the caller's own data.

use axum::http::StatusCode;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::{Deserialize, Serialize};

use super::problem::Problem;

/// The cursor format's version.
const VERSION: u8 = 1;
/// Longest cursor accepted (characters); every cursor issued is far shorter.
pub const CURSOR_CHARS_MAX: usize = 512;

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Document {
    v: u8,
    /// The list the cursor belongs to.
    l: String,
    /// The list's own position.
    p: String,
}

/// The cursor of `list` at `position`.
pub fn encode(list: &str, position: &str) -> String {
    let document = Document { v: VERSION, l: list.to_string(), p: position.to_string() };
    // Serializing three plain fields cannot fail.
    let json = serde_json::to_vec(&document).unwrap_or_default();
    URL_SAFE_NO_PAD.encode(json)
}

pub fn invalid() -> Problem {
    Problem::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid-cursor", "Invalid cursor")
        .detail("cursor is not one this API issued for this list; pass next_cursor back unchanged")
        .with("field", "cursor")
}

/// The position of `list` a cursor names; `None` without a cursor (the first page).
pub fn decode(list: &str, cursor: Option<&str>) -> Result<Option<String>, Problem> {
    let Some(cursor) = cursor else { return Ok(None) };
    if cursor.len() > CURSOR_CHARS_MAX {
        return Err(invalid());
    }
    let bytes = URL_SAFE_NO_PAD.decode(cursor).map_err(|_| invalid())?;
    let document: Document = serde_json::from_slice(&bytes).map_err(|_| invalid())?;
    if document.v != VERSION || document.l != list {
        return Err(invalid());
    }
    Ok(Some(document.p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_are_bound_to_their_list() {
        let cursor = encode("jobs", "2026-01-01T00:00:00Z|abc");
        assert!(cursor.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'), "{cursor}");
        assert_eq!(decode("jobs", Some(&cursor)).unwrap().as_deref(), Some("2026-01-01T00:00:00Z|abc"));
        assert!(decode("models", Some(&cursor)).is_err());
        assert_eq!(decode("jobs", None).unwrap(), None);
    }

    #[test]
    fn malformed_cursors_are_refused() {
        let other_version = URL_SAFE_NO_PAD.encode(br#"{"v":2,"l":"jobs","p":"x"}"#);
        for bad in ["", "!!", "2026-01-01T00:00:00Z|abc", "e30", other_version.as_str(), "\u{0}"] {
            assert!(decode("jobs", Some(bad)).is_err(), "{bad:?}");
        }
    }
}
