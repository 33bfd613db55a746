//! Per-target outcomes in SSM's own vocabulary, and which of them spend the error budget.
//!
//! SSM reports a command invocation as a `Status` (Pending, InProgress, Success,
//! Failed, …) and a finer `StatusDetails` (DeliveryTimedOut, Undeliverable, …).
//! Which details count against MaxErrors follows SSM's documentation
//! ("Understanding command statuses"): execution failures and execution timeouts
//! count; delivery timeouts, undeliverable targets, access denied and invalid
//! platform do not, because nothing ran. flotilla adds `NotStarted` for targets a
//! halted or cancelled run never sent to.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// SSM's CommandInvocationStatus, plus flotilla's `NotStarted`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum InvocationStatus {
    Pending,
    InProgress,
    Delayed,
    Success,
    Cancelling,
    Cancelled,
    TimedOut,
    Failed,
    /// The run halted or was cancelled before this target was sent the step.
    NotStarted,
}

impl InvocationStatus {
    pub const ALL: [Self; 9] = [
        Self::Pending,
        Self::InProgress,
        Self::Delayed,
        Self::Success,
        Self::Cancelling,
        Self::Cancelled,
        Self::TimedOut,
        Self::Failed,
        Self::NotStarted,
    ];

    /// A terminal status will not change again; the target has a result.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Self::Success | Self::Cancelled | Self::TimedOut | Self::Failed | Self::NotStarted
        )
    }

    /// SSM's spelling, as in its API and console; flotilla's own `NotStarted`
    /// is spelled "Not Started" here as in [`StatusDetail`], one spelling
    /// everywhere (API, results files, reports, metrics).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "Pending",
            Self::InProgress => "InProgress",
            Self::Delayed => "Delayed",
            Self::Success => "Success",
            Self::Cancelling => "Cancelling",
            Self::Cancelled => "Cancelled",
            Self::TimedOut => "TimedOut",
            Self::Failed => "Failed",
            Self::NotStarted => "Not Started",
        }
    }
}

/// SSM's StatusDetails of an invocation, plus flotilla's `NotStarted`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum StatusDetail {
    Pending,
    InProgress,
    Delayed,
    Success,
    DeliveryTimedOut,
    ExecutionTimedOut,
    Failed,
    Cancelled,
    Undeliverable,
    Terminated,
    InvalidPlatform,
    AccessDenied,
    NotStarted,
}

impl StatusDetail {
    pub const ALL: [Self; 13] = [
        Self::Pending,
        Self::InProgress,
        Self::Delayed,
        Self::Success,
        Self::DeliveryTimedOut,
        Self::ExecutionTimedOut,
        Self::Failed,
        Self::Cancelled,
        Self::Undeliverable,
        Self::Terminated,
        Self::InvalidPlatform,
        Self::AccessDenied,
        Self::NotStarted,
    ];

    /// The coarse status SSM pairs with this detail.
    pub fn status(self) -> InvocationStatus {
        match self {
            Self::Pending => InvocationStatus::Pending,
            Self::InProgress => InvocationStatus::InProgress,
            Self::Delayed => InvocationStatus::Delayed,
            Self::Success => InvocationStatus::Success,
            Self::DeliveryTimedOut | Self::ExecutionTimedOut => InvocationStatus::TimedOut,
            Self::Cancelled => InvocationStatus::Cancelled,
            Self::Failed
            | Self::Undeliverable
            | Self::Terminated
            | Self::InvalidPlatform
            | Self::AccessDenied => InvocationStatus::Failed,
            Self::NotStarted => InvocationStatus::NotStarted,
        }
    }

    pub fn is_terminal(self) -> bool {
        self.status().is_terminal()
    }

    /// True when this outcome spends the run's error budget (SSM's MaxErrors rules).
    pub fn counts_against_error_budget(self) -> bool {
        matches!(self, Self::Failed | Self::ExecutionTimedOut)
    }

    /// SSM's spelling (with its spaces, e.g. "Delivery Timed Out").
    pub fn as_ssm_str(self) -> &'static str {
        match self {
            Self::Pending => "Pending",
            Self::InProgress => "In Progress",
            Self::Delayed => "Delayed",
            Self::Success => "Success",
            Self::DeliveryTimedOut => "Delivery Timed Out",
            Self::ExecutionTimedOut => "Execution Timed Out",
            Self::Failed => "Failed",
            Self::Cancelled => "Cancelled",
            Self::Undeliverable => "Undeliverable",
            Self::Terminated => "Terminated",
            Self::InvalidPlatform => "Invalid Platform",
            Self::AccessDenied => "Access Denied",
            Self::NotStarted => "Not Started",
        }
    }
}

impl fmt::Display for StatusDetail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_ssm_str())
    }
}

impl fmt::Display for InvocationStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for StatusDetail {
    type Err = String;

    /// Reads SSM's spelling, with or without spaces ("Delivery Timed Out" or
    /// "DeliveryTimedOut").
    fn from_str(text: &str) -> Result<Self, String> {
        let squeezed: String = text.chars().filter(|c| !c.is_whitespace()).collect();
        Self::ALL
            .into_iter()
            .find(|detail| detail.as_ssm_str().replace(' ', "") == squeezed)
            .ok_or_else(|| format!("unknown SSM status detail {text:?}"))
    }
}

impl FromStr for InvocationStatus {
    type Err = String;

    /// Also reads "NotStarted", as results files written before 0.2 spell it.
    fn from_str(text: &str) -> Result<Self, String> {
        if text == "NotStarted" {
            return Ok(Self::NotStarted);
        }
        Self::ALL
            .into_iter()
            .find(|status| status.as_str() == text)
            .ok_or_else(|| format!("unknown SSM invocation status {text:?}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_execution_failures_spend_the_error_budget() {
        let spending: Vec<StatusDetail> = StatusDetail::ALL
            .into_iter()
            .filter(|d| d.counts_against_error_budget())
            .collect();
        assert_eq!(
            spending,
            [StatusDetail::ExecutionTimedOut, StatusDetail::Failed]
        );
    }

    #[test]
    fn details_map_to_ssms_coarse_status() {
        assert_eq!(
            StatusDetail::DeliveryTimedOut.status(),
            InvocationStatus::TimedOut
        );
        assert_eq!(
            StatusDetail::Undeliverable.status(),
            InvocationStatus::Failed
        );
        assert_eq!(
            StatusDetail::AccessDenied.status(),
            InvocationStatus::Failed
        );
        assert!(!StatusDetail::InProgress.is_terminal());
        assert!(StatusDetail::Terminated.is_terminal());
        assert!(StatusDetail::NotStarted.is_terminal());
        // One spelling of flotilla's own status, coarse or detailed.
        assert_eq!(
            StatusDetail::NotStarted.status().as_str(),
            StatusDetail::NotStarted.as_ssm_str()
        );
        assert_eq!(
            "NotStarted".parse::<InvocationStatus>(),
            Ok(InvocationStatus::NotStarted)
        );
    }

    #[test]
    fn ssm_spellings_parse_back() {
        for detail in StatusDetail::ALL {
            assert_eq!(detail.as_ssm_str().parse::<StatusDetail>(), Ok(detail));
        }
        assert_eq!(
            "DeliveryTimedOut".parse(),
            Ok(StatusDetail::DeliveryTimedOut)
        );
        assert!("Exploded".parse::<StatusDetail>().is_err());
        for status in InvocationStatus::ALL {
            assert_eq!(status.as_str().parse::<InvocationStatus>(), Ok(status));
        }
    }
}
