//! Operators' changes to the reference-model catalog: add a model, edit it, retire it
//! (no longer offered for new custom models; the models made from it keep working),
//! restore it. One use case per action on [`OperatorActions`], as for every operator
//! action: the role and the reason are checked (`OperatorIdentity::act`), the fields by
//! `domain::catalog`'s value types, a preview image by [`PreviewImage::parse`] — the
//! one image rule of both doors — and the change is a `CatalogEntry` event carrying the
//! operator and the reason. A preview is stored through the object-store port before
//! the event that names it is appended, so the catalog never points at a missing image.

use async_trait::async_trait;
use domain::catalog::{CatalogCommand, CatalogEntry, Listed, NewReference, Preview, ReferenceChanges, ReferenceEdit, ReferenceError, ReferenceId, ReferenceSpec};
use sha2::{Digest, Sha256};

use crate::aggregate_store::CommandError;
use crate::event_store::EventStoreError;
use crate::jobs::steps::image_type;
use crate::operator_actions::{ActionError, OperatorActions, ReasonRule};
use crate::operators::OperatorIdentity;
use crate::storage::StorageError;

/// Largest preview image an operator may store.
pub const PREVIEW_BYTES_MAX: usize = 1024 * 1024;

/// What the catalog lists for an id now (the read model; a seeded model has no events).
#[async_trait]
pub trait CatalogListing: Send + Sync + 'static {
    async fn listed(&self, id: &str) -> Result<Listed, EventStoreError>;
}

/// Why an image cannot be a preview.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PreviewError {
    #[error("the preview image is empty")]
    Empty,
    #[error("the preview image is {bytes} bytes; at most {PREVIEW_BYTES_MAX} are accepted")]
    TooLarge { bytes: usize },
    #[error("the preview must be a PNG, JPEG or WebP image")]
    NotAnImage,
}

/// A preview image, checked: PNG, JPEG or WebP by its content, 1 byte to
/// [`PREVIEW_BYTES_MAX`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreviewImage {
    extension: &'static str,
    content_type: &'static str,
    bytes: Vec<u8>,
}

impl PreviewImage {
    pub fn parse(bytes: Vec<u8>) -> Result<Self, PreviewError> {
        if bytes.is_empty() {
            return Err(PreviewError::Empty);
        }
        if bytes.len() > PREVIEW_BYTES_MAX {
            return Err(PreviewError::TooLarge { bytes: bytes.len() });
        }
        let (extension, content_type) = image_type(&bytes).ok_or(PreviewError::NotAnImage)?;
        Ok(Self { extension, content_type, bytes })
    }

    /// Where it is stored and what the event records: the key names the content
    /// (`reference-models/{id}/preview-{sha256 prefix}.{ext}`), so a new image never
    /// replaces the bytes an older event names.
    fn describe(&self, id: &ReferenceId) -> Preview {
        let sha256 = hex::encode(Sha256::digest(&self.bytes));
        Preview {
            key: format!("reference-models/{id}/preview-{}.{}", &sha256[..16], self.extension),
            content_type: self.content_type.to_string(),
            bytes: self.bytes.len() as u64,
            sha256,
        }
    }
}

/// Why a catalog action was refused: the fields, the image, or the model's state.
#[derive(Debug, thiserror::Error)]
pub enum CatalogActionError {
    #[error(transparent)]
    Reference(#[from] CommandError<ReferenceError>),
    #[error(transparent)]
    Preview(#[from] PreviewError),
    #[error("storing the preview failed: {0}")]
    Storage(#[from] StorageError),
}

impl From<ReferenceError> for ActionError {
    fn from(error: ReferenceError) -> Self {
        ActionError::Catalog(CatalogActionError::Reference(CommandError::Rejected(error)))
    }
}

impl From<PreviewError> for ActionError {
    fn from(error: PreviewError) -> Self {
        ActionError::Catalog(CatalogActionError::Preview(error))
    }
}

impl OperatorActions {
    /// Adds a reference model (offered at once), with its preview when given.
    pub async fn add_reference(&self, who: &OperatorIdentity, raw: NewReference, preview: Option<Vec<u8>>, reason: Option<&str>, rule: ReasonRule) -> Result<ReferenceId, ActionError> {
        let act = who.act(reason, rule == ReasonRule::Required)?;
        let spec = ReferenceSpec::parse(raw)?;
        let preview = preview.map(PreviewImage::parse).transpose()?;
        let id = spec.id.clone();
        let now = self.credits.now();
        let described = preview.as_ref().map(|p| p.describe(&id));
        let command = |listed| CatalogCommand::Add { spec: spec.clone(), preview: described.clone(), listed, act: act.clone(), now };
        self.catalog_change(who, &id, command, preview).await?;
        Ok(id)
    }

    /// Edits a model's name, description, traits or preview (a retired one is refused).
    pub async fn edit_reference(&self, who: &OperatorIdentity, id: &str, raw: ReferenceEdit, preview: Option<Vec<u8>>, reason: Option<&str>, rule: ReasonRule) -> Result<(), ActionError> {
        let act = who.act(reason, rule == ReasonRule::Required)?;
        let id = ReferenceId::parse(id).map_err(|_| ReferenceError::NotFound)?;
        let changes = ReferenceChanges::parse(raw)?;
        let preview = preview.map(PreviewImage::parse).transpose()?;
        let now = self.credits.now();
        let described = preview.as_ref().map(|p| p.describe(&id));
        let command = |listed| CatalogCommand::Edit { changes: changes.clone(), preview: described.clone(), listed, act: act.clone(), now };
        self.catalog_change(who, &id, command, preview).await
    }

    /// Retires a model: no longer listed nor accepted for new custom models; models
    /// made from it keep working. Retiring a retired one records nothing.
    pub async fn retire_reference(&self, who: &OperatorIdentity, id: &str, reason: Option<&str>, rule: ReasonRule) -> Result<(), ActionError> {
        let act = who.act(reason, rule == ReasonRule::Required)?;
        let id = ReferenceId::parse(id).map_err(|_| ReferenceError::NotFound)?;
        let now = self.credits.now();
        self.catalog_change(who, &id, |listed| CatalogCommand::Retire { listed, act: act.clone(), now }, None).await
    }

    /// Offers a retired model again.
    pub async fn restore_reference(&self, who: &OperatorIdentity, id: &str, reason: Option<&str>, rule: ReasonRule) -> Result<(), ActionError> {
        let act = who.act(reason, rule == ReasonRule::Required)?;
        let id = ReferenceId::parse(id).map_err(|_| ReferenceError::NotFound)?;
        let now = self.credits.now();
        self.catalog_change(who, &id, |listed| CatalogCommand::Restore { listed, act: act.clone(), now }, None).await
    }

    /// Decides `command` first (a refusal stores nothing), then stores the preview,
    /// then appends (deciding again on the stream as it then is).
    async fn catalog_change(&self, who: &OperatorIdentity, id: &ReferenceId, command: impl Fn(Listed) -> CatalogCommand, preview: Option<PreviewImage>) -> Result<(), ActionError> {
        let listed = self.catalog.listed(id.as_str()).await.map_err(|e| CatalogActionError::Reference(CommandError::Store(e)))?;
        let loaded = self.aggregates.load::<CatalogEntry>(id.as_str()).await.map_err(|e| CatalogActionError::Reference(CommandError::Store(e)))?;
        loaded.aggregate.decide(id.as_str(), command(listed))?;
        if let Some(image) = preview {
            let key = image.describe(id).key;
            self.objects.put(&key, image.bytes, image.content_type).await.map_err(CatalogActionError::Storage)?;
        }
        let metadata = who.metadata();
        self.aggregates
            .execute::<CatalogEntry>(id.as_str(), (id.as_str().to_string(), command(listed)), &(), &metadata)
            .await
            .map_err(CatalogActionError::Reference)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_preview_is_an_image_of_bounded_size() {
        let png = b"\x89PNG\r\n\x1a\nrest".to_vec();
        let preview = PreviewImage::parse(png).expect("a png");
        let id = ReferenceId::parse("fashion-rain-01").expect("id");
        let described = preview.describe(&id);
        assert!(described.key.starts_with("reference-models/fashion-rain-01/preview-") && described.key.ends_with(".png"), "{}", described.key);
        assert!(crate::storage::validate_key(&described.key).is_ok());
        assert_eq!(PreviewImage::parse(Vec::new()), Err(PreviewError::Empty));
        assert_eq!(PreviewImage::parse(b"GIF89a".to_vec()), Err(PreviewError::NotAnImage));
        let mut large = b"\x89PNG\r\n\x1a\n".to_vec();
        large.resize(PREVIEW_BYTES_MAX + 1, 0);
        assert_eq!(PreviewImage::parse(large), Err(PreviewError::TooLarge { bytes: PREVIEW_BYTES_MAX + 1 }));
    }
}
