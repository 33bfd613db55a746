//! Why a run is not moving: what holds its sends (a kill switch, a change
//! freeze, a closed maintenance window) and whether any worker takes its
//! jobs; which of its targets in flight are held rather than sending, and
//! which locations retry after an error (the workers' notes,
//! `worker::waits`). `run show`, `run watch`, the API's run detail and the
//! console say these, so a stalled run explains itself instead of sitting
//! on "Discovering".

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use protocol::campaign::WindowState;
use protocol::run::RunState;
use serde::{Deserialize, Serialize};
use store::Store as _;
use uuid::Uuid;

use crate::{RunProgress, Scheduler, SchedulerError, now_ms};

/// What kind of thing holds a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HoldKind {
    /// The global or the campaign's kill switch holds every send.
    KillSwitch,
    /// A change freeze holds a campaign that changes hosts.
    Freeze,
    /// The campaign's maintenance windows are closed.
    Window,
    /// Jobs wait in a work queue no worker consumes.
    NoWorker,
    /// Targets in flight whose send a worker holds back.
    Held,
    /// A location's job failed and comes back.
    Retrying,
}

impl HoldKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::KillSwitch => "kill_switch",
            Self::Freeze => "freeze",
            Self::Window => "window",
            Self::NoWorker => "no_worker",
            Self::Held => "held",
            Self::Retrying => "retrying",
        }
    }
}

impl fmt::Display for HoldKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One thing that keeps a run from moving now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hold {
    pub kind: HoldKind,
    /// What it is and what ends it, for the operator.
    pub detail: String,
    /// Since when it has held (Unix ms), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since_ms: Option<u64>,
    /// For `held`: how many targets in flight it holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub targets: Option<u64>,
}

/// Targets in flight that workers hold back now (the rest are sending or
/// running): the `held` holds' targets, at most `in_flight`.
pub fn held_targets(holds: &[Hold], in_flight: u64) -> u64 {
    holds
        .iter()
        .filter(|hold| hold.kind == HoldKind::Held)
        .filter_map(|hold| hold.targets)
        .sum::<u64>()
        .min(in_flight)
}

/// A worker's note as text a terminal shows as it is: no control
/// characters and no bidirectional overrides (notes come from workers; a
/// view never trusts them).
fn printable(text: &str) -> String {
    text.chars()
        .filter(|c| {
            !c.is_control() && !matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
        })
        .collect()
}

/// Locations retrying (and causes of held sends) that a view lists by
/// name; the rest are counted.
const NOTES_LISTED: usize = 5;

impl fmt::Display for Hold {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.detail)?;
        if let Some(since) = self.since_ms {
            let seconds = now_ms().saturating_sub(since) / 1000;
            match seconds {
                0..60 => write!(f, " (for {seconds} s)")?,
                60..3600 => write!(f, " (for {} min {} s)", seconds / 60, seconds % 60)?,
                _ => write!(f, " (for {} h {} min)", seconds / 3600, seconds % 3600 / 60)?,
            }
        }
        Ok(())
    }
}

/// How long the work queues' depths are reused: every view of a run asks
/// (`run watch` twice a second, each console tab every 2 s), the broker once.
const DEPTHS_FRESH: Duration = Duration::from_secs(1);
/// How long a view waits for the broker's answer before saying it cannot tell.
const DEPTHS_TIMEOUT: Duration = Duration::from_secs(2);

/// When this scheduler first saw each job queue hold jobs with no consumer
/// (the "for how long" of a `no_worker` hold, reset once a consumer shows
/// up), and the depths last read.
#[derive(Debug, Default, Clone)]
pub(crate) struct UnconsumedSince {
    since: Arc<Mutex<HashMap<String, u64>>>,
    depths: Arc<tokio::sync::Mutex<Option<DepthsRead>>>,
}

/// The work queues' depths and when they were read.
type DepthsRead = (Instant, Vec<broker::QueueDepth>);

impl UnconsumedSince {
    fn note(&self, queue: &str, unconsumed: bool, now: u64) -> Option<u64> {
        let mut seen = self
            .since
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if unconsumed {
            Some(*seen.entry(queue.to_string()).or_insert(now))
        } else {
            seen.remove(queue);
            None
        }
    }
}

/// States in which a run waits for workers or for its sends to be let through.
fn may_be_held(state: RunState) -> bool {
    matches!(
        state,
        RunState::Pending | RunState::Discovering | RunState::Running | RunState::OutsideWindow
    )
}

impl Scheduler {
    /// What holds the run now; nothing for a finished, paused or cancelled
    /// run (its state says why). A hold that cannot be read is said as such:
    /// an explanation never fails the run's page.
    pub async fn holds(&self, run_id: Uuid, progress: &RunProgress) -> Vec<Hold> {
        if progress.finished {
            return Vec::new();
        }
        let mut holds = match self.store().wait_notes(run_id, now_ms()).await {
            Ok((notes, live)) => {
                let read = notes.len();
                let mut holds = notes_as_holds(notes);
                if live > read {
                    holds.push(Hold {
                        kind: HoldKind::Held,
                        detail: format!(
                            "and {} more waiting job(s) noted than a view reads",
                            live - read
                        ),
                        since_ms: None,
                        targets: None,
                    });
                }
                holds
            }
            Err(error) => vec![unreadable(HoldKind::Held, &error.to_string())],
        };
        if !may_be_held(progress.state) {
            return holds;
        }
        match self.store().kill_reason(&progress.campaign).await {
            Ok(Some(reason)) => holds.push(Hold {
                kind: HoldKind::KillSwitch,
                detail: format!(
                    "a kill switch holds every send of this run ({reason}); `flotilla kill status --campaign {}` says which, `flotilla kill release` releases it",
                    progress.campaign
                ),
                since_ms: None,
                targets: None,
            }),
            Ok(None) => {}
            Err(error) => holds.push(unreadable(HoldKind::KillSwitch, &error.to_string())),
        }
        match self.campaign_holds(run_id).await {
            Ok(found) => holds.extend(found),
            Err(error) => holds.push(unreadable(HoldKind::Freeze, &error.to_string())),
        }
        match self.job_queue_depths().await {
            Ok(depths) => {
                let now = now_ms();
                for depth in depths {
                    let unconsumed = depth.messages > 0 && depth.consumers == 0;
                    let since = self.unconsumed_since.note(&depth.queue, unconsumed, now);
                    if unconsumed {
                        holds.push(Hold {
                            kind: HoldKind::NoWorker,
                            detail: format!(
                                "{} job(s) wait in queue {} and no worker consumes it: start a worker (`flotilla worker`)",
                                depth.messages, depth.queue
                            ),
                            since_ms: since,
                            targets: None,
                        });
                    }
                }
            }
            Err(why) => holds.push(unreadable(HoldKind::NoWorker, &why)),
        }
        holds
    }

    /// The work queues' depths, read at most once a [`DEPTHS_FRESH`] and
    /// waited for at most [`DEPTHS_TIMEOUT`] (a slow broker never stalls a
    /// run's page).
    async fn job_queue_depths(&self) -> Result<Vec<broker::QueueDepth>, String> {
        let mut cached = self.unconsumed_since.depths.lock().await;
        if let Some((read, depths)) = cached.as_ref()
            && read.elapsed() < DEPTHS_FRESH
        {
            return Ok(depths.clone());
        }
        let depths = tokio::time::timeout(DEPTHS_TIMEOUT, self.broker.job_queue_depths())
            .await
            .map_err(|_| {
                format!(
                    "RabbitMQ did not answer within {} s",
                    DEPTHS_TIMEOUT.as_secs()
                )
            })?
            .map_err(|error| error.to_string())?;
        *cached = Some((Instant::now(), depths.clone()));
        Ok(depths)
    }

    /// A change freeze or a closed maintenance window of the run's campaign.
    async fn campaign_holds(&self, run_id: Uuid) -> Result<Vec<Hold>, SchedulerError> {
        let plan = self.plan(run_id).await?;
        let mut holds = Vec::new();
        if let Some(freeze) = self.freeze_of(&plan.campaign).await? {
            holds.push(Hold {
                kind: HoldKind::Freeze,
                detail: format!(
                    "a change freeze holds its sends until {} ({})",
                    millis_to_rfc3339(freeze.to_ms),
                    freeze.reason
                ),
                since_ms: Some(freeze.from_ms),
                targets: None,
            });
        }
        if let Some(WindowState::Closed { opens }) =
            plan.campaign.window_at(protocol::clock::now_utc())
        {
            holds.push(Hold {
                kind: HoldKind::Window,
                detail: match opens {
                    Some(opens) => format!(
                        "outside its maintenance windows: sends wait until {}",
                        opens.to_rfc3339()
                    ),
                    None => "outside its maintenance windows, and none opens again".into(),
                },
                since_ms: None,
                targets: None,
            });
        }
        if plan.campaign.window_tag.is_some() {
            let parked = self
                .ledger()
                .parked_batches(run_id, plan.campaign.windows.len())
                .await?;
            let now = protocol::clock::now_utc();
            for (window, batches) in plan.campaign.windows.iter().zip(parked) {
                if batches == 0 {
                    continue;
                }
                let name = window.name.as_deref().unwrap_or_default();
                holds.push(Hold {
                    kind: HoldKind::Window,
                    detail: match window.state_at(now) {
                        WindowState::Closed { opens: Some(opens) } => format!(
                            "{batches} batch(es) wait for their instances' maintenance window {name:?}, which opens at {}",
                            opens.to_rfc3339()
                        ),
                        WindowState::Closed { opens: None } => format!(
                            "{batches} batch(es) wait for their instances' maintenance window {name:?}, which never opens again"
                        ),
                        WindowState::Open { .. } => format!(
                            "{batches} batch(es) of maintenance window {name:?} are being admitted now that it is open"
                        ),
                    },
                    since_ms: None,
                    targets: None,
                });
            }
        }
        Ok(holds)
    }
}

fn unreadable(kind: HoldKind, why: &str) -> Hold {
    Hold {
        kind,
        detail: format!("cannot tell whether a {kind} holds the run: {why}"),
        since_ms: None,
        targets: None,
    }
}

/// The workers' live notes as holds: one `held` per cause with its targets,
/// one `retrying` per location (the [`NOTES_LISTED`] soonest by name,
/// the rest counted).
fn notes_as_holds(notes: Vec<(String, store::WaitNote)>) -> Vec<Hold> {
    let now = now_ms();
    let mut held: std::collections::BTreeMap<String, u64> = std::collections::BTreeMap::new();
    let mut retrying: Vec<(u64, String, String, String)> = Vec::new();
    for (field, note) in notes {
        match note {
            store::WaitNote::Held { targets, cause, .. } => {
                *held.entry(cause).or_default() += u64::from(targets);
            }
            store::WaitNote::Retrying {
                until_ms,
                job,
                cause,
            } => {
                let location = field.strip_prefix("retry:").unwrap_or(&field).to_string();
                retrying.push((until_ms, location, job, cause));
            }
        }
    }
    let mut held: Vec<(u64, String)> = held.into_iter().map(|(c, t)| (t, c)).collect();
    held.sort_by(|a, b| b.cmp(a));
    let mut holds: Vec<Hold> = Vec::new();
    let mut other_targets = 0;
    for (index, (targets, cause)) in held.into_iter().enumerate() {
        if index >= NOTES_LISTED {
            other_targets += targets;
            continue;
        }
        holds.push(Hold {
            kind: HoldKind::Held,
            detail: format!(
                "{targets} target(s) in flight held back, not sent: {}",
                printable(&cause)
            ),
            since_ms: None,
            targets: Some(targets),
        });
    }
    if other_targets > 0 {
        holds.push(Hold {
            kind: HoldKind::Held,
            detail: format!("{other_targets} more target(s) held back for other causes"),
            since_ms: None,
            targets: Some(other_targets),
        });
    }
    retrying.sort();
    let more = retrying.len().saturating_sub(NOTES_LISTED);
    for (until_ms, location, job, cause) in retrying.into_iter().take(NOTES_LISTED) {
        let next = match until_ms.saturating_sub(now) / 1000 {
            0 => "now".to_string(),
            seconds => format!("in {seconds} s"),
        };
        holds.push(Hold {
            kind: HoldKind::Retrying,
            detail: format!(
                "{} retrying its {} job after: {}; next try {next}",
                printable(&location),
                printable(&job),
                printable(&cause)
            ),
            since_ms: None,
            targets: None,
        });
    }
    if more > 0 {
        holds.push(Hold {
            kind: HoldKind::Retrying,
            detail: format!("and {more} more location(s) retrying"),
            since_ms: None,
            targets: None,
        });
    }
    holds
}

fn millis_to_rfc3339(ms: u64) -> String {
    protocol::job::UnixMillis(ms)
        .to_datetime()
        .map_or_else(|| format!("{ms} ms"), |at| at.to_rfc3339())
}

#[cfg(test)]
mod tests {
    use super::*;
    use store::WaitNote;

    fn held(targets: u32, cause: &str) -> WaitNote {
        WaitNote::Held {
            until_ms: now_ms() + 1_000,
            targets,
            cause: cause.into(),
        }
    }

    #[test]
    fn held_notes_sum_per_cause_and_retries_list_the_soonest_five() {
        let mut notes = vec![
            (
                "held:1".to_string(),
                held(50, "global kill switch engaged: x"),
            ),
            (
                "held:2".to_string(),
                held(20, "global kill switch engaged: x"),
            ),
            ("held:3".to_string(), held(3, "run paused: \u{1b}[31mred")),
        ];
        for n in 0..7u64 {
            notes.push((
                format!("retry:11112222333{n}/us-east-1"),
                WaitNote::Retrying {
                    until_ms: now_ms() + 1_000 * (10 - n),
                    job: "execute".into(),
                    cause: "InternalServerError".into(),
                },
            ));
        }
        let holds = notes_as_holds(notes);
        let held: Vec<&Hold> = holds.iter().filter(|h| h.kind == HoldKind::Held).collect();
        assert_eq!(held.len(), 2);
        assert_eq!(held[0].targets, Some(70), "{held:?}");
        assert!(
            held[0]
                .detail
                .starts_with("70 target(s) in flight held back")
        );
        assert!(
            !held[1].detail.contains('\u{1b}'),
            "no control characters from a worker's note: {:?}",
            held[1].detail
        );
        assert_eq!(held_targets(&holds, 1_000), 73);
        assert_eq!(held_targets(&holds, 60), 60, "never more than in flight");
        let retrying: Vec<&Hold> = holds
            .iter()
            .filter(|h| h.kind == HoldKind::Retrying)
            .collect();
        assert_eq!(retrying.len(), 6, "five by name and a count: {retrying:?}");
        assert!(
            retrying[0].detail.starts_with("111122223336/us-east-1"),
            "soonest first"
        );
        assert_eq!(retrying[5].detail, "and 2 more location(s) retrying");
    }
}
