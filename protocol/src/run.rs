//! A run's lifecycle, as the scheduler records it in Redis and workers read it
//! before every mutating call.
//!
//! Pending → Discovering → Running → Completed | Halted | Cancelled, with Paused
//! between Running and the rest. Halted (the error budget), Cancelled and Completed
//! are final: no worker sends another command for the run. A run with a rollout
//! goes Running → Baking (a wave is done; nothing is sent until its bake time
//! has passed and its health gates pass) → AwaitingApproval (when the rollout
//! asks for an approval) → Running (the next wave).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum RunState {
    Pending,
    Discovering,
    Running,
    /// Between two waves of a rollout: the last wave's bake time, then its gates.
    Baking,
    /// Between two waves: the gates passed, an approver has to say go on.
    AwaitingApproval,
    /// Its campaign's maintenance windows are closed: nothing is sent until
    /// the next one opens (commands in flight finish).
    OutsideWindow,
    Paused,
    Completed,
    Halted,
    Cancelled,
}

impl RunState {
    pub const ALL: [Self; 10] = [
        Self::Pending,
        Self::Discovering,
        Self::Running,
        Self::Baking,
        Self::AwaitingApproval,
        Self::OutsideWindow,
        Self::Paused,
        Self::Completed,
        Self::Halted,
        Self::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "Pending",
            Self::Discovering => "Discovering",
            Self::Running => "Running",
            Self::Baking => "Baking",
            Self::AwaitingApproval => "AwaitingApproval",
            Self::OutsideWindow => "OutsideWindow",
            Self::Paused => "Paused",
            Self::Completed => "Completed",
            Self::Halted => "Halted",
            Self::Cancelled => "Cancelled",
        }
    }

    /// A final run never changes state again.
    pub fn is_final(self) -> bool {
        matches!(self, Self::Completed | Self::Halted | Self::Cancelled)
    }

    /// The states a run can be paused from (`Scheduler::pause`; the
    /// console offers Pause only in these).
    pub const PAUSABLE: [Self; 5] = [
        Self::Running,
        Self::Discovering,
        Self::Baking,
        Self::AwaitingApproval,
        Self::OutsideWindow,
    ];

    pub fn may_pause(self) -> bool {
        Self::PAUSABLE.contains(&self)
    }
}

/// May a worker send a command for a run now?
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendDecision {
    Send,
    /// Paused, or a kill switch is engaged: try again later.
    Wait,
    /// The run is over: report the targets as not started.
    NotStarted,
}

impl fmt::Display for RunState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RunState {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|state| state.as_str() == text)
            .ok_or_else(|| {
                let allowed: Vec<&str> = Self::ALL.iter().map(|state| state.as_str()).collect();
                format!(
                    "unknown run state {text:?}; expected one of {}",
                    allowed.join(", ")
                )
            })
    }
}

/// What a run records when it starts about every job it will issue, so that a
/// worker can refuse a job the run did not issue (a forged one, or one whose
/// step, role or limits were changed on the way) before acting on it. Each part
/// is a SHA-256 over the part's JSON: the ExternalId is never stored in clear.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunContract {
    /// The run context: run id, campaign and version, role (name,
    /// ExternalId, session length), API rate limits, priority.
    pub context: String,
    /// The target selection the run discovers with.
    pub targets: String,
    /// Per step, in order: document, parameters, timeout, name.
    pub steps: Vec<String>,
    /// Per-target windows: every window a batch may carry (each named one
    /// and the untagged); empty without `window_tag`, and then no batch
    /// may carry one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub windows: Vec<String>,
}

fn digest<T: Serialize>(value: &T) -> String {
    use sha2::Digest as _;
    let json = serde_json::to_vec(value).unwrap_or_default();
    hex::encode(sha2::Sha256::digest(&json))
}

/// A step's digest. A step without a `document_version` digests as steps
/// did before the field existed, so a run started by an older scheduler
/// keeps its contract across the upgrade.
fn step_digest(step: &crate::campaign::Step) -> String {
    #[derive(Serialize)]
    struct Digested<'a> {
        name: &'a str,
        document: &'a str,
        parameters: &'a std::collections::BTreeMap<String, Vec<String>>,
        timeout: &'a std::time::Duration,
        #[serde(skip_serializing_if = "Option::is_none")]
        document_version: Option<&'a str>,
    }
    digest(&Digested {
        name: &step.name,
        document: &step.document,
        parameters: &step.parameters,
        timeout: &step.timeout,
        document_version: step.document_version.as_deref(),
    })
}

impl RunContract {
    pub fn new(
        context: &crate::job::RunContext,
        targets: &crate::campaign::TargetSelection,
        steps: &[crate::campaign::Step],
        windows: &[crate::job::TargetWindow],
    ) -> Self {
        Self {
            context: digest(context),
            targets: digest(targets),
            steps: steps.iter().map(step_digest).collect(),
            windows: windows.iter().map(digest).collect(),
        }
    }

    /// Reads a contract as the run stored it; `None` if it is not one.
    pub fn from_json(json: &str) -> Option<Self> {
        serde_json::from_str(json).ok()
    }

    /// Whether `job` is one this run issued; the error says what differs
    /// (never the values themselves).
    pub fn check(&self, job: &crate::Job) -> Result<(), String> {
        use crate::Job;
        if digest(job.run()) != self.context {
            return Err(
                "its run context (campaign, version, role, ExternalId, rate limits or priority) differs"
                    .into(),
            );
        }
        let execute = match job {
            Job::Discover(discover) => {
                return if digest(&discover.targets) == self.targets {
                    Ok(())
                } else {
                    Err("its target selection differs".into())
                };
            }
            Job::Execute(execute) => execute,
            Job::Poll(poll) => &poll.execute,
        };
        if let Some(recheck) = &execute.recheck
            && digest(recheck) != self.targets
        {
            return Err("the target selection it re-checks against differs".into());
        }
        let window_allowed = match &execute.window {
            None => self.windows.is_empty(),
            Some(window) => self.windows.contains(&digest(window)),
        };
        if !window_allowed {
            return Err("its maintenance window differs from the run's windows".into());
        }
        let index = usize::from(execute.step_index);
        match self.steps.get(index) {
            None => Err(format!(
                "step {index} does not exist (the run has {})",
                self.steps.len()
            )),
            Some(expected) if *expected != step_digest(&execute.step) => Err(format!(
                "step {index} (document {:?}) differs from the run's step {index}",
                execute.step.document
            )),
            Some(_) => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_step_without_a_document_version_digests_as_before_the_field() {
        let mut step = crate::campaign::Step {
            name: "scan".into(),
            document: "AWS-RunPatchBaseline".into(),
            parameters: [("Operation".to_string(), vec!["Scan".to_string()])].into(),
            timeout: std::time::Duration::from_secs(3600),
            document_version: None,
        };
        // What a scheduler without the field recorded in the run's contract.
        let before = r#"{"name":"scan","document":"AWS-RunPatchBaseline","parameters":{"Operation":["Scan"]},"timeout":{"secs":3600,"nanos":0}}"#;
        use sha2::Digest as _;
        assert_eq!(
            step_digest(&step),
            hex::encode(sha2::Sha256::digest(before.as_bytes()))
        );
        step.document_version = Some("3".into());
        assert_ne!(
            step_digest(&step),
            hex::encode(sha2::Sha256::digest(before.as_bytes())),
            "a version is part of what the run may run"
        );
    }

    #[test]
    fn states_round_trip_through_their_names() {
        for state in RunState::ALL {
            assert_eq!(state.as_str().parse::<RunState>(), Ok(state));
        }
        assert!(
            "Done"
                .parse::<RunState>()
                .unwrap_err()
                .contains("Completed")
        );
    }
}
