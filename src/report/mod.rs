//! `flotilla report RUN`: a run's results as operators read them — totals by
//! status, per account and region, non-compliant instances, the most common
//! failures — from the results files, as a table, CSV, JSON or one HTML file.
//!
//! - [`model`]: the report as data, built from the results' records.
//! - [`table`]: the table and CSV formats.
//! - [`html`]: one self-contained HTML file (maud; also the fleet view's).

pub mod html;
pub mod model;
pub mod table;

use std::io::Write;

pub use self::model::{FailureGroup, NonCompliant, Report, build};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Csv,
    Json,
    /// One self-contained HTML file (inline CSS and SVG charts; opens offline).
    Html,
}

pub fn write(report: &Report, format: Format, out: &mut impl Write) -> anyhow::Result<()> {
    match format {
        Format::Json => writeln!(out, "{}", serde_json::to_string_pretty(report)?)?,
        Format::Html => out.write_all(html::render(report).as_bytes())?,
        Format::Csv => table::write_csv(report, out)?,
        Format::Table => table::write_table(report, out)?,
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
    use scheduler::sink::ResultRecord;
    use uuid::Uuid;

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
        assert!(
            html.to_ascii_lowercase().starts_with("<!doctype html>")
                && html.trim_end().ends_with("</html>")
        );
        assert!(html.contains("<svg"), "charts are inline SVG");
        // What a host printed is text, never markup or a request.
        assert!(!html.contains("<script"), "{html}");
        assert!(
            html.contains("&lt;script&gt;fetch(") && html.contains("&lt;/script&gt; &amp; more"),
            "{html}"
        );
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
