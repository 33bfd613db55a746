//! `flotilla report RUN --format html`: one self-contained HTML file — inline
//! CSS and SVG, no script, no request to anywhere — that opens offline and
//! can be mailed around: a status donut, results per account, non-compliant
//! instances by severity, the top failures and the non-compliant instances.
//! Every value from the results (ids, failure text) is HTML-escaped.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::report::Report;

const CSS: &str = "body{font:14px/1.4 system-ui,sans-serif;margin:2em;color:#222}\
h1{font-size:1.4em}h2{font-size:1.1em;margin-top:2em}\
table{border-collapse:collapse}td,th{padding:.2em .8em;border-bottom:1px solid #ddd;text-align:left}\
td.n{text-align:right;font-variant-numeric:tabular-nums}.legend span{display:inline-block;margin-right:1em}\
.sw{display:inline-block;width:.8em;height:.8em;margin-right:.3em;vertical-align:middle}\
.charts{display:flex;gap:3em;flex-wrap:wrap;align-items:flex-start}";

/// The color of a status detail in every chart.
fn color(status: &str) -> &'static str {
    match status {
        "Success" => "#2e7d32",
        "Failed" => "#c62828",
        "Execution Timed Out" => "#ef6c00",
        "Cancelled" => "#6a1b9a",
        "Not Started" => "#9e9e9e",
        "Access Denied" => "#ad1457",
        _ => "#1565c0",
    }
}

/// Text as HTML: the results are data from hosts and must not become markup.
pub fn escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&#39;"),
            c => escaped.push(c),
        }
    }
    escaped
}

/// Results by status detail over every step.
fn totals(report: &Report) -> BTreeMap<&str, u64> {
    let mut totals = BTreeMap::new();
    for statuses in report.by_status.values() {
        for (status, n) in statuses {
            *totals.entry(status.as_str()).or_default() += n;
        }
    }
    totals
}

fn donut(totals: &BTreeMap<&str, u64>) -> String {
    let all: u64 = totals.values().sum();
    let mut svg = String::from(
        "<svg width=\"180\" height=\"180\" viewBox=\"0 0 42 42\" role=\"img\" aria-label=\"results by status\">",
    );
    let mut offset = 25.0_f64;
    for (status, n) in totals {
        let share = if all == 0 {
            0.0
        } else {
            *n as f64 * 100.0 / all as f64
        };
        let _ = write!(
            svg,
            "<circle cx=\"21\" cy=\"21\" r=\"15.915\" fill=\"none\" stroke=\"{}\" stroke-width=\"6\" stroke-dasharray=\"{share:.3} {:.3}\" stroke-dashoffset=\"{offset:.3}\"><title>{}: {n}</title></circle>",
            color(status),
            100.0 - share,
            escape(status)
        );
        offset -= share;
    }
    let _ = write!(
        svg,
        "<text x=\"21\" y=\"22.5\" text-anchor=\"middle\" font-size=\"5\">{all}</text></svg>"
    );
    svg
}

fn legend(totals: &BTreeMap<&str, u64>) -> String {
    let mut html = String::from("<p class=\"legend\">");
    for (status, n) in totals {
        let _ = write!(
            html,
            "<span><i class=\"sw\" style=\"background:{}\"></i>{} {n}</span>",
            color(status),
            escape(status)
        );
    }
    html.push_str("</p>");
    html
}

/// A horizontal stacked bar per row, statuses in their colors.
fn bars(rows: &BTreeMap<String, BTreeMap<String, u64>>, label: &str) -> String {
    let widest = rows
        .values()
        .map(|statuses| statuses.values().sum::<u64>())
        .max()
        .unwrap_or(0)
        .max(1);
    let height = 22 * rows.len() + 10;
    let mut svg = format!(
        "<svg width=\"640\" height=\"{height}\" role=\"img\" aria-label=\"{}\">",
        escape(label)
    );
    for (index, (name, statuses)) in rows.iter().enumerate() {
        let y = 22 * index + 5;
        let _ = write!(
            svg,
            "<text x=\"0\" y=\"{}\" font-size=\"12\">{}</text>",
            y + 13,
            escape(name)
        );
        let mut x = 180.0_f64;
        for (status, n) in statuses {
            let width = *n as f64 * 400.0 / widest as f64;
            let _ = write!(
                svg,
                "<rect x=\"{x:.1}\" y=\"{y}\" width=\"{width:.1}\" height=\"16\" fill=\"{}\"><title>{}: {n}</title></rect>",
                color(status),
                escape(status)
            );
            x += width;
        }
        let total: u64 = statuses.values().sum();
        let _ = write!(
            svg,
            "<text x=\"{:.1}\" y=\"{}\" font-size=\"12\">{total}</text>",
            x + 6.0,
            y + 13
        );
    }
    svg.push_str("</svg>");
    svg
}

/// Non-compliant instances by the worst severity they miss.
fn severity(report: &Report) -> BTreeMap<String, BTreeMap<String, u64>> {
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    for instance in &report.non_compliant {
        let worst = if instance.critical > 0 {
            "1 critical"
        } else if instance.security > 0 {
            "2 security"
        } else {
            "3 other"
        };
        *counts.entry(worst.to_string()).or_default() += 1;
    }
    counts
        .into_iter()
        .map(|(name, n)| {
            let status = if name.ends_with("critical") {
                "Failed"
            } else if name.ends_with("security") {
                "Execution Timed Out"
            } else {
                "Other"
            };
            (
                name[2..].to_string(),
                BTreeMap::from([(status.to_string(), n)]),
            )
        })
        .collect()
}

/// The report as one self-contained HTML document.
pub fn render(report: &Report) -> String {
    let totals = totals(report);
    let mut by_account: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
    for (location, statuses) in &report.by_location {
        let account = location.split('/').next().unwrap_or(location).to_string();
        let row = by_account.entry(account).or_default();
        for (status, n) in statuses {
            *row.entry(status.clone()).or_default() += n;
        }
    }
    let mut html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>flotilla run {run}</title><style>{CSS}</style></head><body><h1>flotilla run {run}</h1><p>{results} results in {locations} account-regions; {non_compliant} non-compliant instances.</p>",
        run = report.run_id,
        results = report.results,
        locations = report.by_location.len(),
        non_compliant = report.non_compliant.len(),
    );
    let _ = write!(
        html,
        "<div class=\"charts\"><div><h2>Results by status</h2>{}{}</div><div><h2>Results per account</h2>{}</div><div><h2>Non-compliant instances by severity</h2>{}</div></div>",
        donut(&totals),
        legend(&totals),
        bars(&by_account, "results per account"),
        if report.non_compliant.is_empty() {
            "<p>none</p>".to_string()
        } else {
            bars(&severity(report), "non-compliant instances by severity")
        }
    );
    html.push_str(
        "<h2>Top failures</h2><table><tr><th>targets</th><th>status</th><th>failure</th></tr>",
    );
    for failure in &report.top_failures {
        let _ = write!(
            html,
            "<tr><td class=\"n\">{}</td><td>{}</td><td>{}</td></tr>",
            failure.targets,
            escape(&failure.status),
            escape(&failure.detail)
        );
    }
    html.push_str("</table><h2>Non-compliant instances</h2><table><tr><th>instance</th><th>account</th><th>region</th><th>missing</th><th>critical</th><th>security</th><th>failed</th><th>pending reboot</th></tr>");
    for instance in &report.non_compliant {
        let _ = write!(
            html,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
            escape(&instance.instance_id),
            escape(&instance.account_id),
            escape(&instance.region),
            instance.missing,
            instance.critical,
            instance.security,
            instance.failed,
            instance.pending_reboot
        );
    }
    html.push_str("</table></body></html>\n");
    html
}

/// The fleet compliance view as one self-contained HTML document
/// (`flotilla compliance --format html`).
pub fn render_fleet(view: &scheduler::compliance::FleetCompliance) -> String {
    let by_account: BTreeMap<String, BTreeMap<String, u64>> = view
        .by_account
        .iter()
        .map(|(account, (instances, bad))| {
            (
                account.clone(),
                BTreeMap::from([
                    ("Failed".to_string(), *bad),
                    ("Success".to_string(), instances - bad),
                ]),
            )
        })
        .collect();
    let by_severity: BTreeMap<String, BTreeMap<String, u64>> = view
        .by_severity
        .iter()
        .map(|(severity, n)| {
            (
                severity.clone(),
                BTreeMap::from([("Failed".to_string(), *n)]),
            )
        })
        .collect();
    let mut trend = String::from(
        "<svg width=\"640\" height=\"140\" role=\"img\" aria-label=\"non-compliant share per day\">",
    );
    let points: Vec<String> = view
        .trend
        .iter()
        .enumerate()
        .map(|(index, day)| {
            let x = 20.0 + index as f64 * 20.0;
            let y = 120.0 - day.share * 100.0;
            format!("{x:.1},{y:.1}")
        })
        .collect();
    let _ = write!(
        trend,
        "<line x1=\"20\" y1=\"120\" x2=\"620\" y2=\"120\" stroke=\"#999\"/><polyline fill=\"none\" stroke=\"#c62828\" stroke-width=\"2\" points=\"{}\"/>",
        points.join(" ")
    );
    for (index, day) in view.trend.iter().enumerate() {
        let _ = write!(
            trend,
            "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"#c62828\"><title>{}: {} of {} non-compliant</title></circle>",
            20.0 + index as f64 * 20.0,
            120.0 - day.share * 100.0,
            escape(&day.day),
            day.non_compliant,
            day.reported
        );
    }
    trend.push_str("</svg>");
    let mut html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>flotilla fleet compliance</title><style>{CSS}</style></head><body><h1>Fleet compliance</h1><p>{} instances, {} non-compliant, {} not reported for more than {} days.</p>",
        view.instances, view.non_compliant, view.stale, view.stale_days
    );
    let _ = write!(
        html,
        "<div class=\"charts\"><div><h2>Per account (red: non-compliant)</h2>{}</div><div><h2>Non-compliant by severity</h2>{}</div></div><h2>Non-compliant share per day</h2>{trend}",
        bars(&by_account, "instances per account"),
        if by_severity.is_empty() {
            "<p>none</p>".to_string()
        } else {
            bars(&by_severity, "non-compliant by severity")
        }
    );
    html.push_str("<h2>Needing attention</h2><table><tr><th>instance</th><th>account</th><th>region</th><th>severity</th><th>missing</th><th>reported</th></tr>");
    for state in &view.attention {
        let reported =
            chrono::DateTime::from_timestamp_millis(i64::try_from(state.reported_ms).unwrap_or(0))
                .map(|at| at.format("%Y-%m-%d %H:%M UTC").to_string())
                .unwrap_or_default();
        let _ = write!(
            html,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"n\">{}</td><td>{reported}</td></tr>",
            escape(&state.instance_id),
            escape(&state.account_id),
            escape(&state.region),
            state.severity(),
            state.missing
        );
    }
    if view.left_out > 0 {
        let _ = write!(
            html,
            "<tr><td colspan=\"6\">… {} more</td></tr>",
            view.left_out
        );
    }
    html.push_str("</table></body></html>\n");
    html
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use scheduler::compliance::{FleetCompliance, InstanceCompliance, TrendDay};

    #[test]
    fn the_fleet_page_is_self_contained_and_escapes_instance_data() {
        let instance = InstanceCompliance {
            instance_id: "i-<img src=x>".into(),
            account_id: "111122223333".into(),
            region: "us-east-1".into(),
            campaign: "nightly".into(),
            run_id: uuid::Uuid::nil(),
            reported_ms: 1_796_000_000_000,
            missing: 3,
            failed: 0,
            pending_reboot: 0,
            critical: 1,
            security: 0,
            other: 2,
        };
        let view = FleetCompliance {
            instances: 10,
            non_compliant: 1,
            stale: 0,
            stale_days: 7,
            by_account: BTreeMap::from([("111122223333".into(), (10, 1))]),
            by_region: BTreeMap::from([("us-east-1".into(), (10, 1))]),
            by_severity: BTreeMap::from([("critical".into(), 1)]),
            trend: vec![TrendDay {
                day: "2026-12-03".into(),
                reported: 10,
                non_compliant: 1,
                share: 0.1,
            }],
            attention: vec![instance],
            left_out: 0,
        };
        let html = render_fleet(&view);
        assert!(html.contains("10 instances, 1 non-compliant"));
        assert!(html.contains("i-&lt;img src=x&gt;") && !html.contains("<img"));
        assert!(html.contains("<polyline") && html.contains("critical"));
        assert!(!html.contains("http") && !html.contains("//"), "{html}");
    }
}
