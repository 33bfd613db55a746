//! Whether a delivery may be worked on at all: its envelope verifies, its
//! signer may issue that kind of job, and it matches what its run recorded
//! (the run contract). A refusal says whether it is for good (dead-letter)
//! or for now (the store could not be read).

use broker::Delivery;
use protocol::Job;
use store::Store;

use crate::Context;

/// A job that may be worked on, and what its run's record said of cancelling.
pub(crate) struct Admitted {
    pub(crate) job: Job,
    /// The run's commands in flight must be cancelled (see `poll`).
    pub(crate) cancel_in_flight: bool,
}

/// Why a delivery is not worked on.
pub(crate) enum Refusal {
    /// Forged, tampered, stale or not what its run recorded: dead-letter it.
    Never {
        reason: &'static str,
        detail: String,
    },
    /// Its run could not be read: bring it back later (to its priority's queue).
    Later {
        error: store::StoreError,
        priority: protocol::job::Priority,
    },
}

/// Opens a delivery and checks it may be worked on: a signature from a key
/// this worker trusts, by a signer allowed to issue this kind of job, and a
/// job that matches what its run recorded when it started.
pub(crate) async fn admit<S: Store>(
    context: &Context<S>,
    delivery: &Delivery,
) -> Result<Admitted, Refusal> {
    let opened = delivery
        .open::<Job>(context.broker.keyring())
        .map_err(|error| Refusal::Never {
            reason: error.reason(),
            detail: error.to_string(),
        })?;
    let job = opened.message;
    if !signer_may_issue(opened.signer, &job) {
        return Err(Refusal::Never {
            reason: "signer_not_allowed",
            detail: format!(
                "a {} job of run {} signed by {} key {:?}: only scheduler keys issue it",
                job.kind(),
                job.run().run_id,
                opened.signer.as_str(),
                opened.key_id
            ),
        });
    }
    let cancel_in_flight = check_run(context, &job).await?;
    Ok(Admitted {
        job,
        cancel_in_flight,
    })
}

/// Checks a job against what its run recorded when it started (the run
/// contract, read now) and returns whether the run's commands in flight must
/// be cancelled.
pub(crate) async fn check_run<S: Store>(context: &Context<S>, job: &Job) -> Result<bool, Refusal> {
    let run_id = job.run().run_id;
    let location = format!("{}/{}", job.location().account_id, job.location().region);
    let never = |reason: &'static str, detail: String| Refusal::Never { reason, detail };
    let reading = match context
        .store
        .run_contract(run_id, &job.run().campaign, &location)
        .await
    {
        Ok(Some(reading)) => reading,
        Ok(None) => {
            return Err(never(
                "unknown_run",
                format!(
                    "a {} job names run {run_id}, which has no record (missing, deleted or forged)",
                    job.kind()
                ),
            ));
        }
        Err(error) if error.is_retryable() => {
            let priority = job.run().priority;
            return Err(Refusal::Later { error, priority });
        }
        Err(error) => return Err(never("run_unreadable", error.to_string())),
    };
    let contract = reading
        .contract
        .as_deref()
        .and_then(protocol::run::RunContract::from_json)
        .ok_or_else(|| {
            never(
                "run_unreadable",
                format!("run {run_id} has no readable job contract"),
            )
        })?;
    if !reading.location_in_run {
        return Err(never(
            "run_mismatch",
            format!(
                "a {} job of run {run_id} names location {location}, which is not one of the run's",
                job.kind()
            ),
        ));
    }
    contract.check(job).map_err(|what| {
        never(
            "run_mismatch",
            format!(
                "a {} job of run {run_id} is not what the run recorded: {what}",
                job.kind()
            ),
        )
    })?;
    Ok(reading.cancel_in_flight)
}

/// Schedulers issue the jobs a run starts with; a worker only derives the
/// next page of a Discover it holds and the Polls of a command it sent.
pub(crate) fn signer_may_issue(signer: protocol::signing::SignerKind, job: &Job) -> bool {
    use protocol::signing::SignerKind;
    match (signer, job) {
        (SignerKind::Scheduler, Job::Discover(_) | Job::Execute(_)) => true,
        (SignerKind::Worker, Job::Poll(_)) => true,
        (SignerKind::Worker, Job::Discover(discover)) => discover.page > 0,
        _ => false,
    }
}
