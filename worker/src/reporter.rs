//! Reports leave a worker in bundles. Every job that reports hands its report
//! to one task per broker connection, which gathers what arrives within
//! [`LINGER`] of the first (up to [`MAX_BUNDLED_REPORTS`], about
//! [`BUNDLE_BYTES`]) and publishes it as one [`Reports`] message: one
//! publish, one signature, one confirm and, at the scheduler, one delivery
//! for all of them. Each job still waits for its own report's confirm before
//! its delivery is acked, so a bundle is as durable as a report sent alone;
//! a failed publish fails every job of the bundle, which comes back as a
//! lost publish always did.

use std::time::Duration;

use broker::{Broker, BrokerError};
use protocol::Report;
use protocol::report::{MAX_BUNDLED_REPORTS, Reports};
use tokio::sync::{mpsc, oneshot};

/// How long the first report of a bundle waits for others. Against the
/// seconds a command takes, nothing; under load, tens of reports a bundle.
pub const LINGER: Duration = Duration::from_millis(20);

/// A bundle closes once its reports' estimated size passes this — well
/// under the envelope's 4 MiB, which one report alone stays under.
pub const BUNDLE_BYTES: usize = 1024 * 1024;

/// Reports queued for the bundling task at most; a job past it waits.
const QUEUED: usize = 1024;

struct Pending {
    report: Report,
    published: oneshot::Sender<Result<(), BrokerError>>,
}

/// The sending side. Dropping it stops the bundling task at once, as a
/// worker's end stops everything it was doing (its jobs are gone by then,
/// and with them whatever they had not seen confirmed).
pub struct Reporter {
    queue: mpsc::Sender<Pending>,
    task: tokio::task::AbortHandle,
}

impl Drop for Reporter {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Reporter {
    /// Starts the bundling task publishing on `broker`.
    pub fn start(broker: Broker) -> Self {
        let (queue, pending) = mpsc::channel(QUEUED);
        let task = tokio::spawn(bundle(broker, pending)).abort_handle();
        Self { queue, task }
    }

    /// Publishes `report` (in a bundle) and returns once RabbitMQ confirmed it.
    pub async fn publish(&self, report: Report) -> Result<(), BrokerError> {
        let (published, confirmed) = oneshot::channel();
        self.queue
            .send(Pending { report, published })
            .await
            .map_err(|_| BrokerError::Closed)?;
        confirmed.await.unwrap_or(Err(BrokerError::Closed))
    }
}

/// A report's size in a bundle, roughly: its output excerpts and ids.
fn estimated_bytes(report: &Report) -> usize {
    match report {
        Report::StepResults(results) => results
            .results
            .iter()
            .map(|result| result.output_excerpt.len() + 160)
            .sum(),
        Report::TargetsDiscovered(discovered) => discovered.targets.len() * 48 + 128,
        Report::LocationFailed(failed) => failed.detail.len() + 128,
    }
}

async fn bundle(broker: Broker, mut pending: mpsc::Receiver<Pending>) {
    while let Some(first) = pending.recv().await {
        let mut bytes = estimated_bytes(&first.report);
        let mut bundle = vec![first];
        let closes = tokio::time::Instant::now() + LINGER;
        while bundle.len() < MAX_BUNDLED_REPORTS && bytes < BUNDLE_BYTES {
            match tokio::time::timeout_at(closes, pending.recv()).await {
                Ok(Some(next)) => {
                    bytes += estimated_bytes(&next.report);
                    bundle.push(next);
                }
                Ok(None) | Err(_) => break,
            }
        }
        let (reports, waiting): (Vec<Report>, Vec<_>) = bundle
            .into_iter()
            .map(|pending| (pending.report, pending.published))
            .unzip();
        let alone = reports.len() == 1;
        let published = broker.publish_reports(&Reports(reports)).await;
        for waiter in waiting {
            let answer = match &published {
                Ok(()) => Ok(()),
                Err(error) => Err(BrokerError::NotPublished {
                    why: error.to_string(),
                    retryable: error.is_retryable() || !alone,
                }),
            };
            // A job that stopped waiting (its task aborted) needs no answer.
            let _ = waiter.send(answer);
        }
    }
}
