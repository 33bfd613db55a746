//! The consume loop. Urgent deliveries are taken before bulk ones whenever both
//! are waiting; at most `concurrency` jobs run at once (a permit is taken before
//! a delivery is). Each queue's prefetch is `concurrency + held_polls`: an
//! Execute job that sent its command keeps its delivery, without a permit,
//! until its first poll two seconds later (see [`poll_in_place`]), so a worker
//! holds at most that much unacked work.
//!
//! A lost connection is reconnected with backoff; deliveries of the old one go
//! back to their queues. On shutdown the worker stops taking deliveries, lets
//! in-flight jobs finish within the timeout, and leaves the rest unacked for
//! another worker.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use broker::{Broker, BrokerError, Delivery};
use protocol::Job;
use protocol::names::DELAY_STEPS_SECONDS;
use protocol::report::LocationFailure;
use protocol::status::StatusDetail;
use store::Store;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::admission::{Admitted, Refusal, admit, check_run};
use crate::aws::{Aws, AwsErrorKind};
use crate::metrics::WorkerMetrics;
use crate::safety::{self, SafetyState};
use crate::{Context, JobError, JobOutcome, WorkerConfig, discover, execute, poll};

/// Retries of one job after retryable errors before it is dead-lettered.
pub const MAX_JOB_RETRIES: u32 = 8;

/// A job delivered this many times before without being settled is taken off
/// RabbitMQ's count (see `handle_delivery`): below the queues' delivery limit
/// (`broker::topology::DELIVERY_LIMIT`, 5), which dead-letters silently, and
/// above the one return every in-flight job takes when a worker dies.
const RETURNED_TOO_OFTEN: u32 = 2;
const _: () = assert!(
    RETURNED_TOO_OFTEN > 1 && (RETURNED_TOO_OFTEN as i64) < broker::topology::DELIVERY_LIMIT as i64
);

/// How soon a job that met an unreachable Redis tries again.
const STORE_OUTAGE_RECHECK: Duration = Duration::from_secs(2);

/// The delay step of a job's first retry (5 s).
const FIRST_RETRY_STEP: usize = 2;
const _: () = assert!(DELAY_STEPS_SECONDS[FIRST_RETRY_STEP] == 5);

/// Delay before retry `retries` of a job: 5 s, 15 s, 60 s, then 300 s — the
/// delay queues' own steps ([`DELAY_STEPS_SECONDS`] from 5 s), so each
/// retry waits exactly what this says (a delay between steps would be rounded
/// up to the next queue). Eight retries span about 26 minutes.
fn retry_delay(retries: u32) -> Duration {
    let steps = &DELAY_STEPS_SECONDS[FIRST_RETRY_STEP..];
    let index = usize::try_from(retries)
        .unwrap_or(usize::MAX)
        .min(steps.len() - 1);
    Duration::from_secs(u64::from(steps[index]))
}

/// Runs a worker until `shutdown` completes. Returns an error only for bad
/// settings (metrics address in use); broker and Redis outages are waited out.
pub async fn run<S: Store>(
    config: WorkerConfig,
    store: S,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    config
        .keys
        .require_signer(protocol::signing::SignerKind::Worker)?;
    log_keys(&config.keys);
    let metrics = WorkerMetrics::new().context("registering worker metrics")?;
    let aws = Aws::new(&config.aws, metrics.clone()).await;
    if let Err(why) = aws.check_credentials().await {
        anyhow::bail!(
            "{why}. Give the worker an identity that may call sts:AssumeRole on the campaigns' roles: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (any secret for `flotilla sim`), AWS_PROFILE, or an instance/task role"
        );
    }
    // On the clock every service shares before the first job is read.
    store::clock::sync_at_start(&store).await;
    let safety = SafetyState::default();
    let background_stop = CancellationToken::new();
    let mut background = JoinSet::new();
    let (clock_store, clock_stop) = (store.clone(), background_stop.clone());
    background.spawn(async move {
        tokio::select! {
            () = store::clock::keep_in_step(clock_store) => {}
            () = clock_stop.cancelled() => {}
        }
    });
    background.spawn(safety::watch(
        store.clone(),
        safety.clone(),
        metrics.clone(),
        background_stop.clone(),
    ));
    let waits = crate::waits::WaitNotes::default();
    background.spawn(crate::waits::flush(
        store.clone(),
        waits.clone(),
        background_stop.clone(),
    ));
    if let Some(addr) = config.metrics_addr {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding the metrics address {addr}"))?;
        tracing::info!(%addr, "serving /metrics");
        background.spawn(crate::metrics::serve(
            listener,
            metrics.clone(),
            background_stop.clone(),
        ));
    }

    let stop = CancellationToken::new();
    let stop_on_shutdown = stop.clone();
    let shutdown_watch = async move {
        shutdown.await;
        stop_on_shutdown.cancel();
    };
    let consuming = async {
        let mut reconnects = protocol::backoff::Reconnects::default();
        while !stop.is_cancelled() {
            let connected = tokio::select! {
                () = stop.cancelled() => break,
                connected = Broker::connect_with(&config.amqp_url, config.names.clone(), &config.name, &config.amqp_tls) => connected,
            };
            let broker = match connected {
                Ok(broker) => broker.with_keyring(config.keys.clone()),
                Err(error) => {
                    metrics.connection("rabbitmq", false);
                    let delay = reconnects.next_delay(None);
                    tracing::warn!(error = %error, ?delay, "cannot use rabbitmq yet; retrying");
                    tokio::select! {
                        () = stop.cancelled() => break,
                        () = tokio::time::sleep(delay) => continue,
                    }
                }
            };
            metrics.connection("rabbitmq", true);
            tracing::info!(name = config.name.as_str(), "connected to rabbitmq");
            let connected_at = tokio::time::Instant::now();
            let context = Arc::new(Context {
                reports: crate::reporter::Reporter::start(broker.clone()),
                broker,
                store: store.clone(),
                aws: aws.clone(),
                metrics: metrics.clone(),
                safety: safety.clone(),
                waits: waits.clone(),
            });
            if let Err(error) = consume(context, &config, &stop).await {
                metrics.connection("rabbitmq", false);
                // Not at once after a connection that failed soon after it
                // opened: see `Reconnects`.
                let delay = reconnects.next_delay(Some(connected_at.elapsed()));
                tracing::warn!(error = %error, ?delay, "rabbitmq connection lost; reconnecting");
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = tokio::time::sleep(delay) => {}
                }
            }
        }
    };
    tokio::select! {
        () = consuming => {}
        () = shutdown_watch => {}
    }
    // `consuming` ends on `stop`; if the shutdown branch won, finish it too.
    background_stop.cancel();
    while background.join_next().await.is_some() {}
    tracing::info!("worker stopped");
    Ok(())
}

/// Consumes until `stop` (then drains and returns Ok) or until the connection fails.
async fn consume<S: Store>(
    context: Arc<Context<S>>,
    config: &WorkerConfig,
    stop: &CancellationToken,
) -> Result<(), BrokerError> {
    let names = context.broker.names().clone();
    let concurrency = config.concurrency.get();
    let prefetch = concurrency.saturating_add(config.held_polls);
    let mut urgent = context
        .broker
        .consume(
            &names.urgent_queue(),
            prefetch,
            &format!("{}-urgent", config.name),
        )
        .await?;
    let mut bulk = context
        .broker
        .consume(
            &names.bulk_queue(),
            prefetch,
            &format!("{}-bulk", config.name),
        )
        .await?;
    // Every worker moves delayed jobs back when they are due (see
    // `broker::delay`): as many pumps as workers, none to configure.
    let pumps_stop = stop.child_token();
    let mut pumps = JoinSet::new();
    for delay in broker::delay::job_delay_queues(&names) {
        let tag = format!("{}-{}", config.name, delay.queue);
        pumps.spawn(broker::delay::pump(
            context.broker.clone(),
            delay,
            tag,
            pumps_stop.clone(),
        ));
    }
    let permits = Arc::new(Semaphore::new(usize::from(concurrency)));
    let holds = Arc::new(Semaphore::new(usize::from(prefetch - concurrency)));
    // Dropping the set aborts its jobs: a worker whose task is aborted stops
    // everything it was doing, like a killed process.
    let mut jobs = JoinSet::new();
    let lost = loop {
        while jobs.try_join_next().is_some() {}
        let permit = tokio::select! {
            () = stop.cancelled() => break None,
            permit = permits.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_closed) => break None,
            },
        };
        let delivery = tokio::select! {
            biased;
            () = stop.cancelled() => break None,
            Some(pumped) = pumps.join_next() => {
                break Some(match pumped {
                    Ok(Err(error)) => error,
                    Ok(Ok(())) | Err(_) => BrokerError::Closed,
                });
            }
            delivery = urgent.next() => delivery,
            delivery = bulk.next() => delivery,
        };
        match delivery {
            Some(Ok(delivery)) => {
                let context = context.clone();
                let slots = Slots {
                    permit,
                    permits: permits.clone(),
                    holds: holds.clone(),
                    stop: stop.clone(),
                };
                jobs.spawn(async move { handle_delivery(&context, delivery, slots).await });
            }
            Some(Err(error)) => break Some(error),
            None => {
                break Some(BrokerError::Unroutable(
                    "consumer closed by the broker".into(),
                ));
            }
        }
    };
    pumps_stop.cancel();
    while pumps.join_next().await.is_some() {}
    if let Some(error) = lost {
        return Err(error);
    }
    // Shutdown: no new deliveries; what was prefetched but not started stays
    // unacked and returns to the queue when the connection closes.
    let _ = urgent.cancel().await;
    let _ = bulk.cancel().await;
    let in_flight = jobs.len();
    tracing::info!(in_flight, "shutting down: finishing in-flight jobs");
    let drained = tokio::time::timeout(config.shutdown_timeout, async {
        while jobs.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            unfinished = jobs.len(),
            "shutdown timeout: unfinished jobs go back to the queue"
        );
        jobs.abort_all();
    }
    context.broker.close().await;
    Ok(())
}

/// What a delivery's task holds and may take: its permit to run, the
/// worker's permits and hold slots (for [`poll_in_place`]), the stop signal.
struct Slots {
    permit: OwnedSemaphorePermit,
    permits: Arc<Semaphore>,
    holds: Arc<Semaphore>,
    stop: CancellationToken,
}

async fn handle_delivery<S: Store>(context: &Context<S>, delivery: Delivery, slots: Slots) {
    context.metrics.job_started();
    match admit(context, &delivery).await {
        Ok(Admitted {
            job,
            cancel_in_flight,
        }) => {
            let returned = delivery.earlier_deliveries();
            let outcome = match job.clone() {
                // Before RabbitMQ's delivery limit dead-letters it unreported
                // (and its run waits for it forever), the job goes round
                // again as a new message, spending one of its own retries;
                // once those are spent it is reported failed.
                _ if returned >= RETURNED_TOO_OFTEN => Err(JobError::Returned(returned)),
                Job::Discover(discover) => discover::handle(context, discover).await,
                Job::Execute(execute) => execute::handle(context, execute).await,
                Job::Poll(poll) => poll::handle(context, poll, cancel_in_flight).await,
            };
            match outcome {
                Ok(JobOutcome::Continue { next, delay })
                    if matches!(job, Job::Execute(_)) && delay <= MAX_HOLD =>
                {
                    poll_in_place(context, delivery, (&job, *next), delay, slots).await;
                }
                outcome => {
                    settle_delivery(context, delivery, &job, Resend::Delivery, outcome).await;
                }
            }
        }
        Err(Refusal::Later { error, priority }) => {
            // Redis unreadable: whether the job matches its run is unknown.
            tracing::warn!(error = %error, "redis unreachable; job waits");
            context.metrics.job_handled("unknown", "waiting");
            let retries = delivery.retries();
            let deferred = context
                .broker
                .defer_job(&delivery, priority, STORE_OUTAGE_RECHECK, retries)
                .await;
            let settled = match deferred {
                Ok(()) => delivery.ack().await,
                Err(_) => delivery.requeue().await,
            };
            if let Err(error) = settled {
                tracing::warn!(error = %error, "could not settle a delivery");
            }
        }
        Err(Refusal::Never { reason, detail }) => {
            // Never acted on: not reported to the run either (a forged job's
            // run id cannot be trusted to name a run that should hear of it).
            tracing::error!(
                message = %delivery.fingerprint(),
                reason,
                detail,
                "job refused and dead-lettered without being acted on"
            );
            context.metrics.message_rejected(reason);
            context.metrics.job_handled("unknown", "rejected");
            if let Err(error) = delivery.dead_letter().await {
                tracing::warn!(error = %error, "could not dead-letter a delivery");
            }
        }
    }
    context.metrics.job_finished();
}

/// The longest first poll a job waits for in the worker rather than in a
/// delay queue: the first poll's own delay.
const MAX_HOLD: Duration = execute::FIRST_POLL;

/// A command was just sent and its first poll is due in `delay`. Through a
/// delay queue that poll would cost two more publishes, deliveries and acks
/// (into the delay queue, back to the work queue) and another admission; here
/// the worker keeps the Execute delivery unacked, gives its permit back while
/// it waits, and polls itself. Durability is the delivery's: a worker that
/// dies while holding it hands it back, and the Execute job's send record
/// (the command it sent) turns the redelivery into the same first poll —
/// nothing is sent twice. The poll runs as a delivered one would: the run is
/// read again first (a kill switch engaged meanwhile cancels the command),
/// and whatever it cannot finish now (tokens, retries, a command still
/// running) goes on as a Poll job through the delay queues. With every hold
/// slot taken, or on shutdown, the poll goes through a delay queue at once.
async fn poll_in_place<S: Store>(
    context: &Context<S>,
    delivery: Delivery,
    (execute, poll): (&Job, Job),
    delay: Duration,
    slots: Slots,
) {
    let through_queue = |delay| {
        Ok(JobOutcome::Continue {
            next: Box::new(poll.clone()),
            delay,
        })
    };
    let Ok(hold) = slots.holds.clone().try_acquire_owned() else {
        let outcome = through_queue(delay);
        return settle_delivery(context, delivery, execute, Resend::Delivery, outcome).await;
    };
    drop(slots.permit);
    context.metrics.job_handled(execute.kind(), "held");
    let stopped = tokio::select! {
        () = slots.stop.cancelled() => true,
        () = tokio::time::sleep(delay) => false,
    };
    let permit = match stopped {
        false => slots.permits.acquire_owned().await.ok(),
        true => None,
    };
    let Some(permit) = permit else {
        let outcome = through_queue(Duration::ZERO);
        return settle_delivery(context, delivery, execute, Resend::Delivery, outcome).await;
    };
    drop(hold);
    let outcome = match (check_run(context, &poll).await, poll.clone()) {
        (Ok(cancel_in_flight), Job::Poll(job)) => {
            poll::handle(context, job, cancel_in_flight).await
        }
        // Whatever kept the run from being read, a delivered poll meets it
        // too, and is refused or waits there as every delivery does.
        _ => through_queue(Duration::ZERO),
    };
    settle_delivery(context, delivery, &poll, Resend::Job, outcome).await;
    drop(permit);
}

/// What goes back to a queue when a job is deferred or retried.
#[derive(Clone, Copy)]
enum Resend {
    /// The delivery, as it came (its signature stays), with its retries.
    Delivery,
    /// The job the worker took on from the delivery (a poll in place),
    /// signed by this worker, starting with no retries.
    Job,
}

/// The one place a delivery is settled: acked once whatever it produced is
/// safely published; brought back later through a delay queue; or dead-lettered.
async fn settle_delivery<S: Store>(
    context: &Context<S>,
    delivery: Delivery,
    job: &Job,
    resend: Resend,
    outcome: Result<JobOutcome, JobError>,
) {
    let kind = job.kind();
    let broker = &context.broker;
    let retries = match resend {
        Resend::Delivery => delivery.retries(),
        Resend::Job => 0,
    };
    let deferred = |delay, retries| defer(broker, &delivery, job, resend, delay, retries);
    let (label, published) = match outcome {
        Ok(JobOutcome::Done) => ("done", Ok(())),
        Ok(JobOutcome::Continue { next, delay }) => {
            ("continued", broker.publish_job_after(&next, delay).await)
        }
        Ok(JobOutcome::Wait { delay, reason }) => {
            tracing::debug!(kind, reason, "job waits");
            ("waiting", deferred(delay, retries).await)
        }
        Err(JobError::Aws(error)) if error.kind == AwsErrorKind::ExpiredCredentials => {
            tracing::info!(kind, "role session expired; assuming the role again");
            context.aws.forget_session(job.run(), job.location());
            ("waiting", deferred(Duration::from_secs(1), retries).await)
        }
        // Redis out of reach: waiting is all that can be done, and an outage
        // must not use up a job's retries (the job would be dead-lettered).
        Err(JobError::Store(error)) if error.is_retryable() => {
            tracing::warn!(kind, error = %error, "redis unreachable; job waits");
            ("waiting", deferred(STORE_OUTAGE_RECHECK, retries).await)
        }
        Err(error) if error.is_retryable() && retries < MAX_JOB_RETRIES => {
            let delay = retry_delay(retries);
            tracing::warn!(kind, retries, ?delay, error = %error, "job failed; retrying later");
            let next_ms = crate::now_ms()
                .saturating_add(u64::try_from(delay.as_millis()).unwrap_or(u64::MAX));
            context.waits.retrying(job, next_ms, &error.to_string());
            ("retried", deferred(delay, retries + 1).await)
        }
        Err(error) => {
            tracing::error!(kind, retries, error = %error, "job failed for good; dead-lettering it");
            // The run must hear of it, or it would wait for this job forever.
            let reported = match job {
                Job::Discover(discover) => {
                    let reason = if error.is_retryable() {
                        LocationFailure::RetriesExhausted
                    } else {
                        LocationFailure::Rejected
                    };
                    discover::fail_location(context, discover, reason, error.to_string())
                        .await
                        .map(|_| ())
                }
                // Whether the step ran is unknown: it counts as failed (the safe
                // side of the error budget), with the reason in the output.
                Job::Execute(execute) => {
                    let detail = format!("flotilla gave up on this batch: {error}");
                    execute::report_all(context, execute, StatusDetail::Failed, &detail).await
                }
                Job::Poll(poll) => {
                    let detail = format!("flotilla could not read the command's outcome: {error}");
                    execute::report_all(context, &poll.execute, StatusDetail::Failed, &detail).await
                }
            };
            if let Err(error) = reported {
                tracing::warn!(error = %error, "could not report the abandoned job");
            }
            context.metrics.job_handled(kind, "dead_lettered");
            if let Err(error) = delivery.dead_letter().await {
                tracing::warn!(error = %error, "could not dead-letter a delivery");
            }
            return;
        }
    };
    context.metrics.job_handled(kind, label);
    let settled = match published {
        Ok(()) => delivery.ack().await,
        Err(error) => {
            // Nothing is lost: the job itself goes back to its queue.
            tracing::warn!(kind, error = %error, "could not publish a job's follow-up; requeueing the job");
            delivery.requeue().await
        }
    };
    if let Err(error) = settled {
        tracing::warn!(kind, error = %error, "could not settle a delivery; the broker will redeliver it");
    }
}

/// Sends a job back to its queue after `delay` (see [`Resend`]).
async fn defer(
    broker: &Broker,
    delivery: &Delivery,
    job: &Job,
    resend: Resend,
    delay: Duration,
    retries: u32,
) -> Result<(), BrokerError> {
    match resend {
        Resend::Delivery => {
            broker
                .defer_job(delivery, job.run().priority, delay, retries)
                .await
        }
        Resend::Job => broker.defer_new_job(job, delay, retries).await,
    }
}

/// Which key this worker signs with and which it trusts (ids only), so an
/// operator rotating keys can see each service's view.
fn log_keys(keys: &protocol::signing::Keyring) {
    let trusted: Vec<String> = keys
        .trusted_ids()
        .into_iter()
        .map(|(kind, id)| format!("{}:{id}", kind.as_str()))
        .collect();
    tracing::info!(
        signing_as = keys.signer().map(|signer| signer.id.as_str()),
        ?trusted,
        max_age = ?keys.max_age,
        "message keys loaded"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_and_are_capped() {
        assert_eq!(retry_delay(0), Duration::from_secs(5));
        assert_eq!(retry_delay(2), Duration::from_secs(60));
        assert_eq!(retry_delay(MAX_JOB_RETRIES), Duration::from_secs(300));
        // Each is a delay queue's own step, so nothing is rounded up.
        for retries in 0..=MAX_JOB_RETRIES {
            let seconds = u32::try_from(retry_delay(retries).as_secs()).unwrap();
            assert!(DELAY_STEPS_SECONDS.contains(&seconds), "{seconds}");
        }
    }
}
