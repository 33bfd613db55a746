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

pub use self::model::{FailureGroup, Header, NonCompliant, Report, build};

use scheduler::sink::ResultRecord;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Totals, locations, the worst instances and failures, for people.
    Table,
    /// One row per target and step, every compliance count a column.
    Csv,
    /// The report as nested JSON (header, steps, locations, instances).
    Json,
    /// One self-contained HTML file (inline CSS and SVG charts; opens offline).
    Html,
}

/// Writes `report` (built from `records`) in `format`; the CSV is the
/// records themselves, one tidy row each.
pub fn write(
    report: &Report,
    records: &[ResultRecord],
    format: Format,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    match format {
        Format::Json => writeln!(out, "{}", serde_json::to_string_pretty(&report.json())?)?,
        Format::Html => out.write_all(html::render(report).as_bytes())?,
        Format::Csv => table::write_csv(records, out)?,
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

    /// Results carry the hosts' times (the simulator's run fast); the
    /// header's start and end are the run's own, by the scheduler's clock,
    /// once it recorded an end — never one of each.
    #[test]
    fn the_header_takes_the_runs_start_and_end_by_one_clock() {
        let mut late = record("i-1", StatusDetail::Success, "", None);
        late.requested_at = Some(protocol::job::UnixMillis(9_000_000));
        late.finished_at = Some(protocol::job::UnixMillis(9_500_000));
        let mut progress = scheduler::RunProgress::unreadable(Uuid::nil(), String::new());
        progress.created_ms = 1_000_000;
        progress.ended_ms = Some(1_060_000);
        let detail = api::json::RunDetail {
            progress,
            holds: Vec::new(),
            steps: Vec::new(),
            location_states: Vec::new(),
        };
        let built = build(Uuid::nil(), &[late]).with_run(&detail);
        assert_eq!(built.header.started_ms, Some(1_000_000));
        assert_eq!(
            built.header.duration(),
            Some(std::time::Duration::from_secs(60))
        );
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
            record(
                "i-6",
                StatusDetail::Failed,
                "=HYPERLINK(\"http://evil.example\")",
                None,
            ),
        ];
        let report = build(Uuid::nil(), &records);
        assert_eq!(report.results, 6);
        assert_eq!(report.by_status["0 scan"]["Success"], 2);
        assert_eq!(report.by_status["0 scan"]["Failed"], 3);
        assert_eq!(
            report.by_location["111122223333/us-east-1"]["Execution Timed Out"],
            1
        );
        assert_eq!(report.non_compliant.len(), 1);
        assert_eq!(report.non_compliant[0].instance_id, "i-2");
        assert_eq!(report.non_compliant[0].critical, 2);
        assert_eq!(report.top_failures[0].detail, "yum: lock held");
        assert_eq!(report.top_failures[0].targets, 2);
        // The CSV: one tidy table, a row per target and step, every
        // compliance count a column (issue 33).
        let mut csv = Vec::new();
        write(&report, &records, Format::Csv, &mut csv).unwrap();
        let csv = String::from_utf8(csv).unwrap();
        let rows: Vec<Vec<&str>> = csv.lines().map(|line| line.split(',').collect()).collect();
        let columns = table::csv_columns();
        assert_eq!(rows[0], columns, "{csv}");
        assert_eq!(rows.len(), 1 + records.len(), "{csv}");
        assert!(rows.iter().all(|row| row.len() == columns.len()), "{csv}");
        let column = |name: &str| columns.iter().position(|column| *column == name).unwrap();
        let i2 = rows
            .iter()
            .find(|row| row[column("instance_id")] == "i-2")
            .unwrap();
        assert_eq!(i2[column("missing")], "4");
        assert_eq!(i2[column("critical_non_compliant")], "2");
        assert_eq!(i2[column("status_detail")], "Success");
        let i3 = rows
            .iter()
            .find(|row| row[column("instance_id")] == "i-3")
            .unwrap();
        assert_eq!(i3[column("missing")], "", "no patch counts without a scan");
        assert_eq!(i3[column("output_first_line")], "yum: lock held");
        // What a host printed never becomes a spreadsheet formula.
        assert!(
            csv.contains("\"'=HYPERLINK(\"\"http://evil.example\"\")\""),
            "{csv}"
        );

        // The JSON: nested objects, never joined keys.
        let json = report.json();
        assert_eq!(json["steps"][0]["index"], 0);
        assert_eq!(json["steps"][0]["name"], "scan");
        assert_eq!(json["steps"][0]["statuses"]["Success"], 2);
        assert_eq!(json["locations"][0]["account_id"], "111122223333");
        assert_eq!(json["locations"][0]["region"], "us-east-1");
        assert_eq!(json["header"]["campaign"], "scan");
    }

    #[test]
    fn the_html_report_names_the_run_and_lists_the_worst_500_instances() {
        let records: Vec<ResultRecord> = (0..600)
            .map(|n| {
                let compliance = PatchCompliance {
                    missing: 1 + n % 7,
                    critical_non_compliant: n % 3,
                    ..PatchCompliance::default()
                };
                record(
                    &format!("i-{n:017}"),
                    StatusDetail::Success,
                    "ok",
                    Some(compliance),
                )
            })
            .collect();
        let report = build(Uuid::nil(), &records);
        let mut html = Vec::new();
        write(&report, &records, Format::Html, &mut html).unwrap();
        let html = String::from_utf8(html).unwrap();
        assert!(html.contains("<title>scan — flotilla run "), "{html}");
        for label in ["campaign", "documents", "started by", "start"] {
            assert!(html.contains(&format!("<dt>{label}</dt>")), "{label}");
        }
        assert_eq!(html.matches("<tr><td>i-").count(), 500, "the worst 500");
        assert!(
            html.contains("The worst 500 of 600") && html.contains("--format csv &gt; run.csv"),
            "{html}"
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
        write(&report, &records, Format::Html, &mut html).unwrap();
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
