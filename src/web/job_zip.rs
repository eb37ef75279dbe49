//! `/jobs/{id}/images.zip`: every image of one of the team's completed generations in
//! one zip (the `zip` crate, stored: PNGs do not compress), streamed — each image is
//! read from the object store when the previous one has been sent, so at most two are
//! held at a time whatever the job's size.
//!
//! zip 3 writes to a `Write + Seek` and seeks back only into the file it is finishing
//! (to fill in its header's sizes and checksum) and to the archive's end. [`Window`]
//! is such a writer that keeps only the bytes from the current file's header on:
//! what lies before it is final and goes out.

use std::io::{Seek, SeekFrom, Write};

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use domain::JobId;

use super::errors::{Notice, WebError};
use super::session::Session;
use crate::queries;
use crate::state::AppState;

/// The bytes a [`Window`] holds: those before `sent` have gone out.
#[derive(Default)]
struct Held {
    /// Bytes already taken out ([`Window::take_before`]).
    sent: u64,
    /// The bytes from `sent` on.
    bytes: Vec<u8>,
    /// Write position (absolute).
    position: u64,
}

impl Held {
    fn end(&self) -> u64 {
        self.sent + self.bytes.len() as u64
    }
}

/// A writer that refuses to seek before the bytes already sent. Clones share it: the
/// zip writer owns one (zip 3 does not lend its writer back), the stream another.
#[derive(Clone, Default)]
struct Window(std::sync::Arc<std::sync::Mutex<Held>>);

impl Window {
    fn held(&self) -> std::sync::MutexGuard<'_, Held> {
        // A panic while holding it would have ended the download anyway.
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn end(&self) -> u64 {
        self.held().end()
    }

    /// The bytes before `mark` (a position already written), taken out.
    fn take_before(&self, mark: u64) -> Vec<u8> {
        let mut held = self.held();
        let count = (mark.saturating_sub(held.sent) as usize).min(held.bytes.len());
        let out: Vec<u8> = held.bytes.drain(..count).collect();
        held.sent += count as u64;
        out
    }
}

impl Write for Window {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let mut held = self.held();
        let at = (held.position - held.sent) as usize;
        let overlap = (held.bytes.len() - at).min(bytes.len());
        held.bytes[at..at + overlap].copy_from_slice(&bytes[..overlap]);
        held.bytes.extend_from_slice(&bytes[overlap..]);
        held.position += bytes.len() as u64;
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Seek for Window {
    fn seek(&mut self, to: SeekFrom) -> std::io::Result<u64> {
        let mut held = self.held();
        let target = match to {
            SeekFrom::Start(at) => Some(at),
            SeekFrom::End(delta) => held.end().checked_add_signed(delta),
            SeekFrom::Current(delta) => held.position.checked_add_signed(delta),
        };
        match target {
            Some(at) if at >= held.sent && at <= held.end() => {
                held.position = at;
                Ok(at)
            }
            _ => Err(std::io::Error::other("seek outside the bytes not yet sent")),
        }
    }
}

/// A zip written file by file, giving out its bytes as they become final.
struct ZipStream {
    zip: zip::ZipWriter<Window>,
    window: Window,
}

impl ZipStream {
    fn new() -> Self {
        let window = Window::default();
        ZipStream { zip: zip::ZipWriter::new(window.clone()), window }
    }

    /// Adds one file; returns the bytes that became final.
    fn add(&mut self, name: &str, bytes: &[u8]) -> zip::result::ZipResult<Vec<u8>> {
        let options = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored).large_file(false);
        // Starting this file finishes the previous one (zip seeks back into it once):
        // after that, everything before this file's header is final.
        let start = self.window.end();
        self.zip.start_file(name, options)?;
        self.zip.write_all(bytes)?;
        Ok(self.window.take_before(start))
    }

    /// Finishes the archive; returns the rest of its bytes.
    fn finish(self) -> zip::result::ZipResult<Vec<u8>> {
        let window = self.zip.finish()?;
        let end = window.end();
        Ok(window.take_before(end))
    }
}

/// The zip of the job's images (`{n}.png`, in order), read from storage one by one.
pub async fn download(State(state): State<AppState>, session: Session, Path(job_id): Path<String>) -> Result<Response, WebError> {
    let job = queries::jobs::job(&state.db, session.team_id, &job_id).await?.ok_or(WebError::NotFound)?;
    if job.images_expired {
        return Err(WebError::Refused(Notice::new("These images are gone", "They were deleted at the end of the retention period.")));
    }
    if job.status != "completed" || job.kind != domain::Operation::ImageGeneration.as_str() {
        return Err(WebError::Refused(Notice::new("No images to download", "Only a completed image generation has images.")));
    }
    let id: JobId = job_id.parse().map_err(|_| WebError::NotFound)?;
    let outputs = state.jobs.job(id).await?.outputs;
    let objects = state.objects.clone();
    let files: Vec<(String, String)> = outputs
        .iter()
        .enumerate()
        .map(|(index, output)| {
            let extension = output.key.rsplit_once('.').map(|(_, e)| e).filter(|e| e.len() <= 5).unwrap_or("png");
            (format!("{}.{extension}", index + 1), output.key.clone())
        })
        .collect();
    let state_of = (ZipStream::new(), files.into_iter());
    let logged_id = job.job_id.clone();
    let chunks = futures::stream::unfold(Some(state_of), move |current| {
        let objects = objects.clone();
        let logged_id = logged_id.clone();
        async move {
            let (mut zip, mut files) = current?;
            let Some((name, key)) = files.next() else {
                return Some((zip.finish().map(Bytes::from).map_err(std::io::Error::other), None));
            };
            let chunk = match objects.get(&key).await {
                Ok(Some(bytes)) => zip.add(&name, &bytes).map(Bytes::from).map_err(std::io::Error::other),
                Ok(None) => Err(std::io::Error::other(format!("image {key} is missing from storage"))),
                Err(error) => Err(std::io::Error::other(error.to_string())),
            };
            match chunk {
                Ok(chunk) => Some((Ok(chunk), Some((zip, files)))),
                Err(error) => {
                    // The download ends cut short: the client sees a broken zip, not a
                    // complete-looking one missing an image.
                    tracing::error!(%error, job_id = %logged_id, "images zip: an image could not be read");
                    Some((Err(error), None))
                }
            }
        }
    });
    let headers = [
        (header::CONTENT_TYPE, "application/zip".to_string()),
        (header::CONTENT_DISPOSITION, format!("attachment; filename=\"kiln-{job_id}.zip\"")),
    ];
    Ok((headers, Body::from_stream(chunks)).into_response())
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    #[test]
    fn the_streamed_zip_holds_every_file_and_sends_as_it_goes() {
        let files: Vec<(String, Vec<u8>)> = (1..=4).map(|n| (format!("{n}.png"), vec![n as u8; 10_000 * n])).collect();
        let mut zip = ZipStream::new();
        let mut out = Vec::new();
        for (index, (name, bytes)) in files.iter().enumerate() {
            let chunk = zip.add(name, bytes).expect("add");
            if index > 0 {
                assert!(!chunk.is_empty(), "the file before {name} went out");
            }
            assert!(zip.window.held().bytes.len() <= bytes.len() + 1_000, "only the current file is held");
            out.extend(chunk);
        }
        out.extend(zip.finish().expect("finish"));
        let mut archive = zip::ZipArchive::new(std::io::Cursor::new(out)).expect("a valid zip");
        assert_eq!(archive.len(), files.len());
        for (name, bytes) in &files {
            let mut read = Vec::new();
            archive.by_name(name).expect(name).read_to_end(&mut read).expect("read");
            assert_eq!(&read, bytes, "{name}");
        }
    }
}
