//! The dashboard's list cursors: `{rfc3339}|{id}` of the last row shown. Pages fetch one
//! row more than they show; if it came, there is a next page.

use chrono::{DateTime, Utc};

pub fn encode(at: DateTime<Utc>, id: &str) -> String {
    format!("{}|{id}", at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
}

/// A cursor from the query string; a malformed one starts from the top.
pub fn decode(cursor: Option<&str>) -> Option<(DateTime<Utc>, String)> {
    let (at, id) = cursor?.split_once('|')?;
    let at = DateTime::parse_from_rfc3339(at).ok()?.with_timezone(&Utc);
    Some((at, id.to_string()))
}

/// Cuts the extra row off; `true` if there was one.
pub fn cut<T>(rows: &mut Vec<T>, limit: usize) -> bool {
    let more = rows.len() > limit;
    rows.truncate(limit);
    more
}

/// A query-string value, percent-encoded.
pub fn q(value: &str) -> String {
    serde_urlencoded::to_string([("", value)]).map(|s| s.trim_start_matches('=').to_string()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_bad_ones_start_over() {
        let at = DateTime::from_timestamp(1_790_000_000, 123_000).expect("instant");
        assert_eq!(decode(Some(&encode(at, "job-1"))), Some((at, "job-1".to_string())));
        assert_eq!(decode(Some("nonsense")), None);
        assert_eq!(decode(None), None);
        assert_eq!(q("a b&c"), "a+b%26c");
    }
}
