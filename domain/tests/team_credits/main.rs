//! TeamCredits behaviour through the crate's public API: given/when/then with cqrs-es's
//! `TestFramework` for every command and every rejection, serialization checks, and a
//! property test over random command sequences. One test binary so the suite links once.

mod adjustments;
mod expiry;
mod grants;
mod open_and_plan;
mod properties;
mod reservations;
mod serialization;
mod support;
