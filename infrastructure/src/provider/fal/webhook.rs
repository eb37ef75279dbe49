//! Verification of fal's webhooks, before anything of them is read.
//!
//! fal signs `request_id \n user_id \n timestamp \n hex(sha256(body))` with ED25519 and
//! sends the signature (hex) in `X-Fal-Webhook-Signature`. The keys are fal's JWKS (OKP /
//! Ed25519, `x` in base64url): fetched once, kept for `jwks_cache_secs`, and fetched again
//! early when no kept key verifies a signature (fal rotated its keys) — at most once per
//! [`REFETCH_INTERVAL_MIN`], so forged webhooks cannot turn Kiln into a JWKS flooder.

use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::{DateTime, Utc};
use ed25519_dalek::{Signature, VerifyingKey};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tokio::sync::Mutex;

use super::settings::FalSettings;

/// Earliest refetch of the JWKS after the previous fetch, when a signature matches no key.
pub const REFETCH_INTERVAL_MIN: Duration = Duration::from_secs(30);
/// Keys taken from one JWKS (the rest are ignored).
const KEYS_MAX: usize = 32;
/// Largest JWKS document read.
const JWKS_BYTES_MAX: usize = 64 * 1024;

/// The signed headers of one delivery, as received (missing ones are `None`).
#[derive(Debug, Clone, Default)]
pub struct WebhookHeaders {
    pub request_id: Option<String>,
    pub user_id: Option<String>,
    pub timestamp: Option<String>,
    pub signature: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("missing header {0}")]
    MissingHeader(&'static str),
    #[error("timestamp is not unix seconds")]
    BadTimestamp,
    #[error("timestamp outside the tolerance of {0} s")]
    Stale(u64),
    #[error("signature is not 64 bytes of hex")]
    BadSignatureEncoding,
    #[error("signature matches no key of fal's JWKS")]
    NoMatchingKey,
    #[error("fal's JWKS is unavailable: {0}")]
    KeysUnavailable(String),
}

/// The bytes fal signs.
pub fn signed_message(request_id: &str, user_id: &str, timestamp: &str, body: &[u8]) -> Vec<u8> {
    format!("{request_id}\n{user_id}\n{timestamp}\n{}", hex::encode(Sha256::digest(body))).into_bytes()
}

/// The checks that need no keys: every header present, timestamp fresh, signature well
/// formed. Returns the message to verify and the signature.
pub fn prepare(headers: &WebhookHeaders, body: &[u8], now: DateTime<Utc>, tolerance_secs: u64) -> Result<(Vec<u8>, Signature), VerifyError> {
    let field = |value: &Option<String>, name| value.clone().filter(|v| !v.is_empty()).ok_or(VerifyError::MissingHeader(name));
    let request_id = field(&headers.request_id, "X-Fal-Webhook-Request-Id")?;
    let user_id = field(&headers.user_id, "X-Fal-Webhook-User-Id")?;
    let timestamp = field(&headers.timestamp, "X-Fal-Webhook-Timestamp")?;
    let signature = field(&headers.signature, "X-Fal-Webhook-Signature")?;
    let at: i64 = timestamp.trim().parse().map_err(|_| VerifyError::BadTimestamp)?;
    if now.timestamp().abs_diff(at) > tolerance_secs {
        return Err(VerifyError::Stale(tolerance_secs));
    }
    let bytes: [u8; 64] = hex::decode(signature.trim())
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or(VerifyError::BadSignatureEncoding)?;
    Ok((signed_message(&request_id, &user_id, &timestamp, body), Signature::from_bytes(&bytes)))
}

/// Whether any of `keys` signed `message`.
pub fn verified_by_any(keys: &[VerifyingKey], message: &[u8], signature: &Signature) -> bool {
    keys.iter().any(|key| key.verify_strict(message, signature).is_ok())
}

#[derive(Debug, Deserialize)]
struct Jwks {
    #[serde(default)]
    keys: Vec<Jwk>,
}

#[derive(Debug, Deserialize)]
struct Jwk {
    #[serde(default)]
    kty: String,
    #[serde(default)]
    crv: String,
    #[serde(default)]
    x: String,
}

/// The Ed25519 keys of a JWKS document; other keys are skipped.
pub fn parse_jwks(body: &[u8]) -> Result<Vec<VerifyingKey>, String> {
    let jwks: Jwks = serde_json::from_slice(body).map_err(|e| format!("not a JWKS: {e}"))?;
    let keys: Vec<VerifyingKey> = jwks
        .keys
        .iter()
        .filter(|k| k.kty == "OKP" && k.crv == "Ed25519")
        .filter_map(|k| URL_SAFE_NO_PAD.decode(k.x.trim_end_matches('=')).ok())
        .filter_map(|x| <[u8; 32]>::try_from(x).ok())
        .filter_map(|x| VerifyingKey::from_bytes(&x).ok())
        .take(KEYS_MAX)
        .collect();
    if keys.is_empty() {
        return Err("the JWKS has no Ed25519 key".into());
    }
    Ok(keys)
}

struct CachedKeys {
    keys: Vec<VerifyingKey>,
    fetched_at: Instant,
}

/// Verifies deliveries against fal's JWKS, fetched and cached as the module docs say.
pub struct FalWebhookVerifier {
    http: reqwest::Client,
    jwks_url: String,
    cache_ttl: Duration,
    tolerance_secs: u64,
    cache: Mutex<Option<CachedKeys>>,
}

impl FalWebhookVerifier {
    pub fn new(settings: &FalSettings) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build()?;
        Ok(Self {
            http,
            jwks_url: settings.jwks_url.clone(),
            cache_ttl: Duration::from_secs(settings.jwks_cache_secs.max(1)),
            tolerance_secs: settings.webhook_tolerance_secs,
            cache: Mutex::new(None),
        })
    }

    /// Ok when the delivery is fal's: headers complete, timestamp within the tolerance of
    /// `now`, signature by a key of fal's JWKS.
    pub async fn verify(&self, headers: &WebhookHeaders, body: &[u8], now: DateTime<Utc>) -> Result<(), VerifyError> {
        let (message, signature) = prepare(headers, body, now, self.tolerance_secs)?;
        let mut cache = self.cache.lock().await;
        let fresh = cache.as_ref().is_some_and(|c| c.fetched_at.elapsed() < self.cache_ttl);
        if !fresh {
            *cache = Some(self.fetch().await?);
        }
        let cached = cache.as_ref().ok_or_else(|| VerifyError::KeysUnavailable("no keys".into()))?;
        if verified_by_any(&cached.keys, &message, &signature) {
            return Ok(());
        }
        // An unknown key: fal may have rotated. Look again, but not on every forgery.
        if fresh && cached.fetched_at.elapsed() >= REFETCH_INTERVAL_MIN {
            let refetched = self.fetch().await?;
            let verified = verified_by_any(&refetched.keys, &message, &signature);
            *cache = Some(refetched);
            if verified {
                return Ok(());
            }
        }
        Err(VerifyError::NoMatchingKey)
    }

    async fn fetch(&self) -> Result<CachedKeys, VerifyError> {
        let unavailable = |e: String| VerifyError::KeysUnavailable(e);
        let response = self.http.get(&self.jwks_url).send().await.map_err(|e| unavailable(e.without_url().to_string()))?;
        if !response.status().is_success() {
            return Err(unavailable(format!("JWKS answered {}", response.status())));
        }
        let body = response.bytes().await.map_err(|e| unavailable(e.without_url().to_string()))?;
        if body.len() > JWKS_BYTES_MAX {
            return Err(unavailable(format!("JWKS larger than {JWKS_BYTES_MAX} bytes")));
        }
        let keys = parse_jwks(&body).map_err(unavailable)?;
        tracing::info!(keys = keys.len(), "fal webhook keys fetched");
        Ok(CachedKeys { keys, fetched_at: Instant::now() })
    }
}

#[cfg(test)]
mod tests {
    use ed25519_dalek::{Signer, SigningKey};

    use super::*;

    fn headers(timestamp: i64, signature: String) -> WebhookHeaders {
        WebhookHeaders {
            request_id: Some("req-1".into()),
            user_id: Some("user-1".into()),
            timestamp: Some(timestamp.to_string()),
            signature: Some(signature),
        }
    }

    #[test]
    fn signatures_timestamps_and_keys_are_checked() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let other = SigningKey::from_bytes(&[8; 32]);
        let now = DateTime::from_timestamp(1_790_000_000, 0).expect("instant");
        let body = br#"{"request_id":"req-1","status":"OK"}"#;
        let sign = |key: &SigningKey, at: i64, body: &[u8]| {
            hex::encode(key.sign(&signed_message("req-1", "user-1", &at.to_string(), body)).to_bytes())
        };
        let keys = [key.verifying_key()];
        #[track_caller]
        fn check(keys: &[VerifyingKey], headers: WebhookHeaders, body: &[u8], now: DateTime<Utc>, expected: Result<bool, VerifyError>) {
            let got = prepare(&headers, body, now, 300).map(|(message, signature)| verified_by_any(keys, &message, &signature));
            assert_eq!(got, expected);
        }
        let at = now.timestamp();
        check(&keys, headers(at, sign(&key, at, body)), body, now, Ok(true));
        check(&keys, headers(at - 300, sign(&key, at - 300, body)), body, now, Ok(true));
        check(&keys, headers(at - 301, sign(&key, at - 301, body)), body, now, Err(VerifyError::Stale(300)));
        check(&keys, headers(at + 301, sign(&key, at + 301, body)), body, now, Err(VerifyError::Stale(300)));
        check(&keys, headers(at, sign(&other, at, body)), body, now, Ok(false));
        check(&keys, headers(at, sign(&key, at, body)), b"{}", now, Ok(false));
        check(&keys, headers(at, "zz".into()), body, now, Err(VerifyError::BadSignatureEncoding));
        let mut missing = headers(at, sign(&key, at, body));
        missing.user_id = None;
        check(&keys, missing, body, now, Err(VerifyError::MissingHeader("X-Fal-Webhook-User-Id")));
    }

    #[test]
    fn jwks_keys_are_read_and_foreign_keys_skipped() {
        let key = SigningKey::from_bytes(&[7; 32]).verifying_key();
        let x = URL_SAFE_NO_PAD.encode(key.to_bytes());
        let jwks = format!(r#"{{"keys":[{{"kty":"RSA","n":"abc"}},{{"kty":"OKP","crv":"Ed25519","x":"{x}","kid":"k1"}}]}}"#);
        assert_eq!(parse_jwks(jwks.as_bytes()), Ok(vec![key]));
        assert!(parse_jwks(br#"{"keys":[]}"#).is_err());
        assert!(parse_jwks(b"nope").is_err());
    }
}
