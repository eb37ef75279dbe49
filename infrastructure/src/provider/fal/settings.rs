//! The `[fal]` configuration section. With `key` set, Kiln runs jobs on fal.ai instead of
//! the local provider. The key is a secret: never serialized, never printed.

use secrecy::SecretString;
use serde::{Deserialize, Serialize};

use crate::config::ConfigError;

/// Training steps fal's trainer takes (`fal-ai/flux-lora-fast-training`: `steps` 1–10000).
pub const TRAINER_STEPS_RANGE: std::ops::RangeInclusive<u32> = 1..=10_000;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FalSettings {
    /// fal's API key (`Authorization: Key …`). Unset: the local provider runs jobs.
    #[serde(skip_serializing)]
    pub key: Option<SecretString>,
    /// fal's queue API. Tests point it at a fake on loopback.
    pub queue_base_url: String,
    /// Where fal publishes the ED25519 keys that sign its webhooks.
    pub jwks_url: String,
    /// How long fetched webhook keys are trusted before they are fetched again.
    pub jwks_cache_secs: u64,
    /// Kiln's public base URL for `fal_webhook` (`{base}/api/webhooks/fal`). Unset:
    /// `storage.public_base_url`, else `http://{http.host}:{http.port}`.
    pub webhook_base_url: Option<String>,
    /// How far a webhook's signed timestamp may be from now, either way.
    pub webhook_tolerance_secs: u64,
    /// The fal app that creates a custom model (a LoRA trainer).
    pub model_creation_app: String,
    /// The fal app that refines a custom model (a LoRA trainer).
    pub model_refinement_app: String,
    /// The fal app that generates images with a custom model's LoRA.
    pub image_generation_app: String,
    /// The fal text-to-image app that draws a model job's training images (with the
    /// model's LoRA when refining).
    pub training_images_app: String,
    /// Training steps asked of the trainer per model version.
    pub trainer_steps: u32,
    /// Limit on one HTTP call to fal (downloads of results included).
    pub request_timeout_secs: u64,
    /// Tries per call when fal answers 429/5xx or cannot be reached.
    pub attempts_max: u32,
    /// First back-off between tries; doubles each time.
    pub retry_backoff_ms: u64,
    /// Largest result file downloaded (images, LoRA weights).
    pub download_bytes_max: u64,
}

impl FalSettings {
    /// The values fal would refuse, found when the configuration loads.
    pub fn check(&self) -> Result<(), ConfigError> {
        if !TRAINER_STEPS_RANGE.contains(&self.trainer_steps) {
            return Err(ConfigError::OutOfRange {
                key: "fal.trainer_steps",
                value: self.trainer_steps.to_string(),
                expected: format!("{} to {}, fal's range", TRAINER_STEPS_RANGE.start(), TRAINER_STEPS_RANGE.end()),
            });
        }
        Ok(())
    }
}

impl Default for FalSettings {
    fn default() -> Self {
        Self {
            key: None,
            queue_base_url: "https://queue.fal.run".into(),
            jwks_url: "https://rest.alpha.fal.ai/.well-known/jwks.json".into(),
            jwks_cache_secs: 3_600,
            webhook_base_url: None,
            webhook_tolerance_secs: 300,
            model_creation_app: "fal-ai/flux-lora-fast-training".into(),
            model_refinement_app: "fal-ai/flux-lora-fast-training".into(),
            image_generation_app: "fal-ai/flux-lora".into(),
            training_images_app: "fal-ai/flux-lora".into(),
            trainer_steps: 1_000,
            request_timeout_secs: 60,
            attempts_max: 4,
            retry_backoff_ms: 500,
            download_bytes_max: 512 * 1024 * 1024,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::Settings;

    #[test]
    // figment's Jail fixes the closure's (large) error type.
    #[allow(clippy::result_large_err)]
    fn key_from_the_environment_is_never_printed() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("k.toml", "[fal]\nimage_generation_app = \"fal-ai/flux-lora/v2\"\n")?;
            let settings = Settings::load(Some(Path::new("k.toml"))).expect("valid settings");
            assert!(settings.fal.key.is_none(), "no key: the local provider");
            assert_eq!(settings.fal.queue_base_url, "https://queue.fal.run");
            jail.set_env("KILN_FAL__KEY", "fal-secret-key");
            jail.set_env("KILN_FAL__WEBHOOK_BASE_URL", "https://kiln.example");
            let settings = Settings::load(Some(Path::new("k.toml"))).expect("valid settings");
            assert!(settings.fal.key.is_some());
            assert_eq!(settings.fal.image_generation_app, "fal-ai/flux-lora/v2");
            assert_eq!(settings.fal.webhook_base_url.as_deref(), Some("https://kiln.example"));
            assert!(!format!("{settings:?}").contains("fal-secret-key"));
            assert!(!serde_json::to_string(&settings.fal).expect("json").contains("fal-secret-key"));
            Ok(())
        });
    }

    #[test]
    #[allow(clippy::result_large_err)]
    fn trainer_steps_outside_fals_range_are_refused_naming_the_key() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("k.toml", "[fal]\ntrainer_steps = 10000\n")?;
            assert_eq!(Settings::load(Some(Path::new("k.toml"))).expect("the largest fal takes").fal.trainer_steps, 10_000);
            for (steps, shown) in [("0", "0"), ("10001", "10001")] {
                jail.set_env("KILN_FAL__TRAINER_STEPS", steps);
                let error = Settings::load(Some(Path::new("k.toml"))).expect_err("out of range").to_string();
                assert!(error.contains(&format!("fal.trainer_steps = {shown}")) && error.contains("1 to 10000"), "{error}");
            }
            Ok(())
        });
    }
}
