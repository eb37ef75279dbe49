//! Verifying (and, for tests and fixtures, making) the `Stripe-Signature` header.
//!
//! Stripe signs `"{t}.{raw body}"` with HMAC-SHA256 under the endpoint's secret and sends
//! `Stripe-Signature: t=<unix seconds>,v1=<hex>[,v1=<hex>…][,v0=…]`. Several `v1` appear
//! while a secret is being rolled; one match is enough. The timestamp bounds replays: a
//! signature older (or newer) than the tolerance is refused even if it matches. Pure: the
//! caller passes `now`.

use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Longest header accepted; real ones are about 150 bytes.
pub const HEADER_BYTES_MAX: usize = 2_048;
/// Most `v1` signatures tried per header (Stripe sends one per active secret).
pub const SIGNATURES_MAX: usize = 8;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("Stripe-Signature header missing")]
    Missing,
    #[error("Stripe-Signature header malformed")]
    Malformed,
    #[error("Stripe-Signature has no v1 signature")]
    NoSignature,
    #[error("no v1 signature matches the payload")]
    Mismatch,
    #[error("signature timestamp is outside the tolerance")]
    OutsideTolerance,
}

/// The parts of the header that matter.
#[derive(Debug, PartialEq, Eq)]
struct Header {
    timestamp: i64,
    signatures: Vec<Vec<u8>>,
}

fn parse(header: &str) -> Result<Header, SignatureError> {
    if header.len() > HEADER_BYTES_MAX {
        return Err(SignatureError::Malformed);
    }
    let mut timestamp = None;
    let mut signatures = Vec::new();
    for item in header.split(',') {
        let (key, value) = item.trim().split_once('=').ok_or(SignatureError::Malformed)?;
        match key {
            "t" => {
                // Two timestamps would make "which one was signed" ambiguous.
                if timestamp.is_some() {
                    return Err(SignatureError::Malformed);
                }
                timestamp = Some(value.parse::<i64>().map_err(|_| SignatureError::Malformed)?);
            }
            // A v1 that is not hex cannot match; skipping it lets a valid sibling match.
            "v1" if signatures.len() < SIGNATURES_MAX => {
                if let Ok(bytes) = hex::decode(value) {
                    signatures.push(bytes);
                }
            }
            // v0 (test-mode legacy scheme), extra v1s beyond the limit, future schemes.
            _ => {}
        }
    }
    let timestamp = timestamp.ok_or(SignatureError::Malformed)?;
    if signatures.is_empty() {
        return Err(SignatureError::NoSignature);
    }
    Ok(Header { timestamp, signatures })
}

fn mac(secret: &[u8], timestamp: i64, payload: &[u8]) -> HmacSha256 {
    // HMAC takes keys of any length, so this cannot fail.
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC accepts any key length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(payload);
    mac
}

/// Checks `header` against the raw `payload`. Returns the signed timestamp.
///
/// The comparison is constant-time (`verify_slice`). The signature is checked before the
/// timestamp, so a forger learns nothing about the tolerance.
pub fn verify(
    header: Option<&str>,
    payload: &[u8],
    secret: &[u8],
    now: DateTime<Utc>,
    tolerance_secs: u64,
) -> Result<DateTime<Utc>, SignatureError> {
    let header = parse(header.ok_or(SignatureError::Missing)?)?;
    let expected = mac(secret, header.timestamp, payload);
    if !header.signatures.iter().any(|signature| expected.clone().verify_slice(signature).is_ok()) {
        return Err(SignatureError::Mismatch);
    }
    let signed_at = DateTime::from_timestamp(header.timestamp, 0).ok_or(SignatureError::OutsideTolerance)?;
    let skew_secs = (now - signed_at).num_seconds().unsigned_abs();
    if skew_secs > tolerance_secs {
        return Err(SignatureError::OutsideTolerance);
    }
    Ok(signed_at)
}

/// The `Stripe-Signature` value Stripe would send for `payload` at `timestamp`.
pub fn sign(secret: &[u8], timestamp: i64, payload: &[u8]) -> String {
    let signature = hex::encode(mac(secret, timestamp, payload).finalize().into_bytes());
    format!("t={timestamp},v1={signature}")
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"whsec_test_secret";
    const BODY: &[u8] = br#"{"id":"evt_1","type":"ping"}"#;

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(secs, 0).expect("valid")
    }

    #[track_caller]
    fn check(header: Option<&str>, now: i64, expected: Result<i64, SignatureError>) {
        let got = verify(header, BODY, SECRET, at(now), 300).map(|t| t.timestamp());
        assert_eq!(got, expected, "header {header:?} at {now}");
    }

    #[test]
    fn verification_table() {
        let t = 1_790_000_000;
        let good = sign(SECRET, t, BODY);
        let good_sig = good.split_once(",v1=").expect("v1").1.to_owned();
        let other = sign(b"whsec_other", t, BODY);
        let other_sig = other.split_once(",v1=").expect("v1").1.to_owned();
        check(Some(&good), t, Ok(t));
        check(Some(&good), t + 300, Ok(t));
        check(Some(&good), t - 300, Ok(t));
        check(Some(&good), t + 301, Err(SignatureError::OutsideTolerance));
        check(Some(&good), t - 301, Err(SignatureError::OutsideTolerance));
        // Rolling secrets: any one v1 may match, in any position; v0 and junk are skipped.
        check(Some(&format!("t={t},v1={other_sig},v1={good_sig}")), t, Ok(t));
        check(Some(&format!("t={t}, v0=abc, v1=zz, v1={good_sig}")), t, Ok(t));
        check(Some(&other), t, Err(SignatureError::Mismatch));
        // The timestamp is signed: moving it breaks the signature.
        check(Some(&format!("t={},v1={good_sig}", t + 1)), t, Err(SignatureError::Mismatch));
        check(None, t, Err(SignatureError::Missing));
        check(Some(""), t, Err(SignatureError::Malformed));
        check(Some(&format!("v1={good_sig}")), t, Err(SignatureError::Malformed));
        check(Some(&format!("t=x,v1={good_sig}")), t, Err(SignatureError::Malformed));
        check(Some(&format!("t={t},t={t},v1={good_sig}")), t, Err(SignatureError::Malformed));
        check(Some(&format!("t={t},v0={good_sig}")), t, Err(SignatureError::NoSignature));
        check(Some(&"a".repeat(HEADER_BYTES_MAX + 1)), t, Err(SignatureError::Malformed));
    }

    #[test]
    fn the_body_is_signed_byte_for_byte() {
        let t = 1_790_000_000;
        let header = sign(SECRET, t, BODY);
        let reformatted = br#"{"id": "evt_1", "type": "ping"}"#;
        assert_eq!(verify(Some(&header), reformatted, SECRET, at(t), 300), Err(SignatureError::Mismatch));
    }

    #[test]
    fn matches_an_independent_hmac() {
        // printf '%s' '1700000000.{}' | openssl dgst -sha256 -hmac whsec_test
        let expected = "t=1700000000,v1=35495024f4ef3f94e5a93e22221544c4b75e9a42300cd965ab81cb85cd994e91";
        assert_eq!(sign(b"whsec_test", 1_700_000_000, b"{}"), expected);
    }
}
