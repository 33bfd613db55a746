//! The API's errors: bad input is a 400 naming the field, refusals 403,
//! 404 or 409, outages 503 — each with its message; faults inside the
//! scheduler are a 500 that names only a reference (the cause is logged).

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use scheduler::SchedulerError;
use serde_json::json;

pub struct ApiError {
    pub(crate) status: StatusCode,
    pub(crate) body: serde_json::Value,
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The error and, for an invalid spec, its problems, as one line.
    pub fn message(&self) -> String {
        let mut message = self.body["error"].as_str().unwrap_or_default().to_string();
        if let Some(problems) = self.body["problems"].as_array() {
            for problem in problems.iter().filter_map(|problem| problem.as_str()) {
                message.push_str("; ");
                message.push_str(problem);
            }
        }
        message
    }

    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            body: json!({ "error": message.into() }),
        }
    }
}

impl From<SchedulerError> for ApiError {
    /// Bad input is 400, refusals 403/404/409, outages 503 — each with its
    /// message. Internal faults (and records flotilla cannot read back) are
    /// 500 with a message that names no detail; the detail goes to the log.
    fn from(error: SchedulerError) -> Self {
        let status = match &error {
            SchedulerError::UnknownRun(_)
            | SchedulerError::UnknownCampaignVersion { .. }
            | SchedulerError::UnknownCampaign(_) => StatusCode::NOT_FOUND,
            SchedulerError::Forbidden(_) | SchedulerError::OutOfScope(_) => StatusCode::FORBIDDEN,
            SchedulerError::NeedsApproval(_)
            | SchedulerError::AlertFiring(_)
            | SchedulerError::Frozen(_)
            | SchedulerError::AlreadyRunning(_)
            | SchedulerError::WrongState(_) => StatusCode::CONFLICT,
            SchedulerError::Invalid(_) => StatusCode::BAD_REQUEST,
            SchedulerError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            error if error.is_retryable() => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        if status == StatusCode::INTERNAL_SERVER_ERROR {
            let reference = uuid::Uuid::new_v4();
            tracing::error!(error = %error, %reference, "request failed inside the scheduler");
            return Self::new(
                status,
                format!(
                    "internal error (reference {reference}); the scheduler's log has the cause"
                ),
            );
        }
        Self::new(status, error.to_string())
    }
}

impl From<store::StoreError> for ApiError {
    fn from(error: store::StoreError) -> Self {
        SchedulerError::from(error).into()
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(self.body)).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_internal_fault_is_a_500_that_names_only_a_reference() {
        for fault in [
            SchedulerError::Internal("randomness: the entropy pool is gone".into()),
            SchedulerError::Corrupt("a calendar entry does not parse: secret-ish detail".into()),
        ] {
            let error = ApiError::from(fault);
            assert_eq!(error.status(), StatusCode::INTERNAL_SERVER_ERROR);
            let message = error.message();
            assert!(
                message.starts_with("internal error (reference "),
                "{message}"
            );
            assert!(!message.contains("entropy") && !message.contains("secret-ish"));
        }
        // Bad input still names what is wrong.
        let invalid = ApiError::from(SchedulerError::Invalid("to: must be after from".into()));
        assert_eq!(invalid.status(), StatusCode::BAD_REQUEST);
        assert_eq!(invalid.message(), "to: must be after from");
    }
}
