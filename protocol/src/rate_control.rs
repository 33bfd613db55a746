//! Max concurrency and max errors, as counts or percentages, with SendCommand's rules.
//!
//! Syntax (exactly what SSM's SendCommand accepts):
//! - concurrency: `^([1-9][0-9]*|[1-9][0-9]%|[1-9]%|100%)$` — at least 1 or 1%;
//! - errors: the same plus `0` and `0%`.
//!
//! Rounding, against the total number of targets (or locations) once discovery
//! has counted them:
//! - allowed errors = floor(total × p / 100); the run halts when failures
//!   *exceed* it. 50 targets at `10%` allow 5 failures and halt at the 6th; `0`
//!   halts at the first failure.
//! - concurrency = max(1, floor(total × p / 100)): a percentage never rounds a
//!   run down to nothing in flight.
//!
//! Counts are not clamped to the total: `max_errors: 500` on 50 targets simply never
//! halts the run.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A count or a percentage of a total, as written in a campaign.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum RateValue {
    Count(u64),
    /// 0 to 100.
    Percent(u8),
}

/// What a rate value is used for; the two accept slightly different syntax.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateKind {
    Concurrency,
    Errors,
}

impl RateValue {
    /// Parses a value with SendCommand's rules for `kind`; the error says what is allowed.
    pub fn parse(text: &str, kind: RateKind) -> Result<Self, String> {
        let allowed = match kind {
            RateKind::Concurrency => {
                "must be a count of at least 1 or a percentage from 1% to 100%"
            }
            RateKind::Errors => "must be a count of at least 0 or a percentage from 0% to 100%",
        };
        let invalid = || format!("{allowed}, got {text:?}");
        let (digits, is_percent) = match text.strip_suffix('%') {
            Some(digits) => (digits, true),
            None => (text, false),
        };
        let well_formed = !digits.is_empty()
            && digits.bytes().all(|b| b.is_ascii_digit())
            && (digits == "0" || !digits.starts_with('0'));
        if !well_formed {
            return Err(invalid());
        }
        // AWS caps these strings at 7 characters; longer counts are not real fleets.
        if text.len() > 7 {
            return Err(format!("{allowed} (at most 7 characters), got {text:?}"));
        }
        let number: u64 = digits.parse().map_err(|_| invalid())?;
        if number == 0 && kind == RateKind::Concurrency {
            return Err(invalid());
        }
        if is_percent {
            let percent = u8::try_from(number)
                .ok()
                .filter(|p| *p <= 100)
                .ok_or_else(invalid)?;
            Ok(Self::Percent(percent))
        } else {
            Ok(Self::Count(number))
        }
    }

    /// How many failures are tolerated out of `total`; one more halts the run.
    pub fn allowed_errors(self, total: u64) -> u64 {
        match self {
            Self::Count(count) => count,
            Self::Percent(percent) => percent_of(total, percent),
        }
    }

    /// True when `failures` out of `total` exceed the budget.
    pub fn is_exceeded(self, failures: u64, total: u64) -> bool {
        failures > self.allowed_errors(total)
    }

    /// How many may be in flight at once out of `total`; never less than 1.
    pub fn concurrency(self, total: u64) -> u64 {
        match self {
            Self::Count(count) => count.max(1),
            Self::Percent(percent) => percent_of(total, percent).max(1),
        }
    }
}

/// floor(total × percent / 100), without overflow for any u64 total.
fn percent_of(total: u64, percent: u8) -> u64 {
    let product = u128::from(total) * u128::from(percent) / 100;
    u64::try_from(product).unwrap_or(u64::MAX)
}

impl fmt::Display for RateValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Count(count) => write!(f, "{count}"),
            Self::Percent(percent) => write!(f, "{percent}%"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn concurrency(text: &str) -> RateValue {
        RateValue::parse(text, RateKind::Concurrency).unwrap()
    }

    fn errors(text: &str) -> RateValue {
        RateValue::parse(text, RateKind::Errors).unwrap()
    }

    #[test]
    fn concurrency_accepts_exactly_sendcommands_syntax() {
        for good in [
            "1", "7", "50", "1000", "1234567", "1%", "9%", "10%", "99%", "100%",
        ] {
            assert!(
                RateValue::parse(good, RateKind::Concurrency).is_ok(),
                "{good} should be accepted"
            );
        }
        for bad in [
            "0", "0%", "01", "05%", "101%", "1000%", "-1", "1.5", "%", "", " 1", "1 ", "ten",
            "12345678", "50%%",
        ] {
            let error = RateValue::parse(bad, RateKind::Concurrency).unwrap_err();
            assert!(
                error.contains("at least 1"),
                "{bad:?} should be rejected with the rule, got {error}"
            );
        }
    }

    #[test]
    fn errors_additionally_accept_zero() {
        assert_eq!(errors("0"), RateValue::Count(0));
        assert_eq!(errors("0%"), RateValue::Percent(0));
        assert_eq!(errors("5%"), RateValue::Percent(5));
        assert_eq!(errors("100%"), RateValue::Percent(100));
        for bad in ["00", "00%", "101%", "-0", "x"] {
            assert!(RateValue::parse(bad, RateKind::Errors).is_err(), "{bad}");
        }
    }

    #[test]
    fn fifty_targets_at_ten_percent_halt_at_the_sixth_failure() {
        let budget = errors("10%");
        assert_eq!(budget.allowed_errors(50), 5);
        assert!(!budget.is_exceeded(5, 50));
        assert!(budget.is_exceeded(6, 50));
    }

    #[test]
    fn zero_errors_halts_at_the_first_failure() {
        for budget in [errors("0"), errors("0%")] {
            assert!(!budget.is_exceeded(0, 1000));
            assert!(budget.is_exceeded(1, 1000));
        }
    }

    /// The documented rounding, as a table: (total, value, allowed errors, concurrency).
    #[test]
    fn rounding_table() {
        let table: &[(u64, &str, u64, u64)] = &[
            (1, "1%", 0, 1),
            (1, "10%", 0, 1),
            (1, "50%", 0, 1),
            (1, "100%", 1, 1),
            (3, "1%", 0, 1),
            (3, "10%", 0, 1),
            (3, "33%", 0, 1),
            (3, "34%", 1, 1),
            (3, "50%", 1, 1),
            (3, "67%", 2, 2),
            (3, "100%", 3, 3),
            (10, "1%", 0, 1),
            (10, "5%", 0, 1),
            (10, "10%", 1, 1),
            (10, "25%", 2, 2),
            (10, "99%", 9, 9),
            (10, "100%", 10, 10),
            (50, "1%", 0, 1),
            (50, "2%", 1, 1),
            (50, "10%", 5, 5),
            (50, "33%", 16, 16),
            (50, "100%", 50, 50),
            (1000, "1%", 10, 10),
            (1000, "3%", 30, 30),
            (1000, "10%", 100, 100),
            (1000, "15%", 150, 150),
            (1000, "99%", 990, 990),
            (1000, "100%", 1000, 1000),
        ];
        for &(total, text, want_errors, want_concurrency) in table {
            assert_eq!(
                errors(text).allowed_errors(total),
                want_errors,
                "allowed errors of {text} of {total}"
            );
            assert_eq!(
                concurrency(text).concurrency(total),
                want_concurrency,
                "concurrency of {text} of {total}"
            );
        }
    }

    #[test]
    fn zero_percent_of_anything_allows_no_error_but_concurrency_never_drops_to_zero() {
        assert_eq!(errors("0%").allowed_errors(1_000_000), 0);
        assert_eq!(concurrency("1%").concurrency(0), 1);
        assert_eq!(concurrency("100%").concurrency(0), 1);
    }

    #[test]
    fn counts_are_not_clamped_to_the_total() {
        assert_eq!(errors("500").allowed_errors(50), 500);
        assert_eq!(concurrency("500").concurrency(50), 500);
        assert_eq!(errors("3").allowed_errors(1_000_000), 3);
    }

    #[test]
    fn huge_totals_do_not_overflow() {
        assert_eq!(errors("100%").allowed_errors(u64::MAX), u64::MAX);
        assert_eq!(errors("50%").allowed_errors(u64::MAX), u64::MAX / 2);
    }

    #[test]
    fn display_round_trips() {
        for text in ["0", "1", "50", "0%", "7%", "100%"] {
            assert_eq!(errors(text).to_string(), text);
        }
    }
}
