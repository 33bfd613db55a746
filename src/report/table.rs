//! The report as text: a table for people, CSV for spreadsheets.

use std::io::Write;

use super::Report;

fn csv_field(text: &str) -> String {
    if text.contains([',', '"', '\n']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_string()
    }
}

/// The report as CSV: one section per kind of row.
pub fn write_csv(report: &Report, out: &mut impl Write) -> std::io::Result<()> {
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
    Ok(())
}

/// The report as a table to read in a terminal.
pub fn write_table(report: &Report, out: &mut impl Write) -> std::io::Result<()> {
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
    Ok(())
}
