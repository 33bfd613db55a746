//! A run's report as data: totals by status, per account and region, the
//! non-compliant instances (worst first) and the most common failures,
//! built from the results files' records.

use std::collections::BTreeMap;

use protocol::status::InvocationStatus;
use scheduler::sink::ResultRecord;
use serde::Serialize;
use uuid::Uuid;

#[derive(Debug, Serialize, PartialEq)]
pub struct Report {
    pub run_id: Uuid,
    pub results: usize,
    /// step → status detail → targets
    pub by_status: BTreeMap<String, BTreeMap<String, u64>>,
    /// `account/region` → status detail → targets (every step)
    pub by_location: BTreeMap<String, BTreeMap<String, u64>>,
    pub non_compliant: Vec<NonCompliant>,
    pub top_failures: Vec<FailureGroup>,
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

pub fn build(run_id: Uuid, records: &[ResultRecord]) -> Report {
    let mut by_status: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
    let mut by_location: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
    let mut failures: BTreeMap<(String, String), u64> = BTreeMap::new();
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
        let status = record.status.parse::<InvocationStatus>().ok();
        if !matches!(
            status,
            Some(InvocationStatus::Success | InvocationStatus::NotStarted)
        ) {
            *failures
                .entry((
                    record.status_detail.clone(),
                    scheduler::failures::failure_kind(&record.output),
                ))
                .or_default() += 1;
        }
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
    Report {
        run_id,
        results: records.len(),
        by_status,
        by_location,
        non_compliant,
        top_failures,
    }
}
