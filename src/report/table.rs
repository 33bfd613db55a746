//! The report as text: a table for people, CSV for spreadsheets.

use std::io::Write;

use scheduler::sink::ResultRecord;

use super::Report;

/// One CSV cell: quoted when it holds a separator, quote or line break.
fn csv_field(text: &str) -> String {
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_string()
    }
}

/// A text cell: one a spreadsheet would run as a formula (`= + - @`, tab or
/// CR first — what a host printed is anyone's) is prefixed with `'`.
fn csv_text(text: &str) -> String {
    if text.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        csv_field(&format!("'{text}"))
    } else {
        csv_field(text)
    }
}

/// The CSV's columns, in order: one row per target and step.
pub const CSV_COLUMNS: [&str; 26] = [
    "run_id",
    "campaign",
    "account_id",
    "region",
    "step_index",
    "step",
    "instance_id",
    "status",
    "status_detail",
    "command_id",
    "requested_at",
    "started_at",
    "finished_at",
    "response_code",
    "patch_operation",
    "installed",
    "installed_other",
    "installed_pending_reboot",
    "installed_rejected",
    "missing",
    "failed",
    "not_applicable",
    "critical_non_compliant",
    "security_non_compliant",
    "other_non_compliant",
    "output_first_line",
];

fn rfc3339(at: Option<protocol::job::UnixMillis>) -> String {
    at.and_then(|at| i64::try_from(at.0).ok())
        .and_then(chrono::DateTime::from_timestamp_millis)
        .map(|at| at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}

/// The results as one tidy table: one row per target and step, times in
/// RFC 3339, every compliance count a column (empty without a patch scan).
pub fn write_csv(records: &[ResultRecord], out: &mut impl Write) -> std::io::Result<()> {
    writeln!(out, "{}", CSV_COLUMNS.join(","))?;
    for record in records {
        let count = |pick: fn(&protocol::report::PatchCompliance) -> u32| {
            record
                .compliance
                .as_ref()
                .map(|compliance| pick(compliance).to_string())
                .unwrap_or_default()
        };
        let row = [
            record.run_id.to_string(),
            record.campaign.clone(),
            record.account_id.clone(),
            record.region.clone(),
            record.step_index.to_string(),
            record.step.clone(),
            record.instance_id.clone(),
            record.status.clone(),
            record.status_detail.clone(),
            record.command_id.clone().unwrap_or_default(),
            rfc3339(record.requested_at),
            rfc3339(record.started_at),
            rfc3339(record.finished_at),
            record
                .response_code
                .map(|code| code.to_string())
                .unwrap_or_default(),
            record
                .compliance
                .as_ref()
                .map(|compliance| format!("{:?}", compliance.operation))
                .unwrap_or_default(),
            count(|c| c.installed),
            count(|c| c.installed_other),
            count(|c| c.installed_pending_reboot),
            count(|c| c.installed_rejected),
            count(|c| c.missing),
            count(|c| c.failed),
            count(|c| c.not_applicable),
            count(|c| c.critical_non_compliant),
            count(|c| c.security_non_compliant),
            count(|c| c.other_non_compliant),
            record.output.lines().next().unwrap_or_default().to_string(),
        ];
        // Every column but the counts and times is text from somewhere
        // else (the campaign, SSM, the host).
        const NUMERIC: [&str; 15] = [
            "step_index",
            "requested_at",
            "started_at",
            "finished_at",
            "response_code",
            "installed",
            "installed_other",
            "installed_pending_reboot",
            "installed_rejected",
            "missing",
            "failed",
            "not_applicable",
            "critical_non_compliant",
            "security_non_compliant",
            "other_non_compliant",
        ];
        let fields: Vec<String> = row
            .iter()
            .zip(CSV_COLUMNS)
            .map(|(field, column)| {
                if NUMERIC.contains(&column) {
                    csv_field(field)
                } else {
                    csv_text(field)
                }
            })
            .collect();
        writeln!(out, "{}", fields.join(","))?;
    }
    Ok(())
}

/// The report as a table to read in a terminal.
pub fn write_table(report: &Report, out: &mut impl Write) -> std::io::Result<()> {
    writeln!(out, "run {}: {} results", report.run_id, report.results)?;
    for (label, value) in super::html::header_fields(&report.header) {
        writeln!(out, "  {label}: {value}")?;
    }
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
            "  … {} more (`flotilla report {} --format csv` lists every target)",
            report.non_compliant.len() - 20,
            report.run_id
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
    Ok(())
}
