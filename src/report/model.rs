//! A run's report as data: totals by status, per account and region, the
//! non-compliant instances (worst first) and the most common failures,
//! built from the results files' records.

use std::collections::BTreeMap;

use scheduler::sink::ResultRecord;
use serde::Serialize;
use uuid::Uuid;

#[derive(Debug, Serialize, PartialEq)]
pub struct Report {
    pub run_id: Uuid,
    /// What ran, who started it, when: from the results, and from the
    /// scheduler when it answers ([`Report::with_run`]).
    pub header: Header,
    pub results: usize,
    /// step → status detail → targets
    pub by_status: BTreeMap<String, BTreeMap<String, u64>>,
    /// `account/region` → status detail → targets (every step)
    pub by_location: BTreeMap<String, BTreeMap<String, u64>>,
    pub non_compliant: Vec<NonCompliant>,
    pub top_failures: Vec<FailureGroup>,
}

/// A report's heading facts; `None` where neither the results nor the
/// scheduler say.
#[derive(Debug, Default, Serialize, PartialEq)]
pub struct Header {
    pub campaign: String,
    pub campaign_version: Option<u32>,
    /// The steps' documents, in step order.
    pub documents: Vec<String>,
    pub started_by: Option<String>,
    /// The first command's request and the last result's end (Unix ms).
    pub started_ms: Option<u64>,
    pub ended_ms: Option<u64>,
}

impl Header {
    /// How long from the first request to the last result, when both are known.
    pub fn duration(&self) -> Option<std::time::Duration> {
        Some(std::time::Duration::from_millis(
            self.ended_ms?.checked_sub(self.started_ms?)?,
        ))
    }
}

#[derive(Debug, Serialize, PartialEq)]
pub struct NonCompliant {
    pub instance_id: String,
    pub account_id: String,
    pub region: String,
    pub missing: u32,
    pub failed: u32,
    pub pending_reboot: u32,
    pub critical: u32,
    pub security: u32,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct FailureGroup {
    pub status: String,
    /// The first line of the output, which names the failure in most documents.
    pub detail: String,
    pub targets: u64,
}

const TOP_FAILURES: usize = 10;

impl Report {
    /// Adds what the scheduler knows of the run: its campaign's version and
    /// documents, who started it and when it was made.
    pub fn with_run(mut self, detail: &api::json::RunDetail) -> Self {
        let progress = &detail.progress;
        if self.header.campaign.is_empty() {
            self.header.campaign = progress.campaign.clone();
        }
        self.header.campaign_version = progress.campaign_version;
        self.header.documents = detail
            .steps
            .iter()
            .map(|step| step.document.clone())
            .collect();
        if !progress.started_by.is_empty() {
            self.header.started_by = Some(progress.started_by.clone());
        }
        // The run's own start and end, by one clock, when the scheduler
        // recorded its end: the results' times are the hosts' (or the
        // simulator's accelerated ones), not to be mixed with the run's.
        if let (Some(ended), true) = (progress.ended_ms, progress.created_ms > 0) {
            self.header.started_ms = Some(progress.created_ms);
            self.header.ended_ms = Some(ended);
        } else if self.header.started_ms.is_none() && progress.created_ms > 0 {
            self.header.started_ms = Some(progress.created_ms);
        }
        self
    }

    /// The report as JSON for scripts: nested objects, never joined keys.
    pub fn json(&self) -> serde_json::Value {
        let steps: Vec<serde_json::Value> = self
            .by_status
            .iter()
            .map(|(step, statuses)| {
                let (index, name) = step.split_once(' ').unwrap_or((step, ""));
                serde_json::json!({
                    "index": index.parse::<u16>().ok(),
                    "name": name,
                    "statuses": statuses,
                })
            })
            .collect();
        let locations: Vec<serde_json::Value> = self
            .by_location
            .iter()
            .map(|(location, statuses)| {
                let (account_id, region) = location.split_once('/').unwrap_or((location, ""));
                serde_json::json!({
                    "account_id": account_id,
                    "region": region,
                    "statuses": statuses,
                })
            })
            .collect();
        serde_json::json!({
            "run_id": self.run_id,
            "header": self.header,
            "results": self.results,
            "steps": steps,
            "locations": locations,
            "non_compliant": self.non_compliant,
            "top_failures": self.top_failures,
        })
    }
}

pub fn build(run_id: Uuid, records: &[ResultRecord]) -> Report {
    let mut by_status: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
    let mut by_location: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
    let mut non_compliant = Vec::new();
    for record in records {
        let step = format!("{} {}", record.step_index, record.step);
        *by_status
            .entry(step)
            .or_default()
            .entry(record.status_detail.clone())
            .or_default() += 1;
        *by_location
            .entry(format!("{}/{}", record.account_id, record.region))
            .or_default()
            .entry(record.status_detail.clone())
            .or_default() += 1;
        if let Some(compliance) = record
            .compliance
            .filter(|compliance| !compliance.is_compliant())
        {
            non_compliant.push(NonCompliant {
                instance_id: record.instance_id.clone(),
                account_id: record.account_id.clone(),
                region: record.region.clone(),
                missing: compliance.missing,
                failed: compliance.failed,
                pending_reboot: compliance.installed_pending_reboot,
                critical: compliance.critical_non_compliant,
                security: compliance.security_non_compliant,
            });
        }
    }
    non_compliant.sort_by(|a, b| {
        (b.critical, b.security, b.missing)
            .cmp(&(a.critical, a.security, a.missing))
            .then_with(|| a.instance_id.cmp(&b.instance_id))
    });
    // Every step's failures of one status and cause together.
    let mut failures: BTreeMap<(String, String), u64> = BTreeMap::new();
    for ((_, status, cause), count) in scheduler::failures::failed_groups(records) {
        *failures.entry((status, cause)).or_default() += count;
    }
    let mut top_failures: Vec<FailureGroup> = failures
        .into_iter()
        .map(|((status, detail), targets)| FailureGroup {
            status,
            detail,
            targets,
        })
        .collect();
    top_failures.sort_by(|a, b| {
        b.targets
            .cmp(&a.targets)
            .then_with(|| a.detail.cmp(&b.detail))
    });
    top_failures.truncate(TOP_FAILURES);
    let header = Header {
        campaign: records
            .first()
            .map(|record| record.campaign.clone())
            .unwrap_or_default(),
        started_ms: records
            .iter()
            .filter_map(|record| record.requested_at.map(|at| at.0))
            .min(),
        ended_ms: records
            .iter()
            .filter_map(|record| record.finished_at.map(|at| at.0))
            .max(),
        ..Header::default()
    };
    Report {
        run_id,
        header,
        results: records.len(),
        by_status,
        by_location,
        non_compliant,
        top_failures,
    }
}
