//! The stylesheet and the script, compiled into the binary and served from `/static/`:
//! no CDN, nothing fetched at run time, so the dashboard works offline.

use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use crate::state::AppState;

const STYLESHEET: &str = include_str!("static/kiln.css");
const SCRIPT: &str = include_str!("static/kiln.js");
/// Short: a new binary may ship new assets under the same name.
const CACHE: &str = "public, max-age=300";

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/static/kiln.css", get(|| async { ([(header::CONTENT_TYPE, "text/css; charset=utf-8"), (header::CACHE_CONTROL, CACHE)], STYLESHEET).into_response() }))
        .route("/static/kiln.js", get(|| async { ([(header::CONTENT_TYPE, "text/javascript; charset=utf-8"), (header::CACHE_CONTROL, CACHE)], SCRIPT).into_response() }))
}
