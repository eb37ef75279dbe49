//! Test support shared by every integration test (one test binary, linked once).

pub mod app;
pub mod browser;
pub mod db;
pub mod ha;
pub mod pg_instance;
pub mod s3_delete;
