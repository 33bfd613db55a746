//! What every handler shares: the connected scheduler (the engine), the
//! metrics, and the door's settings.

use std::sync::Arc;

use axum::http::StatusCode;
use scheduler::Scheduler;
use tokio::sync::watch;

use crate::error::ApiError;
use crate::now_ms;

/// The scheduler the API uses: `None` while it reconnects.
pub type CurrentScheduler = watch::Receiver<Option<Scheduler>>;

/// What the handlers share: the connected scheduler, and the metrics, which
/// outlive any one connection (`flotilla_scheduler_connected` says 0 while
/// the scheduler reconnects, and `/metrics` still answers then).
#[derive(Clone)]
pub struct ApiState {
    pub current: CurrentScheduler,
    pub metrics: scheduler::metrics::SchedulerMetrics,
    pub auth: crate::auth::AuthSettings,
    /// HTTPS (and mTLS) when set.
    pub tls: Option<crate::tls::ApiTls>,
    /// Bounds the audit records of refused credentials.
    pub refusals: Arc<RefusalBudget>,
    /// The largest request body read.
    pub max_request_bytes: usize,
    /// Open connections, header and request deadlines.
    pub limits: crate::listen::ConnectionLimits,
}

impl axum::extract::FromRef<ApiState> for CurrentScheduler {
    fn from_ref(state: &ApiState) -> Self {
        state.current.clone()
    }
}

/// The connected scheduler, or a 503 while it reconnects.
pub fn connected(current: &CurrentScheduler) -> Result<Scheduler, ApiError> {
    current.borrow().clone().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the scheduler is reconnecting to RabbitMQ/Redis; try again shortly",
        )
    })
}

/// At most this many refused credentials a second become audit records (per
/// scheduler); the rest are counted in `flotilla_scheduler_auth_refused_total`
/// and logged — a flood of bad tokens must not fill Redis and the disk.
pub const MAX_REFUSAL_RECORDS_PER_SECOND: u32 = 100;

/// The refusals recorded in the current second.
#[derive(Debug, Default)]
pub struct RefusalBudget {
    /// (Unix second, records in it).
    window: std::sync::Mutex<(u64, u32)>,
}

impl RefusalBudget {
    /// True while this second's records stay within the budget.
    pub fn admit(&self) -> bool {
        let second = now_ms() / 1000;
        let mut window = self
            .window
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if window.0 != second {
            *window = (second, 0);
        }
        window.1 = window.1.saturating_add(1);
        window.1 <= MAX_REFUSAL_RECORDS_PER_SECOND
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refused_credentials_are_audited_up_to_a_budget_a_second() {
        // Retried if a second boundary falls inside the loop.
        for _ in 0..3 {
            let budget = RefusalBudget::default();
            let second = now_ms() / 1000;
            let admitted = (0..MAX_REFUSAL_RECORDS_PER_SECOND + 50)
                .filter(|_| budget.admit())
                .count();
            if now_ms() / 1000 == second {
                assert_eq!(admitted, MAX_REFUSAL_RECORDS_PER_SECOND as usize);
                return;
            }
        }
        panic!("three second boundaries in a row");
    }
}
