//! Table-driven checks of the three formulas against `PricingConfig::default_v1()`.

use super::*;

fn creation(complexity_factor_milli: i64) -> PriceRequest {
    PriceRequest::ModelCreation {
        complexity_factor_milli,
    }
}

fn refinement(iteration_count: i64) -> PriceRequest {
    PriceRequest::ModelRefinement { iteration_count }
}

fn image(resolution: &str, quality: &str, model_complexity_milli: i64, count: u32) -> PriceRequest {
    PriceRequest::ImageGeneration {
        resolution: resolution.to_owned(),
        quality: quality.to_owned(),
        model_complexity_milli,
        count,
    }
}

#[track_caller]
fn check(config: &PricingConfig, request: PriceRequest, expected: Result<i64, PricingError>) {
    let actual = config.quote(&request).map(|quote| quote.amount.get());
    assert_eq!(actual, expected, "pricing {request:?}");
}

#[test]
fn default_v1_table() {
    let config = PricingConfig::default_v1();
    let table: &[(PriceRequest, Result<i64, PricingError>)] = &[
        // creation: 100 + 50 × complexity
        (creation(0), Ok(100)),
        (creation(1_000), Ok(150)),
        (creation(1_500), Ok(175)),
        (creation(2_000), Ok(200)),
        // 50 × 0.001 = 0.05 → rounds up to 1
        (creation(1), Ok(101)),
        // 50 × 1.019 = 50.95 → 51; 50 × 1.02 = 51 exactly, no rounding
        (creation(1_019), Ok(151)),
        (creation(1_020), Ok(151)),
        // 50 × 1.021 = 51.05 → 52
        (creation(1_021), Ok(152)),
        // refinement: 40 + 10 × iterations
        (refinement(0), Ok(40)),
        (refinement(1), Ok(50)),
        (refinement(7), Ok(110)),
        // image: 2 + (res + quality) × complexity, per image
        (image("512x512", "standard", 1_000, 1), Ok(3)),
        (image("768x768", "standard", 1_000, 1), Ok(4)),
        (image("1024x1024", "standard", 1_000, 1), Ok(6)),
        (image("1024x1024", "hd", 1_000, 1), Ok(8)),
        (image("1024x1024", "hd", 1_000, 4), Ok(32)),
        (image("512x512", "hd", 2_500, 2), Ok(2 * (2 + 8))),
        // 1 × 0.333 = 0.333 → 1 per image; rounding is per image, then × count
        (image("512x512", "standard", 333, 1), Ok(3)),
        (image("512x512", "standard", 333, 3), Ok(9)),
        // zero complexity leaves only the base cost
        (image("512x512", "hd", 0, 1), Ok(2)),
    ];
    for (request, expected) in table {
        check(&config, request.clone(), expected.clone());
    }
}

#[test]
fn rejections() {
    let config = PricingConfig::default_v1();
    let negative = |field, value| Err(PricingError::Negative { field, value });
    let table: &[(PriceRequest, Result<i64, PricingError>)] = &[
        (creation(-1), negative("complexity_factor_milli", -1)),
        (refinement(-3), negative("iteration_count", -3)),
        (
            image("512x512", "standard", -1, 1),
            negative("model_complexity_milli", -1),
        ),
        (
            image("640x480", "standard", 1_000, 1),
            Err(PricingError::UnknownResolution("640x480".into())),
        ),
        (
            image("512x512", "ultra", 1_000, 1),
            Err(PricingError::UnknownQuality("ultra".into())),
        ),
        (
            image("512x512", "standard", 1_000, 0),
            Err(PricingError::ZeroCount),
        ),
        (
            creation(i64::MAX),
            Ok(100 + (50 * (i64::MAX as i128) / 1000) as i64 + 1),
        ),
        (refinement(i64::MAX), Err(PricingError::Overflow)),
        // 6 × 9_223_372_036_854_775.807 = 55_340_232_221_128_654.842 → 655, plus base 2
        (
            image("1024x1024", "hd", i64::MAX, 1),
            Ok(55_340_232_221_128_657),
        ),
        (
            image("1024x1024", "hd", i64::MAX / 6 - 2, u32::MAX),
            Err(PricingError::Overflow),
        ),
    ];
    for (request, expected) in table {
        check(&config, request.clone(), expected.clone());
    }
}

#[test]
fn a_single_unit_can_overflow_with_an_extreme_config() {
    let mut config = PricingConfig::default_v1();
    config
        .image_generation
        .resolution_multipliers_milli
        .insert("huge".into(), i64::MAX);
    // i64::MAX milli-credits × 2000.0 is about 2 × i64::MAX credits.
    check(
        &config,
        image("huge", "standard", 2_000 * MILLI, 1),
        Err(PricingError::Overflow),
    );
    // resolution + quality multipliers themselves overflow
    check(
        &config,
        image("huge", "hd", 1, 1),
        Err(PricingError::Overflow),
    );
}

#[test]
fn zero_price_and_bad_configs_are_errors() {
    let mut config = PricingConfig::default_v1();
    config.model_refinement.base_cost = 0;
    check(&config, refinement(0), Err(PricingError::ZeroPrice));
    assert_eq!(config.validate(), Ok(()));

    config.version = 0;
    assert_eq!(config.validate(), Err(PricingError::InvalidVersion(0)));

    let mut config = PricingConfig::default_v1();
    config
        .image_generation
        .quality_multipliers_milli
        .insert("hd".into(), -1);
    assert!(config.validate().is_err());
    check(
        &config,
        image("512x512", "hd", 1_000, 1),
        Err(PricingError::Negative {
            field: "quality multiplier",
            value: -1,
        }),
    );
    assert_eq!(PricingConfig::default_v1().validate(), Ok(()));
}

#[test]
fn quote_records_version_unit_price_and_units() {
    let quote = PricingConfig::default_v1()
        .quote(&image("1024x1024", "hd", 1_500, 3))
        .unwrap();
    assert_eq!(quote.operation, Operation::ImageGeneration);
    assert_eq!(quote.price_version, 1);
    // 2 + 6 × 1.5 = 11 per image
    assert_eq!(quote.unit_price.get(), 11);
    assert_eq!(quote.units, 3);
    assert_eq!(quote.amount.get(), 33);
}

#[test]
fn config_serializes_for_the_pricing_endpoint() {
    let config = PricingConfig::default_v1();
    let json = serde_json::to_value(&config).unwrap();
    assert_eq!(
        json["image_generation"]["resolution_multipliers_milli"]["1024x1024"],
        4_000
    );
    let back: PricingConfig = serde_json::from_value(json).unwrap();
    assert_eq!(back, config);
}

#[test]
fn the_offered_resolutions_and_qualities_are_the_priced_ones_cheapest_first() {
    let mut config = PricingConfig::default_v1().image_generation;
    assert_eq!(config.resolutions(), ["512x512", "768x768", "1024x1024"]);
    assert_eq!(config.qualities(), ["standard", "hd"]);
    // A price list that adds a resolution offers it, in its price's place.
    config.resolution_multipliers_milli.insert("640x640".into(), 1_200);
    assert_eq!(config.resolutions(), ["512x512", "640x640", "768x768", "1024x1024"]);
}
