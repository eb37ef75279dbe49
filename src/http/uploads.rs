//! `multipart/form-data` bodies of model creation and refinement: the request's text
//! fields (checked exactly as its JSON form would be) and the training images the team
//! sends (`images` parts: PNG, JPEG or WebP files, or a zip of them with same-named
//! `.txt` captions). The images themselves are checked by the use case
//! (`application::jobs::steps::training_images`) before anything is stored or reserved.

use application::jobs::steps::{Upload, UPLOADS_MAX};
use axum::extract::multipart::MultipartError;
use axum::extract::{FromRequest, Multipart, Request};
use axum::http::StatusCode;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use super::extract::{from_json, too_large_than, UPLOAD_BODY_BYTES_MAX};
use super::problem::Problem;

/// The part that carries training images.
pub const IMAGES_PART: &str = "images";
/// Parts read at most: the text fields and the images.
const PARTS_MAX: usize = UPLOADS_MAX + 8;

/// A request's fields as `T` and the files of its `images` parts.
pub async fn read<T: DeserializeOwned, S: Send + Sync>(request: Request, state: &S) -> Result<(T, Vec<Upload>), Problem> {
    let mut multipart = Multipart::from_request(request, state).await.map_err(|e| malformed(e.body_text()))?;
    let mut fields = Map::new();
    let mut uploads = Vec::new();
    let mut parts = 0;
    while let Some(field) = multipart.next_field().await.map_err(refused)? {
        parts += 1;
        if parts > PARTS_MAX {
            return Err(Problem::invalid_field(IMAGES_PART, format!("at most {UPLOADS_MAX} training images")));
        }
        let name = field.name().unwrap_or_default().to_string();
        if name == IMAGES_PART {
            let file_name = field.file_name().unwrap_or("image").to_string();
            let bytes = field.bytes().await.map_err(refused)?.to_vec();
            uploads.push(Upload { file_name, bytes });
        } else if name.is_empty() || fields.contains_key(&name) {
            return Err(malformed(format!("part {name:?} is unnamed or repeated")));
        } else {
            let text = field.text().await.map_err(refused)?;
            fields.insert(name, Value::String(text));
        }
    }
    Ok((from_json(Value::Object(fields))?, uploads))
}

fn malformed(detail: String) -> Problem {
    Problem::new(StatusCode::BAD_REQUEST, "malformed-multipart", "Malformed multipart body").detail(detail)
}

fn refused(error: MultipartError) -> Problem {
    if error.status() == StatusCode::PAYLOAD_TOO_LARGE {
        too_large_than(UPLOAD_BODY_BYTES_MAX)
    } else {
        malformed(error.body_text())
    }
}
