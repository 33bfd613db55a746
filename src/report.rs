//! `flotilla report RUN`: a run's results as operators read them — totals by
//! status, per account and region, non-compliant instances, the most common
//! failures — from the results files, as a table, CSV, JSON or one HTML file.

use std::collections::BTreeMap;
use std::io::Write;

use protocol::status::InvocationStatus;
use scheduler::sink::ResultRecord;
use serde::Serialize;
use uuid::Uuid;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Csv,
    Json,
    /// One self-contained HTML file (inline CSS and SVG charts; opens offline).
    Html,
}

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

fn csv_field(text: &str) -> String {
    if text.contains([',', '"', '\n']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_string()
    }
}

pub fn write(report: &Report, format: Format, out: &mut impl Write) -> anyhow::Result<()> {
    match format {
        Format::Json => writeln!(out, "{}", serde_json::to_string_pretty(report)?)?,
        Format::Html => out.write_all(crate::report_html::render(report).as_bytes())?,
        Format::Csv => {
            writeln!(out, "section,key,status,targets")?;
            for (step, statuses) in &report.by_status {
                for (status, n) in statuses {
                    writeln!(out, "step,{},{},{n}", csv_field(step), csv_field(status))?;
                }
            }
            for (location, statuses) in &report.by_location {
                for (status, n) in statuses {
                    writeln!(
                        out,
                        "location,{},{},{n}",
                        csv_field(location),
                        csv_field(status)
                    )?;
                }
            }
            for failure in &report.top_failures {
                writeln!(
                    out,
                    "failure,{},{},{}",
                    csv_field(&failure.detail),
                    csv_field(&failure.status),
                    failure.targets
                )?;
            }
            for instance in &report.non_compliant {
                writeln!(
                    out,
                    "non_compliant,{}/{}/{},missing {} critical {} security {},1",
                    instance.account_id,
                    instance.region,
                    instance.instance_id,
                    instance.missing,
                    instance.critical,
                    instance.security
                )?;
            }
        }
        Format::Table => {
            writeln!(out, "run {}: {} results", report.run_id, report.results)?;
            writeln!(out, "\nby status")?;
            for (step, statuses) in &report.by_status {
                writeln!(out, "  step {step}")?;
                for (status, n) in statuses {
                    writeln!(out, "    {status:<22} {n:>8}")?;
                }
            }
            writeln!(out, "\nby account and region")?;
            for (location, statuses) in &report.by_location {
                let counts: Vec<String> = statuses
                    .iter()
                    .map(|(status, n)| format!("{status} {n}"))
                    .collect();
                writeln!(out, "  {location:<30} {}", counts.join(", "))?;
            }
            writeln!(
                out,
                "\nnon-compliant instances: {}",
                report.non_compliant.len()
            )?;
            for instance in report.non_compliant.iter().take(20) {
                writeln!(
                    out,
                    "  {:<22} {}/{}  missing {:>3}  critical {:>3}  security {:>3}  failed {:>3}  pending reboot {:>3}",
                    instance.instance_id,
                    instance.account_id,
                    instance.region,
                    instance.missing,
                    instance.critical,
                    instance.security,
                    instance.failed,
                    instance.pending_reboot
                )?;
            }
            if report.non_compliant.len() > 20 {
                writeln!(
                    out,
                    "  … {} more (--format csv or json lists all)",
                    report.non_compliant.len() - 20
                )?;
            }
            writeln!(out, "\ntop failures")?;
            if report.top_failures.is_empty() {
                writeln!(out, "  none")?;
            }
            for failure in &report.top_failures {
                writeln!(
                    out,
                    "  {:>6}  {:<22} {}",
                    failure.targets, failure.status, failure.detail
                )?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use protocol::job::Location;
    use protocol::report::{PatchCompliance, TargetResult};
    use protocol::status::StatusDetail;

    fn record(
        instance: &str,
        status: StatusDetail,
        output: &str,
        compliance: Option<PatchCompliance>,
    ) -> ResultRecord {
        ResultRecord::new(
            Uuid::nil(),
            "scan",
            &Location {
                account_id: "111122223333".into(),
                region: "us-east-1".into(),
            },
            0,
            0,
            "scan",
            TargetResult {
                instance_id: instance.into(),
                status,
                command_id: None,
                requested_at: None,
                started_at: None,
                finished_at: None,
                response_code: None,
                output_excerpt: output.into(),
                compliance,
                compliance_missing: None,
            },
        )
    }

    #[test]
    fn failures_group_by_their_message_with_what_varies_masked() {
        let records = vec![
            record(
                "i-00000000000000001",
                StatusDetail::Failed,
                "disk full on i-00000000000000001",
                None,
            ),
            record(
                "i-00000000000000002",
                StatusDetail::Failed,
                "disk full on i-00000000000000002",
                None,
            ),
        ];
        let report = build(Uuid::nil(), &records);
        assert_eq!(report.top_failures.len(), 1);
        assert_eq!(report.top_failures[0].detail, "disk full on <instance>");
        assert_eq!(report.top_failures[0].targets, 2);
    }

    #[test]
    fn totals_non_compliant_instances_and_failures_come_from_the_records() {
        let missing = PatchCompliance {
            missing: 4,
            critical_non_compliant: 2,
            security_non_compliant: 1,
            ..PatchCompliance::default()
        };
        let records = vec![
            record(
                "i-1",
                StatusDetail::Success,
                "ok",
                Some(PatchCompliance::default()),
            ),
            record("i-2", StatusDetail::Success, "ok", Some(missing)),
            record("i-3", StatusDetail::Failed, "yum: lock held\nmore", None),
            record("i-4", StatusDetail::Failed, "yum: lock held", None),
            record("i-5", StatusDetail::ExecutionTimedOut, "", None),
        ];
        let report = build(Uuid::nil(), &records);
        assert_eq!(report.results, 5);
        assert_eq!(report.by_status["0 scan"]["Success"], 2);
        assert_eq!(report.by_status["0 scan"]["Failed"], 2);
        assert_eq!(
            report.by_location["111122223333/us-east-1"]["Execution Timed Out"],
            1
        );
        assert_eq!(report.non_compliant.len(), 1);
        assert_eq!(report.non_compliant[0].instance_id, "i-2");
        assert_eq!(report.non_compliant[0].critical, 2);
        assert_eq!(report.top_failures[0].detail, "yum: lock held");
        assert_eq!(report.top_failures[0].targets, 2);
        let mut csv = Vec::new();
        write(&report, Format::Csv, &mut csv).unwrap();
        let csv = String::from_utf8(csv).unwrap();
        assert!(csv.contains("step,0 scan,Failed,2"), "{csv}");
        assert!(
            csv.contains("non_compliant,111122223333/us-east-1/i-2"),
            "{csv}"
        );
    }

    #[test]
    fn the_html_report_is_self_contained_and_escapes_what_hosts_wrote() {
        let missing = PatchCompliance {
            missing: 3,
            critical_non_compliant: 1,
            ..PatchCompliance::default()
        };
        let records = vec![
            record("i-1", StatusDetail::Success, "ok", Some(missing)),
            record(
                "i-2",
                StatusDetail::Failed,
                "<script>fetch('https://evil.example/x')</script> & more",
                None,
            ),
        ];
        let report = build(Uuid::nil(), &records);
        let mut html = Vec::new();
        write(&report, Format::Html, &mut html).unwrap();
        let html = String::from_utf8(html).unwrap();
        assert!(html.starts_with("<!doctype html>") && html.trim_end().ends_with("</html>"));
        assert!(html.contains("<svg"), "charts are inline SVG");
        // What a host printed is text, never markup or a request.
        assert!(!html.contains("<script"), "{html}");
        assert!(html.contains(
            "&lt;script&gt;fetch(&#39;https://evil.example/x&#39;)&lt;/script&gt; &amp; more"
        ));
        // Nothing is fetched from anywhere: no URL outside the escaped text.
        let outside = html.replace("https://evil.example/x", "");
        assert!(
            !outside.contains("http://")
                && !outside.contains("https://")
                && !outside.contains("//"),
            "{outside}"
        );
        for attribute in ["src=", "href=", "url("] {
            assert!(!html.contains(attribute), "{attribute} in {html}");
        }
        assert!(
            html.contains(">i-1</td>"),
            "the non-compliant instance is listed"
        );
        assert!(html.contains("critical"), "severity chart");
    }
}
