//! The REST API's multipart bodies (see `crate::multipart`): the text fields checked
//! exactly as the JSON form of the request would be.

use application::jobs::steps::Upload;
use axum::extract::Request;
use axum::http::StatusCode;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::extract::{from_json, too_large_than};
use super::problem::Problem;
use crate::multipart::{self, PartsError, IMAGES_PART, UPLOAD_BODY_BYTES_MAX};

/// A request's fields as `T` and the files of its `images` parts.
pub async fn read<T: DeserializeOwned, S: Send + Sync>(request: Request, state: &S) -> Result<(T, Vec<Upload>), Problem> {
    let parts = multipart::read(request, state).await.map_err(|error| match error {
        PartsError::Malformed(detail) => {
            Problem::new(StatusCode::BAD_REQUEST, "malformed-multipart", "Malformed multipart body").detail(detail)
        }
        PartsError::TooLarge => too_large_than(UPLOAD_BODY_BYTES_MAX),
        PartsError::TooMany => Problem::invalid_field(IMAGES_PART, error.to_string()),
    })?;
    Ok((from_json(Value::Object(parts.fields))?, parts.uploads))
}
