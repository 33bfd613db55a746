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

/// The CSV's columns, in order (one row per target and step), and whether
/// each holds a number (counts, times) or text from somewhere else (the
/// campaign, SSM, the host), which is defused against spreadsheet formulas.
const COLUMNS: [(&str, Cell); 26] = [
    ("run_id", Cell::Text),
    ("campaign", Cell::Text),
    ("account_id", Cell::Text),
    ("region", Cell::Text),
    ("step_index", Cell::Number),
    ("step", Cell::Text),
    ("instance_id", Cell::Text),
    ("status", Cell::Text),
    ("status_detail", Cell::Text),
    ("command_id", Cell::Text),
    ("requested_at", Cell::Number),
    ("started_at", Cell::Number),
    ("finished_at", Cell::Number),
    ("response_code", Cell::Number),
    ("patch_operation", Cell::Text),
    ("installed", Cell::Number),
    ("installed_other", Cell::Number),
    ("installed_pending_reboot", Cell::Number),
    ("installed_rejected", Cell::Number),
    ("missing", Cell::Number),
    ("failed", Cell::Number),
    ("not_applicable", Cell::Number),
    ("critical_non_compliant", Cell::Number),
    ("security_non_compliant", Cell::Number),
    ("other_non_compliant", Cell::Number),
    ("output_first_line", Cell::Text),
];

#[derive(Clone, Copy, PartialEq, Eq)]
enum Cell {
    Number,
    Text,
}

/// The CSV's column names, in order.
pub fn csv_columns() -> Vec<&'static str> {
    COLUMNS.iter().map(|(name, _)| *name).collect()
}

fn rfc3339(at: Option<protocol::job::UnixMillis>) -> String {
    at.and_then(protocol::job::UnixMillis::to_rfc3339)
        .unwrap_or_default()
}

/// The results as one tidy table: one row per target and step, times in
/// RFC 3339, every compliance count a column (empty without a patch scan).
pub fn write_csv(records: &[ResultRecord], out: &mut impl Write) -> std::io::Result<()> {
    writeln!(out, "{}", csv_columns().join(","))?;
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
        let fields: Vec<String> = row
            .iter()
            .zip(COLUMNS)
            .map(|(field, (_, cell))| match cell {
                Cell::Number => csv_field(field),
                Cell::Text => csv_text(field),
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
