//! The runs list and one run's page: bars per step, the error budget,
//! waves, the location grid, top failures.

use std::collections::BTreeMap;

use maud::{Markup, html};
use protocol::run::RunState;
use scheduler::RunProgress;
use scheduler::auth::Permission;
use scheduler::ledger::LocationStatus;

use super::{Frame, age, short_id};

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
                    @if run.unreadable.is_some() {
                        tr data-run=(run.run_id) {
                            td { span.st.bad { "Unreadable" } }
                            td colspan="5" { (run.reason) }
                            td { (short_id(&run.run_id.to_string())) }
                        }
                    } @else {
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
                }
                @if runs.is_empty() { tr { td colspan="7" { "No runs yet." } } }
            }
        }
    }
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
pub(super) fn cell_class(location: &LocationStatus) -> String {
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
    holds: &[scheduler::explain::Hold],
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
            @if !holds.is_empty() {
                dt { "Waiting" }
                dd #run-holds { ul { @for hold in holds { li class=(format!("hold-{}", hold.kind)) { (hold.to_string()) } } } }
            }
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
                .entry(scheduler::failures::failure_signature(&text))
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
