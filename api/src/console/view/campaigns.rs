//! The campaigns list and one campaign's page: versions, diff, last runs,
//! the start form.

use maud::{Markup, html};
use scheduler::RunProgress;

use super::runs::runs_table;

pub struct CampaignRow {
    pub name: String,
    pub version: u32,
    pub description: String,
    pub schedule: Option<String>,
    pub next_fires: Vec<String>,
    pub triggers: Vec<String>,
}

pub fn campaigns_page(rows: &[CampaignRow]) -> Markup {
    html! {
        table #campaigns {
            thead { tr { th { "Campaign" } th { "Version" } th { "Schedule" } th { "Next fire times (UTC)" } th { "Triggers" } th { "Description" } } }
            tbody {
                @for row in rows {
                    tr {
                        td { a href={ "/ui/campaigns/" (row.name) } { (row.name) } }
                        td { "v" (row.version) }
                        td { (row.schedule.clone().unwrap_or_default()) }
                        td { (row.next_fires.join(", ")) }
                        td { (row.triggers.join(", ")) }
                        td { (row.description) }
                    }
                }
                @if rows.is_empty() { tr { td colspan="6" { "No campaigns yet: " code { "flotilla campaign apply -f spec.yaml" } } } }
            }
        }
    }
}

pub struct CampaignDetail<'a> {
    pub row: &'a CampaignRow,
    pub shown: u32,
    pub yaml: String,
    pub author: String,
    pub approver: Option<String>,
    /// (against version, unified diff) when asked.
    pub diff: Option<(u32, Vec<(char, String)>)>,
    pub runs: Vec<RunProgress>,
    pub now_ms: u64,
    /// The session's CSRF token when its principal may start runs (the
    /// start form is shown; the start gate decides).
    pub start_csrf: Option<&'a str>,
}

pub fn campaign_page(detail: &CampaignDetail) -> Markup {
    let row = detail.row;
    html! {
        @if let Some(csrf) = detail.start_csrf {
            form.start method="post" action={ "/ui/campaigns/" (row.name) "/runs" } {
                input type="hidden" name="csrf" value=(csrf);
                label { input type="checkbox" name="plan_only" value="yes"; " plan only (discover, send nothing)" }
                " "
                label { input type="checkbox" name="allow_concurrent" value="yes"; " allow a second live run" }
                " "
                input type="text" name="override_freeze" placeholder="override a change freeze: why" maxlength="1024";
                " "
                button #start-run type="submit" { "Start a run of v" (row.version) }
            }
        }
        dl.summary {
            dt { "Latest version" } dd { "v" (row.version) }
            dt { "Schedule" } dd { (row.schedule.clone().unwrap_or_else(|| "none".into())) }
            dt { "Next fire times (UTC)" } dd { (row.next_fires.join(", ")) }
            dt { "Triggers" } dd { (if row.triggers.is_empty() { "none".to_string() } else { row.triggers.join(", ") }) }
        }
        form.versions method="get" {
            "Version " select name="version" { @for v in (1..=row.version).rev() { option value=(v) selected[v == detail.shown] { "v" (v) } } }
            " compared with " select name="against" {
                option value="" { "—" }
                @for v in (1..=row.version).rev() { option value=(v) selected[detail.diff.as_ref().is_some_and(|(a, _)| *a == v)] { "v" (v) } }
            }
            " " button type="submit" { "Show" }
        }
        p { "v" (detail.shown) " written by " (detail.author) @if let Some(approver) = &detail.approver { ", approved by " (approver) } }
        @if let Some((against, lines)) = &detail.diff {
            h2 { "Diff v" (against) " → v" (detail.shown) }
            pre #diff .diff { @for (sign, line) in lines {
                span class=(match sign { '+' => "add", '-' => "del", _ => "same" }) { (sign) " " (line) } "\n"
            } }
        }
        h2 { "v" (detail.shown) " as YAML" }
        pre #yaml { (detail.yaml) }
        h2 { "Last runs" }
        (runs_table(&detail.runs, detail.now_ms))
    }
}
