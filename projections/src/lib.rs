//! Kiln's read models and the projector that keeps the async ones current.

pub mod projector;
