//! The fleet compliance page and its trend chart (shared with
//! `flotilla compliance --format html`).

use std::collections::BTreeMap;

use maud::{Markup, html};
use scheduler::compliance::FleetCompliance;

use super::short_id;

/// The share as a percentage with one decimal.
fn percent(part: u64, whole: u64) -> String {
    if whole == 0 {
        return "0.0%".into();
    }
    format!("{:.1}%", part as f64 * 100.0 / whole as f64)
}

fn counts_table(id: &str, title: &str, rows: &BTreeMap<String, (u64, u64)>) -> Markup {
    html! {
        table id=(id) {
            thead { tr { th { (title) } th { "Instances" } th { "Non-compliant" } th { "Share" } } }
            tbody { @for (key, (instances, non_compliant)) in rows {
                tr { td { (key) } td.n { (instances) } td.n { (non_compliant) } td.n { (percent(*non_compliant, *instances)) } }
            } }
        }
    }
}

/// The trend as SVG bars: the non-compliant share per day. The console's
/// compliance page and `flotilla compliance --format html` draw this one.
pub fn trend_chart(view: &FleetCompliance) -> Markup {
    let width = 20 * view.trend.len().max(1);
    html! {
        svg.trend width=(width) height="110" viewBox={ "0 0 " (width) " 110" } role="img" {
            title { "Non-compliant share per day" }
            @for (index, day) in view.trend.iter().enumerate() {
                @let height = (day.share * 100.0).clamp(0.0, 100.0);
                rect x=(index * 20 + 2) y=(format!("{:.1}", 100.0 - height)) width="16" height=(format!("{:.1}", height)) fill="#c62828" {
                    title { (day.day) ": " (format!("{:.1}", day.share * 100.0)) "% of " (day.reported) }
                }
            }
            line x1="0" y1="100.5" x2=(width) y2="100.5" stroke="#999" {}
        }
        @if let (Some(first), Some(last)) = (view.trend.first(), view.trend.last()) {
            p.hint { (first.day) " … " (last.day) "; bar height = share non-compliant (0–100%); hover for the numbers" }
        }
    }
}

pub fn compliance_page(view: &FleetCompliance, query: &str) -> Markup {
    html! {
        p #compliance-summary {
            strong { (view.non_compliant) } " of " (view.instances) " instances non-compliant (" (percent(view.non_compliant, view.instances)) "); "
            (view.stale) " not scanned in " (view.stale_days) " days."
        }
        form.filters method="get" {
            input type="text" name="account" placeholder="account" maxlength="64";
            input type="text" name="region" placeholder="region" maxlength="64";
            select name="severity" { option value="" { "any severity" } @for s in ["critical", "security", "other", "compliant"] { option value=(s) { (s) } } }
            input type="number" name="stale_days" placeholder="stale after days" min="1" max="365";
            button type="submit" { "Filter" }
            " " a #csv href={ "/ui/compliance.csv" (query) } { "Export CSV" }
        }
        div.charts {
            div { h2 { "By severity" }
                table #by-severity { tbody { @for (severity, count) in by_severity(view) { tr { td { (severity) } td.n { (count) } } } } } }
            div { h2 { "Non-compliant share, last 30 days" } (trend_chart(view)) }
        }
        h2 { "By account" } (counts_table("by-account", "Account", &view.by_account))
        h2 { "By region" } (counts_table("by-region", "Region", &view.by_region))
        h2 { "Needs attention" }
        table #attention {
            thead { tr { th { "Instance" } th { "Account" } th { "Region" } th { "Severity" } th { "Missing" } th { "Critical" } th { "Security" } th { "Failed" } th { "Reboot" } th { "Last scan" } th { "Run" } } }
            tbody { @for instance in &view.attention {
                tr data-instance=(instance.instance_id) {
                    td { (instance.instance_id) } td { (instance.account_id) } td { (instance.region) }
                    td { span class={ "sev " (instance.severity()) } { (instance.severity()) } }
                    td.n { (instance.missing) } td.n { (instance.critical) } td.n { (instance.security) }
                    td.n { (instance.failed) } td.n { (instance.pending_reboot) }
                    td { (chrono::DateTime::from_timestamp_millis(i64::try_from(instance.reported_ms).unwrap_or(0)).map(|at| at.format("%Y-%m-%d %H:%M").to_string()).unwrap_or_default()) }
                    td { a href={ "/ui/runs/" (instance.run_id) } { (short_id(&instance.run_id.to_string())) } }
                }
            } }
        }
        @if view.left_out > 0 { p { (view.left_out) " more not shown; narrow the filters or export the CSV." } }
    }
}

/// Severities worst first (critical, security, other, compliant), not
/// alphabetically; any other name after them.
fn by_severity(view: &scheduler::compliance::FleetCompliance) -> Vec<(&str, u64)> {
    const ORDER: [&str; 4] = ["critical", "security", "other", "compliant"];
    let mut rows: Vec<(&str, u64)> = view
        .by_severity
        .iter()
        .map(|(severity, count)| (severity.as_str(), *count))
        .collect();
    rows.sort_by_key(|(severity, _)| {
        ORDER
            .iter()
            .position(|known| known == severity)
            .unwrap_or(ORDER.len())
    });
    rows
}
