//! The kill switch as a worker sees it. A watcher task re-reads the global switch
//! every second and at once when Redis pushes a change; execute jobs read the
//! full gate (global, campaign, run state) right before each SendCommand.
//! Whenever Redis cannot be read, mutating calls stop until it can: fail closed.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use store::{GateCause, Store};
use tokio_util::sync::CancellationToken;

use crate::metrics::WorkerMetrics;

/// How often the global switch is re-read even without a push.
pub const REREAD_INTERVAL: Duration = Duration::from_secs(1);

/// Shared by the watcher and every job: why nothing may be sent, while
/// nothing may.
#[derive(Debug, Clone)]
pub struct SafetyState {
    blocked: Arc<Mutex<Option<GateCause>>>,
}

impl Default for SafetyState {
    /// Blocked until the first successful read: a worker that never reached
    /// Redis has no business sending.
    fn default() -> Self {
        Self {
            blocked: Arc::new(Mutex::new(Some(GateCause::StoreUnreachable(
                "not read yet".into(),
            )))),
        }
    }
}

impl SafetyState {
    /// Why nothing may be sent now; `None` when the global switch is clear.
    pub fn blocked(&self) -> Option<GateCause> {
        self.blocked
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn set_blocked(&self, cause: Option<GateCause>) {
        *self.blocked.lock().unwrap_or_else(PoisonError::into_inner) = cause;
    }
}

/// Runs until `shutdown`: keeps `state` and the metrics current, logging changes.
pub async fn watch<S: Store>(
    store: S,
    state: SafetyState,
    metrics: WorkerMetrics,
    shutdown: CancellationToken,
) {
    let mut changes = None;
    let mut last = None;
    loop {
        if changes.is_none() {
            changes = store.watch_kill_changes().await.ok();
        }
        // Campaign names are never empty, so this reads the global switch only.
        let blocked = match store.kill_reason("").await {
            Ok(None) => None,
            Ok(Some(reason)) => Some(GateCause::KillSwitchGlobal(reason)),
            Err(error) => Some(GateCause::StoreUnreachable(error.to_string())),
        };
        metrics.kill_switch(blocked.is_some());
        let unreachable = matches!(blocked, Some(GateCause::StoreUnreachable(_)));
        metrics.connection("redis", !unreachable);
        if last.as_ref() != Some(&blocked) {
            match &blocked {
                None => tracing::info!("kill switch clear: sending allowed"),
                Some(GateCause::StoreUnreachable(error)) => tracing::error!(
                    error = error.as_str(),
                    "redis unreachable: failing closed, no commands are sent until it answers"
                ),
                Some(cause) => tracing::warn!(%cause, "kill switch engaged: no commands are sent"),
            }
            last = Some(blocked.clone());
        }
        state.set_blocked(blocked);
        let pushed = async {
            match changes.as_mut() {
                Some(receiver) => receiver.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(REREAD_INTERVAL) => {}
            message = pushed => {
                if message.is_none() {
                    // The subscription was lost; subscribe again next round.
                    changes = None;
                }
            }
        }
    }
}
