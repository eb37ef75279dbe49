//! `multipart/form-data` bodies that carry training images, for both doors: the REST
//! API (`POST /api/models`, `…/refine`) and the dashboard's forms (`POST /models`,
//! `…/refine`). The text parts become a field map (each door checks it its own way); the
//! `images` parts are files (PNG, JPEG or WebP images, or zips of them with same-named
//! `.txt` captions), checked by the use case (`application::jobs::steps::training_images`)
//! before anything is stored or reserved.

use application::jobs::steps::{Upload, UPLOADS_MAX};
use axum::extract::multipart::MultipartError;
use axum::extract::{FromRequest, Multipart, Request};
use axum::http::{header, HeaderMap, Method, StatusCode};
use serde_json::{Map, Value};

/// The part that carries training images.
pub const IMAGES_PART: &str = "images";
/// The part that carries a reference model's preview image (the console's catalog forms).
pub const PREVIEW_PART: &str = "preview";
/// Largest body that sends training images: at most 20 images of at most 10 MiB (or a
/// zip of them), and the text fields.
pub const UPLOAD_BODY_BYTES_MAX: usize = 64 * 1024 * 1024;
/// Parts read at most: the text fields and the images.
const PARTS_MAX: usize = UPLOADS_MAX + 8;

/// A form's text fields and files.
#[derive(Debug, Default)]
pub struct Parts {
    pub fields: Map<String, Value>,
    pub uploads: Vec<Upload>,
}

#[derive(Debug, thiserror::Error)]
pub enum PartsError {
    #[error("{0}")]
    Malformed(String),
    #[error("the body is larger than {UPLOAD_BODY_BYTES_MAX} bytes")]
    TooLarge,
    #[error("at most {UPLOADS_MAX} training images")]
    TooMany,
}

fn is_multipart(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().to_ascii_lowercase().starts_with("multipart/form-data"))
}

/// Whether the request sends images: a multipart POST to a route that takes them (API
/// or dashboard: training images; the console's catalog: a preview).
pub fn is_upload(method: &Method, path: &str, headers: &HeaderMap) -> bool {
    let path = path.strip_prefix("/api").unwrap_or(path);
    let takes_images = path == "/models" || (path.starts_with("/models/") && path.ends_with("/refine"));
    // The console's catalog forms carry a preview image.
    let takes_images = takes_images || path == "/ops/catalog" || path.starts_with("/ops/catalog/");
    method == Method::POST && takes_images && is_multipart(headers)
}

/// Reads a multipart body: text parts (each name once) and `images` files.
pub async fn read<S: Send + Sync>(request: Request, state: &S) -> Result<Parts, PartsError> {
    let mut multipart = Multipart::from_request(request, state).await.map_err(|e| PartsError::Malformed(e.body_text()))?;
    let mut parts = Parts::default();
    let mut count = 0;
    while let Some(field) = multipart.next_field().await.map_err(refused)? {
        count += 1;
        if count > PARTS_MAX {
            return Err(PartsError::TooMany);
        }
        let name = field.name().unwrap_or_default().to_string();
        if name == IMAGES_PART || name == PREVIEW_PART {
            let file_name = field.file_name().unwrap_or("image").to_string();
            let bytes = field.bytes().await.map_err(refused)?.to_vec();
            // A browser sends an empty part for a file input left empty.
            if !bytes.is_empty() || !file_name.is_empty() {
                parts.uploads.push(Upload { file_name, bytes });
            }
        } else if name.is_empty() || parts.fields.contains_key(&name) {
            return Err(PartsError::Malformed(format!("part {name:?} is unnamed or repeated")));
        } else {
            let text = field.text().await.map_err(refused)?;
            parts.fields.insert(name, Value::String(text));
        }
    }
    Ok(parts)
}

/// The value of one text part of a buffered multipart body (the dashboard's CSRF check
/// reads its token before the handler reads the form).
pub async fn text_part(headers: &HeaderMap, body: axum::body::Bytes, wanted: &str) -> Option<String> {
    let content_type = headers.get(header::CONTENT_TYPE)?.to_str().ok()?;
    let boundary = multer::parse_boundary(content_type).ok()?;
    let stream = futures::stream::once(async move { Ok::<_, std::convert::Infallible>(body) });
    let mut multipart = multer::Multipart::new(stream, boundary);
    while let Ok(Some(field)) = multipart.next_field().await {
        if field.name() == Some(wanted) {
            return field.text().await.ok();
        }
    }
    None
}

fn refused(error: MultipartError) -> PartsError {
    if error.status() == StatusCode::PAYLOAD_TOO_LARGE {
        PartsError::TooLarge
    } else {
        PartsError::Malformed(error.body_text())
    }
}
