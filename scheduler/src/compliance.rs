//! Fleet compliance across runs — the resource-data-sync analogue: the latest
//! patch compliance of every instance, kept by the scheduler as results with
//! compliance counts arrive (from any run, scan or install), and a count per
//! day of the instances reported and of those non-compliant (kept 35 days),
//! for the trend. `GET /compliance` and `flotilla compliance` read them.
//!
//! Redis: one hash, instance id → its latest state (JSON), and one hash per
//! day. About 250 bytes an instance: 25 MB for 100,000.

use std::collections::BTreeMap;

use protocol::job::Location;
use protocol::report::PatchCompliance;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{Scheduler, SchedulerError, now_ms};

const DAY_MS: u64 = 86_400_000;
/// Days of trend kept (the view shows 30).
const TREND_DAYS_KEPT: u64 = 35;
const TREND_DAYS_SHOWN: u64 = 30;

/// One instance's latest compliance, as the fleet view holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceCompliance {
    pub instance_id: String,
    pub account_id: String,
    pub region: String,
    pub campaign: String,
    pub run_id: Uuid,
    /// When the result was applied (Unix ms).
    pub reported_ms: u64,
    pub missing: u32,
    pub failed: u32,
    pub pending_reboot: u32,
    pub critical: u32,
    pub security: u32,
    pub other: u32,
}

impl InstanceCompliance {
    /// An instance's state from its compliance counts, reported at `reported_ms`.
    pub fn from_counts(
        instance_id: &str,
        location: &Location,
        campaign: &str,
        run_id: Uuid,
        reported_ms: u64,
        counts: &PatchCompliance,
    ) -> Self {
        Self {
            instance_id: instance_id.to_string(),
            account_id: location.account_id.clone(),
            region: location.region.clone(),
            campaign: campaign.to_string(),
            run_id,
            reported_ms,
            missing: counts.missing,
            failed: counts.failed,
            pending_reboot: counts.installed_pending_reboot,
            critical: counts.critical_non_compliant,
            security: counts.security_non_compliant,
            other: counts.other_non_compliant,
        }
    }

    pub fn compliant(&self) -> bool {
        self.missing == 0 && self.failed == 0 && self.pending_reboot == 0
    }

    /// `critical`, `security`, `other` (what it misses at worst) or `compliant`.
    pub fn severity(&self) -> &'static str {
        if self.compliant() {
            "compliant"
        } else if self.critical > 0 {
            "critical"
        } else if self.security > 0 {
            "security"
        } else {
            "other"
        }
    }
}

/// The fleet view: counts by account, region and severity, the trend, and
/// the instances that need attention (non-compliant or stale).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FleetCompliance {
    pub instances: u64,
    pub non_compliant: u64,
    /// Not reported for more than `stale_days`.
    pub stale: u64,
    pub stale_days: u64,
    /// account → (instances, non-compliant)
    pub by_account: BTreeMap<String, (u64, u64)>,
    pub by_region: BTreeMap<String, (u64, u64)>,
    /// severity → non-compliant instances
    pub by_severity: BTreeMap<String, u64>,
    /// Per day (UTC), oldest first: instances reported and non-compliant.
    pub trend: Vec<TrendDay>,
    /// Non-compliant or stale instances matching the filters, worst first.
    pub attention: Vec<InstanceCompliance>,
    /// How many `attention` left out (beyond `limit`).
    pub left_out: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrendDay {
    pub day: String,
    pub reported: u64,
    pub non_compliant: u64,
    pub share: f64,
}

/// What the view is narrowed to.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ComplianceQuery {
    pub account: Option<String>,
    pub region: Option<String>,
    /// critical, security, other, compliant
    pub severity: Option<String>,
    pub stale_days: Option<u64>,
    pub limit: Option<usize>,
}

fn day_of(ms: u64) -> String {
    chrono::DateTime::from_timestamp_millis(i64::try_from(ms).unwrap_or(0))
        .map(|at| at.format("%Y-%m-%d").to_string())
        .unwrap_or_default()
}

impl Scheduler {
    /// Records the compliance of the instances of a run's reports applied
    /// now (each once): one pipeline for a bundle.
    pub(crate) async fn record_compliance(
        &self,
        run_id: Uuid,
        campaign: &str,
        results: &[(&str, &Location, PatchCompliance)],
    ) -> Result<(), SchedulerError> {
        if results.is_empty() {
            return Ok(());
        }
        let now = now_ms();
        let mut fields = Vec::with_capacity(results.len());
        let mut non_compliant = 0u64;
        for (instance_id, location, counts) in results {
            let state = InstanceCompliance::from_counts(
                instance_id,
                location,
                campaign,
                run_id,
                now,
                counts,
            );
            non_compliant += u64::from(!state.compliant());
            fields.push((*instance_id, serde_json::to_string(&state)?));
        }
        let day_key = self.ledger().names().compliance_day_key(&day_of(now));
        let mut connection = self.ledger().connection();
        let () = redis::pipe()
            .hset_multiple(self.ledger().names().compliance_key(), &fields)
            .ignore()
            .hincr(&day_key, "reported", results.len() as u64)
            .ignore()
            .hincr(&day_key, "non_compliant", non_compliant)
            .ignore()
            .pexpire(
                &day_key,
                i64::try_from(TREND_DAYS_KEPT * DAY_MS).unwrap_or(i64::MAX),
            )
            .ignore()
            .query_async(&mut connection)
            .await?;
        Ok(())
    }

    /// The fleet view now.
    pub async fn fleet_compliance(
        &self,
        query: &ComplianceQuery,
    ) -> Result<FleetCompliance, SchedulerError> {
        use redis::AsyncCommands as _;
        let mut connection = self.ledger().connection();
        let raw: Vec<String> = connection
            .hvals(self.ledger().names().compliance_key())
            .await?;
        let now = now_ms();
        let states = raw
            .iter()
            .map(|raw| {
                serde_json::from_str::<InstanceCompliance>(raw).map_err(|error| {
                    SchedulerError::Corrupt(format!("a compliance record does not parse: {error}"))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut view = fleet_view(states, query, now);
        let days: Vec<String> = (0..TREND_DAYS_SHOWN)
            .rev()
            .map(|back| day_of(now.saturating_sub(back * DAY_MS)))
            .collect();
        let mut pipe = redis::pipe();
        for day in &days {
            pipe.cmd("HMGET")
                .arg(self.ledger().names().compliance_day_key(day))
                .arg("reported")
                .arg("non_compliant");
        }
        let counts: Vec<(Option<u64>, Option<u64>)> = pipe.query_async(&mut connection).await?;
        for (day, (reported, non_compliant)) in days.into_iter().zip(counts) {
            let (reported, non_compliant) = (reported.unwrap_or(0), non_compliant.unwrap_or(0));
            if reported == 0 {
                continue;
            }
            view.trend.push(TrendDay {
                day,
                reported,
                non_compliant,
                share: non_compliant as f64 / reported as f64,
            });
        }
        Ok(view)
    }
}

/// The fleet view of `states` at `now`, without the trend (which only the
/// scheduler's daily counts hold): counts, severities and the instances
/// that need attention, worst first.
pub fn fleet_view(
    states: impl IntoIterator<Item = InstanceCompliance>,
    query: &ComplianceQuery,
    now: u64,
) -> FleetCompliance {
    let stale_days = query.stale_days.unwrap_or(7);
    let stale_before = now.saturating_sub(stale_days.saturating_mul(DAY_MS));
    let limit = query.limit.unwrap_or(1000).min(100_000);
    let mut view = FleetCompliance {
        instances: 0,
        non_compliant: 0,
        stale: 0,
        stale_days,
        by_account: BTreeMap::new(),
        by_region: BTreeMap::new(),
        by_severity: BTreeMap::new(),
        trend: Vec::new(),
        attention: Vec::new(),
        left_out: 0,
    };
    for state in states {
        if query
            .account
            .as_ref()
            .is_some_and(|a| *a != state.account_id)
            || query.region.as_ref().is_some_and(|r| *r != state.region)
            || query
                .severity
                .as_deref()
                .is_some_and(|s| s != state.severity())
        {
            continue;
        }
        let bad = !state.compliant();
        let stale = state.reported_ms < stale_before;
        view.instances += 1;
        view.non_compliant += u64::from(bad);
        view.stale += u64::from(stale);
        for (map, key) in [
            (&mut view.by_account, &state.account_id),
            (&mut view.by_region, &state.region),
        ] {
            let entry = map.entry(key.clone()).or_default();
            entry.0 += 1;
            entry.1 += u64::from(bad);
        }
        if bad {
            *view.by_severity.entry(state.severity().into()).or_default() += 1;
        }
        if bad || stale {
            view.attention.push(state);
        }
    }
    // Worst first: critical, security, other; then the most missing.
    view.attention.sort_by(|a, b| {
        let rank = |s: &InstanceCompliance| match s.severity() {
            "critical" => 0,
            "security" => 1,
            "other" => 2,
            _ => 3,
        };
        rank(a)
            .cmp(&rank(b))
            .then(b.missing.cmp(&a.missing))
            .then(a.instance_id.cmp(&b.instance_id))
    });
    if view.attention.len() > limit {
        view.left_out = (view.attention.len() - limit) as u64;
        view.attention.truncate(limit);
    }
    view
}

/// Every instance's latest compliance in result records (any runs): what
/// the scheduler would hold had it applied them, for `flotilla compliance`
/// without the service. The latest is the one that finished last.
pub fn latest_from_results(records: &[crate::sink::ResultRecord]) -> Vec<InstanceCompliance> {
    let mut latest: BTreeMap<&str, InstanceCompliance> = BTreeMap::new();
    for record in records {
        let Some(counts) = &record.compliance else {
            continue;
        };
        let reported_ms = record
            .finished_at
            .or(record.requested_at)
            .map_or(0, |at| at.0);
        if latest
            .get(record.instance_id.as_str())
            .is_some_and(|kept| kept.reported_ms >= reported_ms)
        {
            continue;
        }
        let location = Location {
            account_id: record.account_id.clone(),
            region: record.region.clone(),
        };
        latest.insert(
            &record.instance_id,
            InstanceCompliance::from_counts(
                &record.instance_id,
                &location,
                &record.campaign,
                record.run_id,
                reported_ms,
                counts,
            ),
        );
    }
    latest.into_values().collect()
}

/// The instances that need attention as CSV, one line each.
pub fn attention_csv(view: &FleetCompliance) -> String {
    let field = |text: &str| {
        if text.contains([',', '"', '\n']) {
            format!("\"{}\"", text.replace('"', "\"\""))
        } else {
            text.to_string()
        }
    };
    let mut csv = String::from(
        "instance_id,account_id,region,severity,missing,critical,security,other,failed,pending_reboot,reported_ms,campaign,run_id\n",
    );
    for state in &view.attention {
        csv.push_str(&format!(
            "{},{},{},{},{},{},{},{},{},{},{},{},{}\n",
            field(&state.instance_id),
            field(&state.account_id),
            field(&state.region),
            state.severity(),
            state.missing,
            state.critical,
            state.security,
            state.other,
            state.failed,
            state.pending_reboot,
            state.reported_ms,
            field(&state.campaign),
            state.run_id
        ));
    }
    csv
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::ResultRecord;
    use protocol::job::UnixMillis;
    use protocol::report::PatchCompliance;

    fn record(instance: &str, finished_ms: u64, missing: Option<u32>) -> ResultRecord {
        ResultRecord {
            run_id: Uuid::nil(),
            campaign: "scan".into(),
            account_id: "111122223333".into(),
            region: "eu-west-1".into(),
            batch_id: 0,
            step_index: 0,
            step: "scan".into(),
            instance_id: instance.into(),
            status: "Success".into(),
            status_detail: "Success".into(),
            command_id: None,
            requested_at: None,
            started_at: None,
            finished_at: Some(UnixMillis(finished_ms)),
            response_code: Some(0),
            output: String::new(),
            compliance: missing.map(|missing| PatchCompliance {
                missing,
                critical_non_compliant: missing,
                ..PatchCompliance::default()
            }),
            compliance_missing: None,
            output_location: None,
        }
    }

    /// Without the scheduler, each instance counts once, as its latest
    /// result with compliance says; results without counts are skipped.
    #[test]
    fn the_latest_result_of_each_instance_is_its_compliance() {
        let records = [
            record("i-1", 2_000, Some(0)),
            record("i-1", 1_000, Some(4)),
            record("i-2", 1_000, Some(3)),
            record("i-3", 5_000, None),
        ];
        let states = latest_from_results(&records);
        assert_eq!(states.len(), 2);
        let view = fleet_view(
            states,
            &ComplianceQuery {
                stale_days: Some(1),
                ..ComplianceQuery::default()
            },
            3_000,
        );
        assert_eq!((view.instances, view.non_compliant), (2, 1));
        assert_eq!(view.attention[0].instance_id, "i-2");
        assert_eq!(view.by_severity.get("critical"), Some(&1));
    }
}
