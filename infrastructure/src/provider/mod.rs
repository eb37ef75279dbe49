//! Provider adapters for `application::provider::Provider`.
//!
//! - [`local`]: the offline local provider, the default when no fal.ai key is configured.
//!   Its pure renderer ([`render`]) is also used to draw the catalog's preview images.
//! - [`fal`]: fal.ai's queue API with verified webhooks, used when `fal.key` is set.

pub mod fal;
pub mod local;
pub mod render;

pub use local::{LocalProvider, LocalProviderConfig, PROVIDER_NAME as LOCAL_PROVIDER_NAME};
