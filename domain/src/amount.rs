//! Credit amounts.
//!
//! Owns [`Credits`], a strictly positive number of whole credits, and [`SignedCredits`], a
//! non-zero signed amount used only by manual adjustments. Amounts are `i64`, never floats,
//! and every arithmetic step is checked: an overflow is an [`AmountError`], never a panic
//! and never a silent wrap. Balances (which may be zero) are plain `i64` inside the ledger,
//! where the ledger equation bounds them.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Why a number is not an acceptable amount.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AmountError {
    /// Granting, reserving or spending zero or fewer credits means nothing; refusing it keeps
    /// the ledger free of empty entries.
    #[error("amount must be positive, got {0}")]
    NotPositive(i64),
    /// A zero adjustment changes nothing and would only clutter the audit trail.
    #[error("adjustment amount must not be zero")]
    Zero,
    /// `i64::MIN` has no positive counterpart, so its magnitude cannot be taken.
    #[error("amount {0} is out of range")]
    OutOfRange(i64),
    /// The result does not fit in 64 bits.
    #[error("amount overflows the ledger's 64-bit range")]
    Overflow,
}

/// A strictly positive amount of credits. Deserialization validates too, so a command or
/// event decoded from JSON cannot carry zero or a negative amount.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "i64", into = "i64")]
pub struct Credits(i64);

impl Credits {
    /// Accepts `value > 0`.
    pub fn parse(value: i64) -> Result<Self, AmountError> {
        if value > 0 {
            Ok(Self(value))
        } else {
            Err(AmountError::NotPositive(value))
        }
    }

    /// The number of credits.
    pub const fn get(self) -> i64 {
        self.0
    }

    /// `self + other`, or [`AmountError::Overflow`].
    pub fn checked_add(self, other: Self) -> Result<Self, AmountError> {
        self.0
            .checked_add(other.0)
            .map(Self)
            .ok_or(AmountError::Overflow)
    }

    /// `self × factor` for a positive `factor` (e.g. an image count).
    pub fn checked_mul(self, factor: i64) -> Result<Self, AmountError> {
        let product = self.0.checked_mul(factor).ok_or(AmountError::Overflow)?;
        Self::parse(product)
    }
}

impl TryFrom<i64> for Credits {
    type Error = AmountError;

    fn try_from(value: i64) -> Result<Self, Self::Error> {
        Self::parse(value)
    }
}

impl From<Credits> for i64 {
    fn from(credits: Credits) -> Self {
        credits.0
    }
}

impl fmt::Display for Credits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A non-zero signed amount: positive adds credits, negative removes them. Excludes
/// `i64::MIN` so that [`SignedCredits::magnitude`] always exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "i64", into = "i64")]
pub struct SignedCredits(i64);

impl SignedCredits {
    /// Accepts any `i64` except zero and `i64::MIN`.
    pub fn parse(value: i64) -> Result<Self, AmountError> {
        match value {
            0 => Err(AmountError::Zero),
            i64::MIN => Err(AmountError::OutOfRange(value)),
            _ => Ok(Self(value)),
        }
    }

    /// The signed number of credits.
    pub const fn get(self) -> i64 {
        self.0
    }

    /// Whether this amount removes credits.
    pub const fn is_negative(self) -> bool {
        self.0 < 0
    }

    /// The absolute amount; never fails because zero and `i64::MIN` are excluded.
    pub const fn magnitude(self) -> Credits {
        Credits(self.0.abs())
    }
}

impl TryFrom<i64> for SignedCredits {
    type Error = AmountError;

    fn try_from(value: i64) -> Result<Self, Self::Error> {
        Self::parse(value)
    }
}

impl From<SignedCredits> for i64 {
    fn from(amount: SignedCredits) -> Self {
        amount.0
    }
}

impl fmt::Display for SignedCredits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credits_must_be_positive() {
        assert_eq!(Credits::parse(0), Err(AmountError::NotPositive(0)));
        assert_eq!(Credits::parse(-5), Err(AmountError::NotPositive(-5)));
        assert_eq!(Credits::parse(1).map(Credits::get), Ok(1));
        assert_eq!(Credits::parse(i64::MAX).map(Credits::get), Ok(i64::MAX));
    }

    #[test]
    fn credits_arithmetic_is_checked() {
        let max = Credits::parse(i64::MAX).unwrap();
        let one = Credits::parse(1).unwrap();
        assert_eq!(max.checked_add(one), Err(AmountError::Overflow));
        assert_eq!(max.checked_mul(2), Err(AmountError::Overflow));
        assert_eq!(one.checked_mul(0), Err(AmountError::NotPositive(0)));
        assert_eq!(one.checked_add(one).map(Credits::get), Ok(2));
    }

    #[test]
    fn deserializing_validates() {
        assert!(serde_json::from_str::<Credits>("0").is_err());
        assert!(serde_json::from_str::<Credits>("-1").is_err());
        assert_eq!(serde_json::from_str::<Credits>("7").unwrap().get(), 7);
        assert!(serde_json::from_str::<SignedCredits>("0").is_err());
        assert_eq!(
            serde_json::from_str::<SignedCredits>("-7").unwrap().get(),
            -7
        );
    }

    #[test]
    fn signed_credits_exclude_zero_and_min() {
        assert_eq!(SignedCredits::parse(0), Err(AmountError::Zero));
        assert_eq!(
            SignedCredits::parse(i64::MIN),
            Err(AmountError::OutOfRange(i64::MIN))
        );
        let minus = SignedCredits::parse(-i64::MAX).unwrap();
        assert!(minus.is_negative());
        assert_eq!(minus.magnitude().get(), i64::MAX);
    }
}
