//! `flotilla report RUN --format html` and `flotilla compliance --format
//! html`: one self-contained HTML file each — inline CSS and SVG, no script,
//! no request to anywhere — that opens offline and can be mailed around.
//! Rendered with maud, as the web console is: every value from the results
//! (ids, failure text) is escaped as it is rendered, and the fleet view's
//! trend chart is the console's own (`api::console::view::trend_chart`).

use std::collections::BTreeMap;

use maud::{DOCTYPE, Markup, PreEscaped, html};

use super::Report;

const CSS: &str = "body{font:14px/1.4 system-ui,sans-serif;margin:2em;color:#222}\
h1{font-size:1.4em}h2{font-size:1.1em;margin-top:2em}\
table{border-collapse:collapse}td,th{padding:.2em .8em;border-bottom:1px solid #ddd;text-align:left}\
td.n{text-align:right;font-variant-numeric:tabular-nums}.legend span{display:inline-block;margin-right:1em}\
.sw{display:inline-block;width:.8em;height:.8em;margin-right:.3em;vertical-align:middle}\
.charts{display:flex;gap:3em;flex-wrap:wrap;align-items:flex-start}.hint{color:#666}";

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

/// A whole document: the title, the inline stylesheet, `body`.
fn document(title: &str, body: Markup) -> String {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                title { (title) }
                style { (PreEscaped(CSS)) }
            }
            body { (body) }
        }
    }
    .into_string()
        + "\n"
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

/// A ring of the statuses' shares, the total in the middle.
fn donut(totals: &BTreeMap<&str, u64>) -> Markup {
    let all: u64 = totals.values().sum();
    let mut offset = 25.0_f64;
    let arcs: Vec<(&str, u64, f64, f64)> = totals
        .iter()
        .map(|(status, n)| {
            let share = if all == 0 {
                0.0
            } else {
                *n as f64 * 100.0 / all as f64
            };
            let arc = (*status, *n, share, offset);
            offset -= share;
            arc
        })
        .collect();
    html! {
        svg width="180" height="180" viewBox="0 0 42 42" role="img" aria-label="results by status" {
            @for (status, n, share, offset) in &arcs {
                circle cx="21" cy="21" r="15.915" fill="none" stroke=(color(status)) stroke-width="6"
                    stroke-dasharray=(format!("{share:.3} {:.3}", 100.0 - share))
                    stroke-dashoffset=(format!("{offset:.3}")) {
                    title { (status) ": " (n) }
                }
            }
            text x="21" y="22.5" text-anchor="middle" font-size="5" { (all) }
        }
    }
}

fn legend(totals: &BTreeMap<&str, u64>) -> Markup {
    html! {
        p.legend {
            @for (status, n) in totals {
                span { i.sw style={ "background:" (color(status)) } {} (status) " " (n) }
            }
        }
    }
}

/// One row of a bar chart: its label, where it sits, its segments (status,
/// count, x, width), where it ends and its total.
struct BarRow<'a> {
    name: &'a str,
    y: usize,
    segments: Vec<(&'a str, u64, f64, f64)>,
    end: f64,
    total: u64,
}

/// A horizontal stacked bar per row, statuses in their colors.
fn bars(rows: &BTreeMap<String, BTreeMap<String, u64>>, label: &str) -> Markup {
    let widest = rows
        .values()
        .map(|statuses| statuses.values().sum::<u64>())
        .max()
        .unwrap_or(0)
        .max(1);
    let height = 22 * rows.len() + 10;
    let laid_out: Vec<BarRow> = rows
        .iter()
        .enumerate()
        .map(|(index, (name, statuses))| {
            let mut x = 180.0_f64;
            let segments = statuses
                .iter()
                .map(|(status, n)| {
                    let width = *n as f64 * 400.0 / widest as f64;
                    let segment = (status.as_str(), *n, x, width);
                    x += width;
                    segment
                })
                .collect();
            BarRow {
                name,
                y: 22 * index + 5,
                segments,
                end: x,
                total: statuses.values().sum(),
            }
        })
        .collect();
    html! {
        svg width="640" height=(height) role="img" aria-label=(label) {
            @for row in &laid_out {
                text x="0" y=(row.y + 13) font-size="12" { (row.name) }
                @for (status, n, x, width) in &row.segments {
                    rect x=(format!("{x:.1}")) y=(row.y) width=(format!("{width:.1}")) height="16" fill=(color(status)) {
                        title { (status) ": " (n) }
                    }
                }
                text x=(format!("{:.1}", row.end + 6.0)) y=(row.y + 13) font-size="12" { (row.total) }
            }
        }
    }
}

/// Non-compliant instances by the worst severity they miss, as bar rows.
fn severity(report: &Report) -> BTreeMap<String, BTreeMap<String, u64>> {
    let mut counts: BTreeMap<&str, (&str, u64)> = BTreeMap::new();
    for instance in &report.non_compliant {
        // Ordered by the key; the status only picks the color.
        let (key, status) = if instance.critical > 0 {
            ("1 critical", "Failed")
        } else if instance.security > 0 {
            ("2 security", "Execution Timed Out")
        } else {
            ("3 other", "Other")
        };
        counts.entry(key).or_insert((status, 0)).1 += 1;
    }
    counts
        .into_iter()
        .map(|(key, (status, n))| {
            (
                key.get(2..).unwrap_or(key).to_string(),
                BTreeMap::from([(status.to_string(), n)]),
            )
        })
        .collect()
}

/// Non-compliant instances an HTML report lists (worst first); the CSV has all.
pub const HTML_INSTANCES: usize = 500;

fn when(ms: Option<u64>) -> String {
    ms.and_then(|ms| protocol::job::UnixMillis(ms).to_datetime())
        .map_or_else(
            || "unknown".into(),
            |at| at.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
        )
}

/// The report's heading facts, labelled (the table format's lines and the
/// HTML's header); "unknown" where neither the results nor the scheduler say.
pub fn header_fields(header: &super::Header) -> Vec<(&'static str, String)> {
    let or_unknown = |value: Option<String>| value.unwrap_or_else(|| "unknown".into());
    vec![
        (
            "campaign",
            or_unknown(Some(header.campaign.clone()).filter(|name| !name.is_empty())),
        ),
        (
            "version",
            or_unknown(header.campaign_version.map(|v| v.to_string())),
        ),
        (
            "documents",
            or_unknown(Some(header.documents.join(", ")).filter(|d| !d.is_empty())),
        ),
        ("started by", or_unknown(header.started_by.clone())),
        ("start", when(header.started_ms)),
        ("end", when(header.ended_ms)),
        (
            "duration",
            or_unknown(header.duration().map(|duration| {
                humantime::format_duration(std::time::Duration::from_secs(duration.as_secs()))
                    .to_string()
            })),
        ),
    ]
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
    let header = &report.header;
    let title = if header.campaign.is_empty() {
        format!("flotilla run {}", report.run_id)
    } else {
        format!("{} — flotilla run {}", header.campaign, report.run_id)
    };
    let shown = report.non_compliant.len().min(HTML_INSTANCES);
    document(
        &title,
        html! {
            h1 { (title) }
            dl.header #header {
                @for (label, value) in header_fields(header) {
                    dt { (label) } dd { (value) }
                }
            }
            p { (report.results) " results in " (report.by_location.len()) " account-regions; " (report.non_compliant.len()) " non-compliant instances." }
            div.charts {
                div { h2 { "Results by status" } (donut(&totals)) (legend(&totals)) }
                div { h2 { "Results per account" } (bars(&by_account, "results per account")) }
                div {
                    h2 { "Non-compliant instances by severity" }
                    @if report.non_compliant.is_empty() { p { "none" } }
                    @else { (bars(&severity(report), "non-compliant instances by severity")) }
                }
            }
            h2 { "Top failures" }
            table {
                tr { th { "targets" } th { "status" } th { "failure" } }
                @for failure in &report.top_failures {
                    tr { td.n { (failure.targets) } td { (failure.status) } td { (failure.detail) } }
                }
            }
            h2 { "Non-compliant instances" }
            @if report.non_compliant.len() > shown {
                p #more {
                    "The worst " (shown) " of " (report.non_compliant.len()) ", most critical first. Every target, one row each: "
                    code { "flotilla report " (report.run_id) " --format csv > run.csv" }
                }
            }
            table {
                tr { th { "instance" } th { "account" } th { "region" } th { "missing" } th { "critical" } th { "security" } th { "failed" } th { "pending reboot" } }
                @for instance in report.non_compliant.iter().take(shown) {
                    tr {
                        td { (instance.instance_id) } td { (instance.account_id) } td { (instance.region) }
                        td.n { (instance.missing) } td.n { (instance.critical) } td.n { (instance.security) }
                        td.n { (instance.failed) } td.n { (instance.pending_reboot) }
                    }
                }
            }
        },
    )
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
                    ("Success".to_string(), instances.saturating_sub(*bad)),
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
    document(
        "flotilla fleet compliance",
        html! {
            h1 { "Fleet compliance" }
            p { (view.instances) " instances, " (view.non_compliant) " non-compliant, " (view.stale) " not reported for more than " (view.stale_days) " days." }
            div.charts {
                div { h2 { "Per account (red: non-compliant)" } (bars(&by_account, "instances per account")) }
                div {
                    h2 { "Non-compliant by severity" }
                    @if by_severity.is_empty() { p { "none" } }
                    @else { (bars(&by_severity, "non-compliant by severity")) }
                }
            }
            h2 { "Non-compliant share per day" }
            (api::console::view::trend_chart(view))
            h2 { "Needing attention" }
            table {
                tr { th { "instance" } th { "account" } th { "region" } th { "severity" } th { "missing" } th { "reported" } }
                @for state in &view.attention {
                    tr {
                        td { (state.instance_id) } td { (state.account_id) } td { (state.region) }
                        td { (state.severity()) } td.n { (state.missing) }
                        td { (chrono::DateTime::from_timestamp_millis(i64::try_from(state.reported_ms).unwrap_or(0))
                            .map(|at| at.format("%Y-%m-%d %H:%M UTC").to_string())
                            .unwrap_or_default()) }
                    }
                }
                @if view.left_out > 0 {
                    tr { td colspan="6" { "… " (view.left_out) " more" } }
                }
            }
        },
    )
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
        // The console's trend chart: one bar a day, titled with its numbers.
        assert!(html.contains("svg class=\"trend\"") && html.contains("2026-12-03: 10.0% of 10"));
        assert!(html.contains("critical"));
        assert!(!html.contains("http") && !html.contains("//"), "{html}");
    }
}
