//! The console's pages as HTML, by maud: every value is escaped as it is
//! spliced in, so ids, reasons and failure text from hosts never become
//! markup. No inline script or style (the CSP forbids both): bars are
//! `<progress>` and `<meter>`, colours are classes, charts are SVG.

use std::collections::BTreeMap;

use maud::{DOCTYPE, Markup, html};
use protocol::run::RunState;

use crate::auth::{Permission, Principal};
use crate::compliance::FleetCompliance;
use crate::ledger::LocationStatus;
use crate::progress::RunProgress;

/// What every page shows around its content.
pub struct Frame<'a> {
    pub principal: &'a Principal,
    pub csrf: &'a str,
    /// The global kill switch's reason, when it is engaged.
    pub kill: Option<&'a str>,
}

impl Frame<'_> {
    /// Whether to show a button: the server checks again on every request.
    pub fn may(&self, permission: Permission) -> bool {
        self.principal.role.allows(permission)
    }
}

/// Every console document: its head (the stylesheet; the script on pages
/// with live parts) around `body`.
fn document(title: &str, body_class: &str, live: bool, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · flotilla" }
                link rel="stylesheet" href="/ui/static/console.css";
                @if live { script src="/ui/static/console.js" defer {} }
            }
            body class=[(!body_class.is_empty()).then_some(body_class)] { (body) }
        }
    }
}

pub fn page(frame: &Frame, title: &str, content: Markup) -> Markup {
    let body = html! {
                header {
                    a.brand href="/ui/runs" { "flotilla" }
                    nav {
                        a href="/ui/runs" { "Runs" }
                        a href="/ui/campaigns" { "Campaigns" }
                        a href="/ui/compliance" { "Compliance" }
                    }
                    span.who { (frame.principal.name) " (" (frame.principal.role) ")" }
                    form.inline method="post" action="/ui/logout" {
                        input type="hidden" name="csrf" value=(frame.csrf);
                        button type="submit" { "Sign out" }
                    }
                }
                (kill_switch(frame))
                main { h1 { (title) } (content) }
    };
    document(title, "", true, body)
}

/// The kill switch on every page: its state, and engage or release with a
/// reason and a confirmation.
fn kill_switch(frame: &Frame) -> Markup {
    html! {
        @match frame.kill {
            Some(reason) => {
                section #kill .engaged {
                    strong { "KILL SWITCH ENGAGED" } " — " span #kill-reason { (reason) }
                    " Every worker has stopped sending commands."
                    @if frame.may(Permission::ReleaseKill) { form.inline method="post" action="/ui/kill/release" {
                        input type="hidden" name="csrf" value=(frame.csrf);
                        input type="text" name="reason" placeholder="why release" required maxlength="1024";
                        label { input type="checkbox" name="confirm" value="yes" required; " I confirm" }
                        button #kill-release type="submit" { "Release" }
                    } }
                }
            }
            None => {
                section #kill .released {
                    span #kill-state { "Kill switch released." }
                    @if frame.may(Permission::EngageKill) { details {
                        summary { "Engage the kill switch" }
                        form.inline method="post" action="/ui/kill" {
                            input type="hidden" name="csrf" value=(frame.csrf);
                            input #kill-reason-input type="text" name="reason" placeholder="why everything stops" required maxlength="1024";
                            label { input #kill-confirm type="checkbox" name="confirm" value="yes" required; " stop every worker now" }
                            button #kill-engage .danger type="submit" { "Engage" }
                        }
                    } }
                }
            }
        }
    }
}

/// The sign-in form; `preset` names who signs in without a token (anonymous
/// without authentication, or a client certificate's principal).
pub fn login(message: Option<&str>, next: &str, preset: Option<&str>) -> Markup {
    let body = html! {
                main {
                    h1 { "flotilla" }
                    @if let Some(message) = message { p.error { (message) } }
                    form method="post" action="/ui/login" {
                        input type="hidden" name="next" value=(next);
                        @if let Some(name) = preset {
                            p { "You sign in as " code { (name) } @if name == "anonymous" { " (this scheduler runs without authentication, on loopback only)" } @else { " (your client certificate)" } "." }
                        } @else {
                            label for="token" { "API token" }
                            input #token type="password" name="token" autocomplete="off" required maxlength="4096";
                            p.hint { "A flotilla token (" code { "flotilla token create" } ") or your SSO token. The console keeps a session cookie, never the token." }
                        }
                        button #sign-in type="submit" { "Sign in" }
                    }
                }
    };
    document("Sign in", "login", false, body)
}

pub fn error(status: u16, message: &str) -> Markup {
    let body = html! {
        main {
            h1 { "Not done (" (status) ")" }
            p.error #error { (message) }
            p { a href="/ui/runs" { "Back to the runs" } }
        }
    };
    document("Error", "", false, body)
}

/// `3m`, `2h`, `5d` since `then`.
pub fn age(now_ms: u64, then_ms: u64) -> String {
    if then_ms == 0 {
        return "–".into();
    }
    let seconds = now_ms.saturating_sub(then_ms) / 1000;
    match seconds {
        0..60 => format!("{seconds}s"),
        60..3600 => format!("{}m", seconds / 60),
        3600..86_400 => format!("{}h", seconds / 3600),
        _ => format!("{}d", seconds / 86_400),
    }
}

fn state_class(state: RunState) -> &'static str {
    match state {
        RunState::Completed => "st ok",
        RunState::Halted => "st bad",
        RunState::Cancelled | RunState::Paused => "st warn",
        _ => "st live",
    }
}

/// Targets through the first step: every target's result has come in for it.
fn finished_targets(progress: &RunProgress) -> u64 {
    progress.step_results(0)
}

fn budget(progress: &RunProgress) -> Markup {
    html! {
        @match progress.allowed_errors {
            Some(allowed) => {
                meter min="0" max=(allowed.max(1)) low=(allowed.max(1) / 2) high=(allowed.max(1) * 9 / 10) optimum="0" value=(progress.failures.min(allowed.max(1))) {}
                " " span.failures { (progress.failures) } " / " (allowed)
            }
            None => { span.failures { (progress.failures) } }
        }
    }
}

/// The runs table (the live part of the runs page).
pub fn runs_table(runs: &[RunProgress], now_ms: u64) -> Markup {
    html! {
        table #runs-table {
            thead { tr { th { "State" } th { "Campaign" } th { "Progress" } th { "Failures / budget" } th { "Started by" } th { "Age" } th { "Run" } } }
            tbody {
                @for run in runs {
                    @let done = finished_targets(run);
                    tr data-run=(run.run_id) {
                        td { span class=(state_class(run.state)) { (run.state) } }
                        td { a href={ "/ui/campaigns/" (run.campaign) } { (run.campaign) } }
                        td {
                            progress max=(run.total_targets.max(1)) value=(done) {}
                            " " span.done { (done) } " / " span.total { (run.total_targets) }
                        }
                        td { (budget(run)) }
                        td { (run.started_by) }
                        td { (age(now_ms, run.created_ms)) }
                        td { a.run-link href={ "/ui/runs/" (run.run_id) } { (short_id(&run.run_id.to_string())) } }
                    }
                }
                @if runs.is_empty() { tr { td colspan="7" { "No runs yet." } } }
            }
        }
    }
}

fn short_id(id: &str) -> &str {
    id.get(..8).unwrap_or(id)
}

pub fn runs_page(table: Markup, page: usize, pages: usize, total: u64) -> Markup {
    html! {
        div #runs data-live={ "/ui/runs?fragment=1&page=" (page) } { (table) }
        p.pager {
            (total) " runs · page " (page) " of " (pages.max(1)) " "
            @if page > 1 { a href={ "/ui/runs?page=" (page - 1) } { "← newer" } " " }
            @if page < pages { a href={ "/ui/runs?page=" (page + 1) } { "older →" } }
        }
    }
}

/// A location's cell class: its state, and its failure share in fifths.
fn cell_class(location: &LocationStatus) -> String {
    let share = if location.results == 0 {
        0
    } else {
        // 1..=5: any failure at all shows.
        (location.target_failures * 5)
            .div_ceil(location.results)
            .min(5)
    };
    let state = if location.failure.is_some() {
        "failed"
    } else {
        location.state.as_str()
    };
    format!("cell {state} f{share}")
}

/// The live part of a run page: bars, budget, waves, grid, failures.
pub fn run_live(
    progress: &RunProgress,
    locations: &[LocationStatus],
    selected: Option<&str>,
) -> Markup {
    let done = finished_targets(progress);
    let mut accounts: BTreeMap<&str, BTreeMap<&str, &LocationStatus>> = BTreeMap::new();
    let mut regions: Vec<&str> = Vec::new();
    for location in locations {
        accounts
            .entry(location.account_id.as_str())
            .or_default()
            .insert(location.region.as_str(), location);
        if !regions.contains(&location.region.as_str()) {
            regions.push(location.region.as_str());
        }
    }
    regions.sort_unstable();
    html! {
        dl.summary {
            dt { "State" } dd { span #run-state class=(state_class(progress.state)) { (progress.state) } }
            dt { "Why" } dd #run-reason { (progress.reason) }
            dt { "Targets" } dd { span #run-done { (done) } " of " (progress.total_targets) " finished, " (progress.targets_in_flight) " in flight" }
            dt { "Locations" } dd { (progress.locations_done) " of " (progress.locations) " done, " (progress.locations_failed) " failed" }
            dt { "Error budget" } dd #run-budget { (budget(progress)) }
            dt { "Started by" } dd { (progress.started_by) }
        }
        h2 { "Steps" }
        @for (step, statuses) in &progress.results {
            @let through: u64 = statuses.values().sum();
            div.step {
                span.label { "step " (step) } " "
                progress max=(progress.total_targets.max(1)) value=(through) {}
                " " (through) " / " (progress.total_targets) " · "
                @for (status, count) in statuses { span.status { (status) " " (count) } " " }
            }
        }
        @if progress.results.is_empty() { p { "No results yet." } }
        @if !progress.waves.is_empty() {
            h2 { "Waves" }
            table.waves {
                thead { tr { th { "Wave" } th { "State" } th { "Targets (cumulative)" } th { "Failed" } th { "Gates" } } }
                tbody {
                    @for wave in &progress.waves {
                        tr {
                            td { (wave.wave) } td { (wave.state) } td { (wave.cumulative_targets) }
                            td { (wave.failures.map(|n| n.to_string()).unwrap_or_default()) }
                            td { @for gate in &wave.gates {
                                span class=(if gate.passed { "gate ok" } else { "gate bad" }) { (gate.gate) @if !gate.passed { ": " (gate.detail) } } " "
                            } }
                        }
                    }
                }
            }
        }
        h2 { "Locations" }
        p.legend {
            span.cell.waiting {} " waiting " span.cell.active {} " active " span.cell.done.f0 {} " done "
            span.cell.done.f2 {} " some failed " span.cell.done.f5 {} " all failed " span.cell.failed {} " location failed"
        }
        table #grid .grid {
            thead { tr { th { "Account" } @for region in &regions { th { (region) } } } }
            tbody {
                @for (account, by_region) in &accounts {
                    tr {
                        th { (account) }
                        @for region in &regions {
                            td { @if let Some(location) = by_region.get(region) {
                                @let key = format!("{account}/{region}");
                                a class=(cell_class(location)) href={ "?location=" (key) "#detail" }
                                    title={ (key) ": " (location.state) ", " (location.target_failures) " of " (location.results) " failed" } {}
                            } }
                        }
                    }
                }
            }
        }
        @if let Some(selected) = selected {
            @if let Some(location) = locations.iter().find(|l| format!("{}/{}", l.account_id, l.region) == selected) {
                section #detail {
                    h2 { "Location " (selected) }
                    dl.summary {
                        dt { "State" } dd { (location.state) }
                        dt { "Targets" } dd { (location.targets) }
                        dt { "Results in" } dd { (location.results) }
                        dt { "Failed targets" } dd { (location.target_failures) }
                        dt { "Batches left" } dd { (location.batches_left) }
                        @if let Some(failure) = &location.failure { dt { "Failure" } dd.error { (failure) } }
                    }
                }
            }
        }
        h2 { "Top failures" }
        (top_failures(progress, locations))
    }
}

/// What went wrong, grouped: failed targets by step, status and cause (the
/// first line of their output, masked), and whole locations by their failure.
fn top_failures(progress: &RunProgress, locations: &[LocationStatus]) -> Markup {
    let mut by_location: BTreeMap<String, u64> = BTreeMap::new();
    for location in locations {
        if let Some(failure) = &location.failure {
            let text: String = failure.chars().take(200).collect();
            *by_location
                .entry(crate::failures::failure_signature(&text))
                .or_default() += 1;
        }
    }
    let mut by_location: Vec<(String, u64)> = by_location.into_iter().collect();
    by_location.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    html! {
        @if progress.top_failures.is_empty() && by_location.is_empty() { p { "None." } } @else {
            table #failures {
                thead { tr { th { "Step" } th { "Status" } th { "Cause" } th { "Targets" } } }
                tbody {
                    @for kind in &progress.top_failures {
                        tr { td { (kind.step) } td { (kind.status) } td.cause { (kind.cause) } td.n { (kind.targets) } }
                    }
                    @for (failure, count) in by_location.iter().take(10) {
                        tr { td { "–" } td { "location failed" } td.cause { (failure) } td.n { (count) " locations" } }
                    }
                }
            }
        }
    }
}

pub fn run_page(frame: &Frame, progress: &RunProgress, live: Markup, live_url: &str) -> Markup {
    let id = progress.run_id;
    let steer = |action: &str, label: &str, class: &str| {
        html! {
            form.inline.steer method="post" action={ "/ui/runs/" (id) "/" (action) } {
                input type="hidden" name="csrf" value=(frame.csrf);
                input type="text" name="reason" placeholder={ "why " (action) } maxlength="1024";
                button #{ "run-" (action) } class=(class) type="submit" { (label) }
            }
        }
    };
    html! {
        p { "Campaign " a href={ "/ui/campaigns/" (progress.campaign) } { (progress.campaign) } " · run " code { (id) } " · results in " code { (progress.results_location) } }
        @if !progress.state.is_final() {
            div.actions {
                @if frame.may(Permission::SteerRun) {
                    @if progress.state == RunState::Paused { (steer("resume", "Resume", "")) } @else { (steer("pause", "Pause", "")) }
                }
                @if progress.state == RunState::AwaitingApproval && frame.may(Permission::ApproveCampaign) {
                    (steer("approve", "Approve the next wave", ""))
                }
                @if frame.may(Permission::SteerRun) { (steer("cancel", "Cancel", "danger")) }
            }
        }
        div #run-live data-live=(live_url) { (live) }
    }
}

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

/// The trend as SVG bars: the non-compliant share per day.
fn trend_chart(view: &FleetCompliance) -> Markup {
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
                table #by-severity { tbody { @for (severity, count) in &view.by_severity { tr { td { (severity) } td.n { (count) } } } } } }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn location(state: &str, results: u64, failed: u64, failure: Option<&str>) -> LocationStatus {
        LocationStatus {
            account_id: "111111111111".into(),
            region: "us-east-1".into(),
            state: state.into(),
            targets: results,
            batches_left: 0,
            failure: failure.map(String::from),
            results,
            target_failures: failed,
        }
    }

    #[test]
    fn a_cell_shows_its_state_and_any_failure_share_in_fifths() {
        assert_eq!(cell_class(&location("done", 100, 0, None)), "cell done f0");
        assert_eq!(
            cell_class(&location("done", 100, 1, None)),
            "cell done f1",
            "one failure shows"
        );
        assert_eq!(cell_class(&location("done", 100, 50, None)), "cell done f3");
        assert_eq!(
            cell_class(&location("active", 10, 10, None)),
            "cell active f5"
        );
        assert_eq!(
            cell_class(&location("waiting", 0, 0, None)),
            "cell waiting f0"
        );
        assert_eq!(
            cell_class(&location("done", 0, 0, Some("AccessDenied"))),
            "cell failed f0"
        );
    }

    #[test]
    fn ages_read_in_the_largest_whole_unit() {
        let now = 10 * 86_400_000;
        assert_eq!(age(now, now - 5_000), "5s");
        assert_eq!(age(now, now - 125_000), "2m");
        assert_eq!(age(now, now - 7_200_000), "2h");
        assert_eq!(age(now, now - 3 * 86_400_000), "3d");
        assert_eq!(age(now, 0), "–");
        assert_eq!(age(now, now + 5_000), "0s", "a clock ahead is not negative");
    }
}
