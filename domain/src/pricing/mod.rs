//! Pricing: what an operation costs, in whole credits.
//!
//! Owns [`PricingConfig`] (one version of the stored `credit_pricing_config`), the three
//! formulas, and [`Quote`], the price the ledger reserves together with the config version.
//!
//! - model creation = `base_cost + reference_complexity_multiplier × complexity_factor`
//! - refinement = `base_cost + refinement_scope_multiplier × iteration_count`
//! - image = `base_cost + (resolution_multiplier + quality_multiplier) × model_complexity`,
//!   and a job of `count` images costs `count ×` the per-image price.
//!
//! # Units and rounding
//!
//! Base costs are whole credits. Multipliers and fractional factors are fixed-point
//! **milli-units** (`i64`, `1000` = 1.0, suffix `_milli`); `iteration_count` is a plain
//! integer. Each per-unit formula is evaluated exactly in integers (in `i128`, so no
//! intermediate product can overflow) and the fractional credit is rounded **up**, once, at
//! the end of the per-unit formula. Rounding up means Kiln never undercharges; rounding
//! once means a price never drifts by more than one credit from the exact value. Image
//! jobs round per image and then multiply, so a job of `n` images always costs exactly
//! `n ×` the per-image price shown by the estimate.
//!
//! Negative inputs, unknown resolutions or qualities, a zero price and any overflow are
//! [`PricingError`]s; nothing here panics.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::amount::Credits;
use crate::operation::Operation;

#[cfg(test)]
mod tests;

/// `1.0` in milli-units.
pub const MILLI: i64 = 1_000;

/// Why a price could not be computed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PricingError {
    /// The config has no multiplier for this resolution.
    #[error("unknown resolution {0:?}")]
    UnknownResolution(String),
    /// The config has no multiplier for this quality.
    #[error("unknown quality {0:?}")]
    UnknownQuality(String),
    /// A cost, multiplier or factor is negative; prices only ever add.
    #[error("{field} must not be negative, got {value}")]
    Negative {
        /// The offending input or config field.
        field: &'static str,
        /// Its value.
        value: i64,
    },
    /// An image job must generate at least one image.
    #[error("image count must be at least 1")]
    ZeroCount,
    /// The formula came to zero credits; a free operation would bypass the ledger.
    #[error("price came to zero credits")]
    ZeroPrice,
    /// The config's version must be positive (it is recorded on every reservation).
    #[error("pricing config version must be positive, got {0}")]
    InvalidVersion(i64),
    /// The price does not fit in 64 bits.
    #[error("price overflows the ledger's 64-bit range")]
    Overflow,
}

/// Model creation prices.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelCreationPricing {
    /// Whole credits charged for every creation.
    pub base_cost: i64,
    /// Credits per 1.0 of the reference model's complexity factor, in milli-units.
    pub reference_complexity_multiplier_milli: i64,
}

/// Model refinement prices.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelRefinementPricing {
    /// Whole credits charged for every refinement.
    pub base_cost: i64,
    /// Credits per refinement iteration, in milli-units.
    pub refinement_scope_multiplier_milli: i64,
}

/// Image generation prices.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageGenerationPricing {
    /// Whole credits charged per image.
    pub base_cost: i64,
    /// Multiplier per resolution (e.g. `"1024x1024"`), in milli-units. The keys are the
    /// resolutions Kiln offers.
    pub resolution_multipliers_milli: BTreeMap<String, i64>,
    /// Multiplier per quality (`"standard"`, `"hd"`), in milli-units.
    pub quality_multipliers_milli: BTreeMap<String, i64>,
}

impl ImageGenerationPricing {
    /// The resolutions offered, cheapest first (ties by name).
    pub fn resolutions(&self) -> Vec<String> {
        by_price(&self.resolution_multipliers_milli)
    }

    /// The qualities offered, cheapest first (ties by name).
    pub fn qualities(&self) -> Vec<String> {
        by_price(&self.quality_multipliers_milli)
    }
}

fn by_price(multipliers: &BTreeMap<String, i64>) -> Vec<String> {
    let mut offered: Vec<(&String, &i64)> = multipliers.iter().collect();
    offered.sort_by_key(|(name, milli)| (**milli, (*name).clone()));
    offered.into_iter().map(|(name, _)| name.clone()).collect()
}

/// One version of the price list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PricingConfig {
    /// Recorded on each reservation so a charge can always be explained later.
    pub version: i64,
    /// Prices for creating a custom model.
    pub model_creation: ModelCreationPricing,
    /// Prices for refining a custom model.
    pub model_refinement: ModelRefinementPricing,
    /// Prices for generating images.
    pub image_generation: ImageGenerationPricing,
}

/// What is being priced, with its inputs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "operation", rename_all = "snake_case")]
pub enum PriceRequest {
    /// Creating a model from a reference model of this complexity.
    ModelCreation {
        /// The reference model's complexity factor, in milli-units.
        complexity_factor_milli: i64,
    },
    /// Refining a model.
    ModelRefinement {
        /// The refinement scope in iterations.
        iteration_count: i64,
    },
    /// Generating `count` images.
    ImageGeneration {
        /// A key of `resolution_multipliers_milli`.
        resolution: String,
        /// A key of `quality_multipliers_milli`.
        quality: String,
        /// The custom model's complexity, in milli-units.
        model_complexity_milli: i64,
        /// How many images; at least 1.
        count: u32,
    },
}

/// A computed price: what to reserve and under which price version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quote {
    /// Which operation was priced.
    pub operation: Operation,
    /// The config version used.
    pub price_version: i64,
    /// Price of one unit (one model, one refinement, one image), already rounded up.
    pub unit_price: Credits,
    /// How many units (1 except for image jobs).
    pub units: u32,
    /// `unit_price × units`: the amount to reserve.
    pub amount: Credits,
}

impl PricingConfig {
    /// Kiln's first price list: creation 100 + 50 × complexity, refinement 40 + 10 ×
    /// iterations, image 2 + (resolution 1 | 2 | 4 + quality 0 | 2) × complexity.
    pub fn default_v1() -> Self {
        let milli = |pairs: &[(&str, i64)]| {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v * MILLI))
                .collect()
        };
        Self {
            version: 1,
            model_creation: ModelCreationPricing {
                base_cost: 100,
                reference_complexity_multiplier_milli: 50 * MILLI,
            },
            model_refinement: ModelRefinementPricing {
                base_cost: 40,
                refinement_scope_multiplier_milli: 10 * MILLI,
            },
            image_generation: ImageGenerationPricing {
                base_cost: 2,
                resolution_multipliers_milli: milli(&[
                    ("512x512", 1),
                    ("768x768", 2),
                    ("1024x1024", 4),
                ]),
                quality_multipliers_milli: milli(&[("standard", 0), ("hd", 2)]),
            },
        }
    }

    /// Checks a config before it is stored or used: a positive version, and no negative
    /// cost or multiplier. (A zero price is still caught per request.)
    pub fn validate(&self) -> Result<(), PricingError> {
        if self.version <= 0 {
            return Err(PricingError::InvalidVersion(self.version));
        }
        let image = &self.image_generation;
        non_negative("model_creation.base_cost", self.model_creation.base_cost)?;
        non_negative(
            "reference_complexity_multiplier_milli",
            self.model_creation.reference_complexity_multiplier_milli,
        )?;
        non_negative(
            "model_refinement.base_cost",
            self.model_refinement.base_cost,
        )?;
        non_negative(
            "refinement_scope_multiplier_milli",
            self.model_refinement.refinement_scope_multiplier_milli,
        )?;
        non_negative("image_generation.base_cost", image.base_cost)?;
        let multipliers = image.resolution_multipliers_milli.values();
        multipliers
            .chain(image.quality_multipliers_milli.values())
            .try_for_each(|&m| non_negative("image multiplier", m))
    }

    /// Prices any operation.
    pub fn quote(&self, request: &PriceRequest) -> Result<Quote, PricingError> {
        match request {
            PriceRequest::ModelCreation {
                complexity_factor_milli,
            } => {
                let unit = self.model_creation_cost(*complexity_factor_milli)?;
                Ok(self.single(Operation::ModelCreation, unit))
            }
            PriceRequest::ModelRefinement { iteration_count } => {
                let unit = self.model_refinement_cost(*iteration_count)?;
                Ok(self.single(Operation::ModelRefinement, unit))
            }
            PriceRequest::ImageGeneration {
                resolution,
                quality,
                model_complexity_milli,
                count,
            } => {
                let unit = self.image_unit_cost(resolution, quality, *model_complexity_milli)?;
                let amount = image_job_amount(unit, *count)?;
                Ok(Quote {
                    operation: Operation::ImageGeneration,
                    price_version: self.version,
                    unit_price: unit,
                    units: *count,
                    amount,
                })
            }
        }
    }

    /// `base_cost + reference_complexity_multiplier × complexity_factor`, rounded up.
    pub fn model_creation_cost(
        &self,
        complexity_factor_milli: i64,
    ) -> Result<Credits, PricingError> {
        let pricing = &self.model_creation;
        non_negative("complexity_factor_milli", complexity_factor_milli)?;
        unit_price(
            pricing.base_cost,
            pricing.reference_complexity_multiplier_milli,
            complexity_factor_milli,
            MILLI,
        )
    }

    /// `base_cost + refinement_scope_multiplier × iteration_count`, rounded up.
    pub fn model_refinement_cost(&self, iteration_count: i64) -> Result<Credits, PricingError> {
        let pricing = &self.model_refinement;
        non_negative("iteration_count", iteration_count)?;
        unit_price(
            pricing.base_cost,
            pricing.refinement_scope_multiplier_milli,
            iteration_count,
            1,
        )
    }

    /// Per image: `base_cost + (resolution_multiplier + quality_multiplier) ×
    /// model_complexity`, rounded up.
    pub fn image_unit_cost(
        &self,
        resolution: &str,
        quality: &str,
        model_complexity_milli: i64,
    ) -> Result<Credits, PricingError> {
        let pricing = &self.image_generation;
        let resolution_milli = *pricing
            .resolution_multipliers_milli
            .get(resolution)
            .ok_or_else(|| PricingError::UnknownResolution(resolution.to_owned()))?;
        let quality_milli = *pricing
            .quality_multipliers_milli
            .get(quality)
            .ok_or_else(|| PricingError::UnknownQuality(quality.to_owned()))?;
        non_negative("resolution multiplier", resolution_milli)?;
        non_negative("quality multiplier", quality_milli)?;
        non_negative("model_complexity_milli", model_complexity_milli)?;
        let multiplier_milli = resolution_milli
            .checked_add(quality_milli)
            .ok_or(PricingError::Overflow)?;
        unit_price(
            pricing.base_cost,
            multiplier_milli,
            model_complexity_milli,
            MILLI,
        )
    }

    /// A whole image job: `count ×` the rounded per-image price.
    pub fn image_generation_cost(
        &self,
        resolution: &str,
        quality: &str,
        model_complexity_milli: i64,
        count: u32,
    ) -> Result<Credits, PricingError> {
        let unit = self.image_unit_cost(resolution, quality, model_complexity_milli)?;
        image_job_amount(unit, count)
    }

    fn single(&self, operation: Operation, unit: Credits) -> Quote {
        Quote {
            operation,
            price_version: self.version,
            unit_price: unit,
            units: 1,
            amount: unit,
        }
    }
}

fn non_negative(field: &'static str, value: i64) -> Result<(), PricingError> {
    if value < 0 {
        return Err(PricingError::Negative { field, value });
    }
    Ok(())
}

/// `base_cost + ceil(multiplier_milli × factor / (1000 × factor_scale))`, exact in `i128`.
/// `factor_scale` is 1000 for milli-unit factors and 1 for plain counts.
fn unit_price(
    base_cost: i64,
    multiplier_milli: i64,
    factor: i64,
    factor_scale: i64,
) -> Result<Credits, PricingError> {
    non_negative("base_cost", base_cost)?;
    non_negative("multiplier", multiplier_milli)?;
    // Both operands are non-negative i64, so the product is below 2^126 and the sums below
    // cannot overflow i128; only the final narrowing to i64 can fail.
    let numerator = i128::from(multiplier_milli) * i128::from(factor);
    let denominator = i128::from(MILLI) * i128::from(factor_scale);
    let variable = numerator / denominator + i128::from(numerator % denominator != 0);
    let total = i128::from(base_cost) + variable;
    let total = i64::try_from(total).map_err(|_| PricingError::Overflow)?;
    Credits::parse(total).map_err(|_| PricingError::ZeroPrice)
}

fn image_job_amount(unit: Credits, count: u32) -> Result<Credits, PricingError> {
    if count == 0 {
        return Err(PricingError::ZeroCount);
    }
    unit.checked_mul(i64::from(count))
        .map_err(|_| PricingError::Overflow)
}
