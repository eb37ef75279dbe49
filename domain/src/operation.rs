//! The three things that spend credits.
//!
//! Owns [`Operation`], shared by pricing (which formula), the ledger (recorded on every
//! reservation) and the job engine (a job's kind).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A credit-spending operation, which is also a generation job's kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Operation {
    /// Train a custom model from a description and a reference model.
    ModelCreation,
    /// Refine a ready custom model with more prompting.
    ModelRefinement,
    /// Generate images with a ready custom model.
    ImageGeneration,
}

impl Operation {
    /// Every operation.
    pub const ALL: [Operation; 3] = [
        Operation::ModelCreation,
        Operation::ModelRefinement,
        Operation::ImageGeneration,
    ];

    /// The snake_case name used in JSON and query filters.
    pub const fn as_str(self) -> &'static str {
        match self {
            Operation::ModelCreation => "model_creation",
            Operation::ModelRefinement => "model_refinement",
            Operation::ImageGeneration => "image_generation",
        }
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A string that names no operation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown operation {0:?}")]
pub struct UnknownOperation(pub String);

impl FromStr for Operation {
    type Err = UnknownOperation;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Operation::ALL
            .into_iter()
            .find(|op| op.as_str() == s)
            .ok_or_else(|| UnknownOperation(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for op in Operation::ALL {
            assert_eq!(op.to_string().parse::<Operation>(), Ok(op));
            assert_eq!(serde_json::to_string(&op).unwrap(), format!("\"{op}\""));
        }
    }
}
