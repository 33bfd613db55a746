//! The two-person rule: a campaign version that changes hosts — any step whose
//! document is not on the deployment's read-only list — starts no run until a
//! principal other than its author approves it (SSM Change Manager's rule).
//! The author is whoever applied the version; the approval is recorded beside
//! it, and both go into the audit records of the apply, the approval and every
//! run, so the change, its author, its approver and its runs are linked.
//!
//! The start gate ([`Scheduler::start_run_as`]) checks it for every door —
//! the API, the console, schedules and events;
//! [`Scheduler::start_run_unchecked`] does not (library callers are trusted
//! code).

use std::sync::LazyLock;

use protocol::Campaign;
use protocol::campaign::Step;
use redis::Script;
use serde::{Deserialize, Serialize};

use crate::auth::Principal;
use crate::{Scheduler, SchedulerError, now_ms};

/// A document (and optionally one parameter's value) that only reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadOnlyDocument {
    pub document: String,
    /// `Operation=Scan`: read-only only with this parameter value.
    pub parameter: Option<(String, String)>,
}

impl ReadOnlyDocument {
    /// Only the document's default version: another (`$LATEST`, a number)
    /// may be one that changes hosts, which nobody declared read-only.
    fn covers(&self, step: &Step) -> bool {
        step.document == self.document
            && step
                .document_version
                .as_deref()
                .is_none_or(|version| version == "$DEFAULT")
            && self.parameter.as_ref().is_none_or(|(name, value)| {
                step.parameters
                    .get(name)
                    .is_some_and(|values| values == std::slice::from_ref(value))
            })
    }
}

impl std::str::FromStr for ReadOnlyDocument {
    type Err = String;

    /// `DOCUMENT` or `DOCUMENT:PARAMETER=VALUE`.
    fn from_str(text: &str) -> Result<Self, String> {
        let (document, parameter) = match text.split_once(':') {
            Some((document, parameter)) => {
                let (name, value) = parameter.split_once('=').ok_or_else(|| {
                    format!("{text:?}: write DOCUMENT or DOCUMENT:PARAMETER=VALUE")
                })?;
                (document, Some((name.to_string(), value.to_string())))
            }
            None => (text, None),
        };
        if document.is_empty() {
            return Err(format!("{text:?}: the document name is empty"));
        }
        Ok(Self {
            document: document.to_string(),
            parameter,
        })
    }
}

/// What a deployment treats as read-only unless configured otherwise: a
/// patch scan, nothing else.
pub fn default_read_only_documents() -> Vec<ReadOnlyDocument> {
    vec![ReadOnlyDocument {
        document: protocol::campaign::PATCH_BASELINE_DOCUMENT.into(),
        parameter: Some(("Operation".into(), "Scan".into())),
    }]
}

/// True when some step of `campaign` is not read-only.
pub fn changes_hosts(campaign: &Campaign, read_only: &[ReadOnlyDocument]) -> bool {
    campaign
        .steps
        .iter()
        .any(|step| step_changes_hosts(step, read_only))
}

/// Why a campaign needs a second principal's approval before it runs, if
/// it does: it changes hosts, names outbound URLs (gates, webhooks: the
/// scheduler reaches them on its behalf) or names where its results go.
pub fn approval_needed(
    campaign: &Campaign,
    read_only: &[ReadOnlyDocument],
) -> Option<&'static str> {
    if changes_hosts(campaign, read_only) {
        Some("changes hosts")
    } else if !crate::egress::campaign_urls(campaign).is_empty() {
        Some("names outbound URLs (rollout gates or webhooks)")
    } else if campaign.spec.output.is_some() {
        Some("names an output location")
    } else {
        None
    }
}

/// True when `step` is not read-only.
pub fn step_changes_hosts(step: &Step, read_only: &[ReadOnlyDocument]) -> bool {
    !read_only.iter().any(|document| document.covers(step))
}

/// Who wrote a version and who approved it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Approval {
    pub version: u32,
    pub author: String,
    pub approver: Option<String>,
    pub approved_ms: Option<u64>,
}

static APPROVE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("lua/campaign_approve.lua")));

/// What the approve step found.
pub(crate) enum ApproveOutcome {
    UnknownVersion,
    Approved(Approval),
    AuthorCannotApprove { author: String },
    AuthorMadeTheToken { author: String },
}

impl Scheduler {
    /// The author and approval of a stored version; `None` if there is no
    /// such version.
    pub async fn approval(
        &self,
        name: &str,
        version: u32,
    ) -> Result<Option<Approval>, SchedulerError> {
        let fields: (Option<String>, Option<String>, Option<String>, Option<u64>) = {
            let mut connection = self.ledger.connection();
            redis::cmd("HMGET")
                .arg(self.broker.names().campaign_key(name))
                .arg(format!("v:{version}"))
                .arg(format!("author:{version}"))
                .arg(format!("approver:{version}"))
                .arg(format!("approved_ms:{version}"))
                .query_async(&mut connection)
                .await?
        };
        let (spec, author, approver, approved_ms) = fields;
        Ok(spec.map(|_| Approval {
            version,
            author: author.unwrap_or_default(),
            approver,
            approved_ms,
        }))
    }

    /// Approves a version; the author may not, and a second approval changes
    /// nothing.
    pub async fn approve_campaign(
        &self,
        name: &str,
        version: u32,
        approver: &Principal,
    ) -> Result<Approval, SchedulerError> {
        let outcome = {
            let mut connection = self.ledger.connection();
            let key = self.broker.names().campaign_key(name);
            let (status, author, approved_by, approved_ms): (u8, String, String, u64) = APPROVE
                .key(&key)
                .arg(version)
                .arg(&approver.name)
                .arg(now_ms())
                .arg(approver.issued_by.as_deref().unwrap_or_default())
                .invoke_async(&mut connection)
                .await?;
            connection.replicated(&key).await?;
            match status {
                0 => ApproveOutcome::UnknownVersion,
                3 => ApproveOutcome::AuthorCannotApprove { author },
                4 => ApproveOutcome::AuthorMadeTheToken { author },
                _ => ApproveOutcome::Approved(Approval {
                    version,
                    author,
                    approver: Some(approved_by),
                    approved_ms: Some(approved_ms),
                }),
            }
        };
        match outcome {
            ApproveOutcome::UnknownVersion => Err(SchedulerError::UnknownCampaignVersion {
                name: name.to_string(),
                version,
            }),
            ApproveOutcome::AuthorCannotApprove { author } => {
                Err(SchedulerError::Forbidden(format!(
                    "two-person rule: {author} wrote {name} v{version} and cannot approve it; another approver must"
                )))
            }
            ApproveOutcome::AuthorMadeTheToken { author } => {
                Err(SchedulerError::Forbidden(format!(
                    "two-person rule: {author} wrote {name} v{version} and made the token {} approves with; an approver whose token {author} did not make must",
                    approver.name
                )))
            }
            ApproveOutcome::Approved(approval) => Ok(approval),
        }
    }

    /// Why `campaign` must be approved before it runs here, when the
    /// two-person rule binds. Without authentication there are no principals
    /// to tell apart (every caller is `anonymous`): the rule cannot hold
    /// there, and the threat model says so. Loopback only, unless
    /// --insecure-no-auth.
    pub fn approval_binds(&self, campaign: &Campaign) -> Option<&'static str> {
        if !self.config.authenticated {
            return None;
        }
        approval_needed(campaign, &self.config.read_only_documents)
    }

    /// Refuses to start a run of a version that changes hosts and is not
    /// approved; returns the approval (or the version's author) for the record.
    pub async fn check_approved(
        &self,
        campaign: &Campaign,
        version: u32,
    ) -> Result<Approval, SchedulerError> {
        let approval = self
            .approval(&campaign.name, version)
            .await?
            .ok_or_else(|| SchedulerError::UnknownCampaignVersion {
                name: campaign.name.clone(),
                version,
            })?;
        if let Some(why) = self.approval_binds(campaign)
            && approval.approver.is_none()
        {
            return Err(SchedulerError::NeedsApproval(format!(
                "{} v{version} {why} and has no approval yet; an approver other than its author ({}) must run `flotilla campaign approve {} --version {version}`",
                campaign.name,
                if approval.author.is_empty() {
                    "unknown"
                } else {
                    &approval.author
                },
                campaign.name
            )));
        }
        Ok(approval)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn campaign(document: &str, operation: &str) -> Campaign {
        let yaml = format!(
            "name: c\naccounts: {{ids: [\"123456789012\"]}}\nregions: [us-east-1]\ntargets: {{all: true}}\nsteps:\n  - name: s\n    document: {document}\n    parameters: {{Operation: {operation}}}\n"
        );
        match Campaign::parse(&yaml, protocol::SpecFormat::Yaml) {
            Ok(campaign) => campaign,
            Err(errors) => panic!("{errors}"),
        }
    }

    #[test]
    fn only_a_patch_scan_is_read_only_by_default() {
        let read_only = default_read_only_documents();
        assert!(!changes_hosts(
            &campaign("AWS-RunPatchBaseline", "Scan"),
            &read_only
        ));
        assert!(changes_hosts(
            &campaign("AWS-RunPatchBaseline", "Install"),
            &read_only
        ));
        assert!(changes_hosts(
            &campaign("AWS-RunShellScript", "Scan"),
            &read_only
        ));
        let configured: Vec<ReadOnlyDocument> = vec!["AWS-RunShellScript".parse().unwrap()];
        assert!(!changes_hosts(
            &campaign("AWS-RunShellScript", "Scan"),
            &configured
        ));
        assert!(
            "AWS-RunPatchBaseline:Operation"
                .parse::<ReadOnlyDocument>()
                .is_err()
        );
    }

    /// A read-only document is read-only at its default version only:
    /// `$LATEST` or a number may name one nobody declared read-only.
    #[test]
    fn another_document_version_is_not_read_only() {
        let read_only = default_read_only_documents();
        for (version, changes) in [("$DEFAULT", false), ("$LATEST", true), ("7", true)] {
            let mut scan = campaign("AWS-RunPatchBaseline", "Scan");
            scan.steps[0].document_version = Some(version.into());
            assert_eq!(changes_hosts(&scan, &read_only), changes, "{version}");
        }
    }
}
