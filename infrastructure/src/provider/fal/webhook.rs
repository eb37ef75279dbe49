//! Verification of fal's webhooks, before anything of them is read.
//!
//! fal signs `request_id \n user_id \n timestamp \n hex(sha256(body))` with ED25519 and
//! sends the signature (hex) in `X-Fal-Webhook-Signature`. The keys are fal's JWKS (OKP /
//! Ed25519, `x` in base64url): fetched once, kept for `jwks_cache_secs`, and fetched again
//! early when no kept key verifies a signature (fal rotated its keys) — at most once per
//! [`REFETCH_INTERVAL_MIN`], so forged webhooks cannot turn Kiln into a JWKS flooder. For
//! the same reason at most one fetch is in flight (deliveries that wait for it take its
//! outcome), and after a failed fetch none is tried for [`FAILED_FETCH_BACKOFF`].

use std::sync::Arc;
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
/// Earliest new fetch of the JWKS after a failed one; deliveries meanwhile are answered
/// [`VerifyError::KeysUnavailable`] (503: fal delivers again later).
pub const FAILED_FETCH_BACKOFF: Duration = Duration::from_secs(5);
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

/// The keys of the last successful fetch, and when it ended.
#[derive(Clone)]
struct CachedKeys {
    keys: Arc<[VerifyingKey]>,
    fetched_at: Instant,
}

/// What the verifier knows of fal's keys.
#[derive(Default)]
struct KeyState {
    /// The last successful fetch.
    cached: Option<CachedKeys>,
    /// The last attempt, when it failed: when it ended, and why.
    failure: Option<(Instant, String)>,
    /// Fetch attempts so far: a caller that waited for another's fetch sees it changed.
    attempts: u64,
}

impl KeyState {
    fn fresh(&self, now: Instant, ttl: Duration) -> Option<&CachedKeys> {
        self.cached.as_ref().filter(|c| now.saturating_duration_since(c.fetched_at) < ttl)
    }

    /// The last attempt's failure while it is too recent to try again.
    fn backing_off(&self, now: Instant) -> Result<(), VerifyError> {
        match &self.failure {
            Some((at, why)) if now.saturating_duration_since(*at) < FAILED_FETCH_BACKOFF => Err(VerifyError::KeysUnavailable(why.clone())),
            _ => Ok(()),
        }
    }

    /// The outcome of the last attempt: its keys, or why it failed.
    fn last_outcome(&self) -> Result<Arc<[VerifyingKey]>, VerifyError> {
        if let Some((_, why)) = &self.failure {
            return Err(VerifyError::KeysUnavailable(why.clone()));
        }
        self.cached.as_ref().map(|c| c.keys.clone()).ok_or_else(|| VerifyError::KeysUnavailable("no keys".into()))
    }
}

/// The verifier's time source (monotonic); tests substitute a clock they move by hand.
type Now = Arc<dyn Fn() -> Instant + Send + Sync>;

/// Verifies deliveries against fal's JWKS, fetched and cached as the module docs say.
pub struct FalWebhookVerifier {
    http: reqwest::Client,
    jwks_url: String,
    cache_ttl: Duration,
    tolerance_secs: u64,
    now: Now,
    state: std::sync::Mutex<KeyState>,
    /// Held for the whole of a fetch: at most one in flight.
    fetching: Mutex<()>,
}

impl FalWebhookVerifier {
    pub fn new(settings: &FalSettings) -> Result<Self, reqwest::Error> {
        Self::with_clock(settings, Arc::new(Instant::now))
    }

    fn with_clock(settings: &FalSettings, now: Now) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build()?;
        Ok(Self {
            http,
            jwks_url: settings.jwks_url.clone(),
            cache_ttl: Duration::from_secs(settings.jwks_cache_secs.max(1)),
            tolerance_secs: settings.webhook_tolerance_secs,
            now,
            state: std::sync::Mutex::new(KeyState::default()),
            fetching: Mutex::new(()),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, KeyState> {
        // Nothing panics while the state is held: a poisoned lock still holds a whole state.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Ok when the delivery is fal's: headers complete, timestamp within the tolerance of
    /// `now`, signature by a key of fal's JWKS.
    pub async fn verify(&self, headers: &WebhookHeaders, body: &[u8], now: DateTime<Utc>) -> Result<(), VerifyError> {
        let (message, signature) = prepare(headers, body, now, self.tolerance_secs)?;
        let verifies = |keys: &[VerifyingKey]| verified_by_any(keys, &message, &signature);
        let seen = {
            let state = self.state();
            let at = (self.now)();
            match state.fresh(at, self.cache_ttl) {
                Some(cached) if verifies(&cached.keys) => return Ok(()),
                // An unknown key: fal may have rotated. Look again, but not on every forgery.
                Some(cached) if at.saturating_duration_since(cached.fetched_at) < REFETCH_INTERVAL_MIN => {
                    return Err(VerifyError::NoMatchingKey);
                }
                _ => {}
            }
            state.backing_off(at)?;
            state.attempts
        };
        let keys = self.refetch(seen).await?;
        if verifies(&keys) {
            Ok(())
        } else {
            Err(VerifyError::NoMatchingKey)
        }
    }

    /// Fetches the JWKS, one caller at a time. A caller that waited while another fetched
    /// (`seen` is no longer the attempt count) takes that fetch's outcome instead of
    /// fetching again.
    async fn refetch(&self, seen: u64) -> Result<Arc<[VerifyingKey]>, VerifyError> {
        let _in_flight = self.fetching.lock().await;
        {
            let state = self.state();
            if state.attempts != seen {
                return state.last_outcome();
            }
        }
        let fetched = self.fetch().await;
        let at = (self.now)();
        let mut state = self.state();
        state.attempts += 1;
        match fetched {
            Ok(keys) => {
                state.cached = Some(CachedKeys { keys: keys.clone(), fetched_at: at });
                state.failure = None;
                Ok(keys)
            }
            Err(why) => {
                tracing::warn!(error = %why, "fal webhook keys could not be fetched");
                state.failure = Some((at, why.clone()));
                Err(VerifyError::KeysUnavailable(why))
            }
        }
    }

    async fn fetch(&self) -> Result<Arc<[VerifyingKey]>, String> {
        let response = self.http.get(&self.jwks_url).send().await.map_err(|e| e.without_url().to_string())?;
        if !response.status().is_success() {
            return Err(format!("JWKS answered {}", response.status()));
        }
        let body = response.bytes().await.map_err(|e| e.without_url().to_string())?;
        if body.len() > JWKS_BYTES_MAX {
            return Err(format!("JWKS larger than {JWKS_BYTES_MAX} bytes"));
        }
        let keys = parse_jwks(&body)?;
        tracing::info!(keys = keys.len(), "fal webhook keys fetched");
        Ok(keys.into())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

    use axum::extract::State;
    use axum::http::StatusCode;
    use axum::response::{IntoResponse, Response};
    use axum::routing::get;
    use axum::Router;
    use ed25519_dalek::{Signer, SigningKey};
    use tokio::sync::{Notify, Semaphore};

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

    /// fal's JWKS on loopback: counts fetches, answers each once `gate` lets it (a permit
    /// per answer), with the key `[7; 32]` when `serving`, else 503.
    #[derive(Clone)]
    struct JwksServer {
        fetches: Arc<AtomicUsize>,
        serving: Arc<AtomicBool>,
        gate: Arc<Semaphore>,
        hit: Arc<Notify>,
    }

    impl JwksServer {
        async fn start(serving: bool) -> (Self, String) {
            let server = Self {
                fetches: Arc::new(AtomicUsize::new(0)),
                serving: Arc::new(AtomicBool::new(serving)),
                gate: Arc::new(Semaphore::new(0)),
                hit: Arc::new(Notify::new()),
            };
            let router = Router::new().route("/jwks.json", get(Self::answer)).with_state(server.clone());
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let url = format!("http://{}/jwks.json", listener.local_addr().expect("address"));
            tokio::spawn(async move { axum::serve(listener, router).await });
            (server, url)
        }

        async fn answer(State(server): State<Self>) -> Response {
            server.fetches.fetch_add(1, Ordering::SeqCst);
            server.hit.notify_one();
            server.gate.acquire().await.expect("gate").forget();
            if !server.serving.load(Ordering::SeqCst) {
                return StatusCode::SERVICE_UNAVAILABLE.into_response();
            }
            let x = URL_SAFE_NO_PAD.encode(SigningKey::from_bytes(&[7; 32]).verifying_key().to_bytes());
            format!(r#"{{"keys":[{{"kty":"OKP","crv":"Ed25519","x":"{x}"}}]}}"#).into_response()
        }

        fn open(&self) {
            self.gate.add_permits(1_000);
        }

        fn fetches(&self) -> usize {
            self.fetches.load(Ordering::SeqCst)
        }
    }

    /// A monotonic clock the test moves by hand.
    #[derive(Clone)]
    struct HandClock {
        start: Instant,
        elapsed_ms: Arc<AtomicU64>,
    }

    impl HandClock {
        fn new() -> Self {
            Self { start: Instant::now(), elapsed_ms: Arc::new(AtomicU64::new(0)) }
        }

        fn advance(&self, by: Duration) {
            self.elapsed_ms.fetch_add(by.as_millis() as u64, Ordering::SeqCst);
        }

        fn now(&self) -> Now {
            let clock = self.clone();
            Arc::new(move || clock.start + Duration::from_millis(clock.elapsed_ms.load(Ordering::SeqCst)))
        }
    }

    fn verifier(jwks_url: String, clock: &HandClock) -> Arc<FalWebhookVerifier> {
        let settings = FalSettings { jwks_url, jwks_cache_secs: 3_600, ..FalSettings::default() };
        Arc::new(FalWebhookVerifier::with_clock(&settings, clock.now()).expect("verifier"))
    }

    const SIGNED_AT: i64 = 1_790_000_000;

    /// A delivery signed with the key `[seed; 32]` (`[7; 32]` is the JWKS's).
    fn delivery(seed: u8) -> (WebhookHeaders, Vec<u8>) {
        let body = br#"{"request_id":"req-1","status":"OK"}"#.to_vec();
        let message = signed_message("req-1", "user-1", &SIGNED_AT.to_string(), &body);
        let signature = hex::encode(SigningKey::from_bytes(&[seed; 32]).sign(&message).to_bytes());
        (headers(SIGNED_AT, signature), body)
    }

    async fn verify(verifier: &FalWebhookVerifier, seed: u8) -> Result<(), VerifyError> {
        let (headers, body) = delivery(seed);
        verifier.verify(&headers, &body, DateTime::from_timestamp(SIGNED_AT, 0).expect("instant")).await
    }

    /// Runs `count` deliveries signed by `[seed; 32]` at once; the JWKS answers only after
    /// the first fetch has begun and every delivery has been started.
    async fn concurrently(server: &JwksServer, verifier: &Arc<FalWebhookVerifier>, count: usize, seed: u8) -> Vec<Result<(), VerifyError>> {
        let tasks: Vec<_> = (0..count)
            .map(|_| {
                let verifier = verifier.clone();
                tokio::spawn(async move { verify(&verifier, seed).await })
            })
            .collect();
        server.hit.notified().await;
        server.open();
        let mut outcomes = Vec::new();
        for task in tasks {
            outcomes.push(task.await.expect("delivery task"));
        }
        outcomes
    }

    fn unavailable(outcome: &Result<(), VerifyError>) -> bool {
        matches!(outcome, Err(VerifyError::KeysUnavailable(_)))
    }

    #[tokio::test]
    async fn forged_deliveries_with_fals_jwks_down_fetch_it_once_per_backoff() {
        let (server, url) = JwksServer::start(false).await;
        let clock = HandClock::new();
        let verifier = verifier(url, &clock);

        let outcomes = concurrently(&server, &verifier, 8, 8).await;
        assert!(outcomes.iter().all(unavailable), "{outcomes:?}");
        assert_eq!(server.fetches(), 1, "one fetch for 8 concurrent deliveries");

        clock.advance(FAILED_FETCH_BACKOFF - Duration::from_millis(1));
        for _ in 0..5 {
            assert!(unavailable(&verify(&verifier, 8).await));
        }
        assert_eq!(server.fetches(), 1, "no fetch within the back-off");

        clock.advance(Duration::from_millis(1));
        assert!(unavailable(&verify(&verifier, 8).await));
        assert!(unavailable(&verify(&verifier, 8).await));
        assert_eq!(server.fetches(), 2, "one fetch once the back-off is over");

        // fal's JWKS back: fal's own delivery is verified after the next back-off.
        server.serving.store(true, Ordering::SeqCst);
        assert!(unavailable(&verify(&verifier, 7).await));
        clock.advance(FAILED_FETCH_BACKOFF);
        assert_eq!(verify(&verifier, 7).await, Ok(()));
        assert_eq!(verify(&verifier, 8).await, Err(VerifyError::NoMatchingKey));
        assert_eq!(server.fetches(), 3);
    }

    #[tokio::test]
    async fn concurrent_deliveries_with_no_keys_yet_share_one_fetch() {
        let (server, url) = JwksServer::start(true).await;
        let clock = HandClock::new();
        let verifier = verifier(url, &clock);

        let outcomes = concurrently(&server, &verifier, 8, 7).await;
        assert!(outcomes.iter().all(Result::is_ok), "{outcomes:?}");
        assert_eq!(server.fetches(), 1);
        for _ in 0..5 {
            assert_eq!(verify(&verifier, 8).await, Err(VerifyError::NoMatchingKey));
        }
        assert_eq!(server.fetches(), 1, "forgeries within the refetch interval fetch nothing");
    }

    #[tokio::test]
    async fn an_unknown_key_refetches_at_most_once_per_interval_and_expired_keys_are_fetched_again() {
        let (server, url) = JwksServer::start(true).await;
        server.open();
        let clock = HandClock::new();
        let verifier = verifier(url, &clock);

        assert_eq!(verify(&verifier, 7).await, Ok(()));
        assert_eq!(verify(&verifier, 8).await, Err(VerifyError::NoMatchingKey));
        clock.advance(REFETCH_INTERVAL_MIN - Duration::from_millis(1));
        assert_eq!(verify(&verifier, 8).await, Err(VerifyError::NoMatchingKey));
        assert_eq!(server.fetches(), 1);

        clock.advance(Duration::from_millis(1));
        assert_eq!(verify(&verifier, 8).await, Err(VerifyError::NoMatchingKey));
        assert_eq!(verify(&verifier, 8).await, Err(VerifyError::NoMatchingKey));
        assert_eq!(server.fetches(), 2, "one refetch for an unknown key per interval");

        clock.advance(Duration::from_secs(3_600));
        assert_eq!(verify(&verifier, 7).await, Ok(()));
        assert_eq!(verify(&verifier, 7).await, Ok(()));
        assert_eq!(server.fetches(), 3, "expired keys are fetched again, once");
    }
}
