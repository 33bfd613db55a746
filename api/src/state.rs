//! What every handler shares: the connected scheduler (the engine), the
//! metrics, and the door's settings.

use std::sync::Arc;

use axum::http::StatusCode;
use scheduler::Scheduler;
use tokio::sync::watch;

use crate::error::ApiError;

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

/// Refused credentials recorded one by one, per second (the rest counted).
pub use scheduler::audit::RefusalBudget;
