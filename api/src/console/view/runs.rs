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

/// When the run was made, in UTC.
fn created_at(ms: u64) -> String {
    protocol::job::UnixMillis(ms).to_datetime().map_or_else(
        || "–".into(),
        |at| at.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
    )
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
/// "running 12m, about 4m left" from the run's own pace: targets finished
/// so far over the time since it was made.
pub(super) fn pace(progress: &RunProgress, now_ms: u64) -> String {
    let elapsed_ms = now_ms.saturating_sub(progress.created_ms);
    let took = age(now_ms, progress.created_ms);
    if progress.finished {
        return match progress.ended_ms {
            Some(ended) => format!(
                "took {}; ended {} ago",
                humantime::format_duration(std::time::Duration::from_secs(
                    ended.saturating_sub(progress.created_ms) / 1000
                )),
                age(now_ms, ended)
            ),
            None => format!("finished; made {took} ago"),
        };
    }
    let done = finished_targets(progress);
    let left = progress.total_targets.saturating_sub(done);
    if done == 0 || left == 0 || elapsed_ms == 0 {
        return format!("running {took}, no estimate yet");
    }
    // left / (done / elapsed), in whole milliseconds.
    let eta_ms = u64::try_from(u128::from(left) * u128::from(elapsed_ms) / u128::from(done))
        .unwrap_or(u64::MAX);
    format!(
        "running {took}, about {} left at its pace",
        age(eta_ms, 0).trim_start_matches('–')
    )
}

/// A step's label: its number from 1 and its name.
fn step_label(steps: &[String], index: u16) -> String {
    match steps.get(usize::from(index)) {
        Some(name) => format!("{}. {name}", index + 1),
        None => format!("step {}", index + 1),
    }
}

pub fn run_live(
    progress: &RunProgress,
    steps: &[String],
    holds: &[scheduler::explain::Hold],
    locations: &[LocationStatus],
    selected: Option<&str>,
    now_ms: u64,
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
            dt { "Targets" } dd {
                span #run-done { (done) } " of " (progress.total_targets) " finished, " (progress.targets_in_flight) " in flight"
                @let held = scheduler::explain::held_targets(holds, progress.targets_in_flight);
                @if held > 0 { " (" span #run-held { (held) } " held back)" }
            }
            dt { "Locations" } dd { (progress.locations_done) " of " (progress.locations) " done, " (progress.locations_failed) " failed" }
            dt { "Error budget" } dd #run-budget { (budget(progress)) }
            dt { "Started by" } dd { (progress.started_by) }
            dt { "Created" } dd #run-created { (created_at(progress.created_ms)) }
            @if let Some(ended) = progress.ended_ms { dt { "Ended" } dd #run-ended { (created_at(ended)) } }
            dt { "Time" } dd #run-pace { (pace(progress, now_ms)) }
            @if let Some(overrides) = &progress.overrides { dt { "Overrides" } dd #run-overrides { (overrides) } }
        }
        h2 { "Steps" }
        @for (step, statuses) in &progress.results {
            @let through: u64 = statuses.values().sum();
            div.step {
                span.label { (step_label(steps, *step)) } " "
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
        p.legend #legend {
            span.cell.waiting {} " queued or waiting to start " span.cell.discovering {} " discovering "
            span.cell.active {} " active " span.cell.done.f0 {} " done, none failed "
            span.cell.done.f1 {} " ≤ 20% failed " span.cell.done.f2 {} " ≤ 40% " span.cell.done.f3 {} " ≤ 60% "
            span.cell.done.f4 {} " ≤ 80% " span.cell.done.f5 {} " more (active cells too) "
            span.cell.failed {} " location failed " span.cell.closed {} " closed by a cancel"
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
        (top_failures(progress, steps, locations))
    }
}

/// What went wrong, grouped: failed targets by step, status and cause (the
/// first line of their output, masked), and whole locations by their failure.
fn top_failures(progress: &RunProgress, steps: &[String], locations: &[LocationStatus]) -> Markup {
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
                        tr { td { (step_label(steps, kind.step)) } td { (kind.status) } td.cause { (kind.cause) } td.n { (kind.targets) } }
                    }
                    @for (failure, count) in by_location.iter().take(10) {
                        tr { td { "–" } td { "location failed" } td.cause { (failure) } td.n { (count) " locations" } }
                    }
                }
            }
        }
    }
}

/// The steering a run's state allows, as the engine decides it: Pause while
/// it may still send, Resume when paused, approving the next wave while a
/// rollout waits for it, Cancel until it is over. Part of the live fragment,
/// so a run that halts or completes while the page is open stops offering
/// what it no longer allows.
pub fn run_actions(frame: &Frame, progress: &RunProgress) -> Markup {
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
    let state = progress.state;
    let steering = frame.may(Permission::SteerRun);
    html! {
        @if !state.is_final() && !progress.finished {
            div.actions #run-actions {
                @if steering && state == RunState::Paused { (steer("resume", "Resume", "")) }
                @if steering && state.may_pause() { (steer("pause", "Pause", "")) }
                @if state == RunState::AwaitingApproval && frame.may(Permission::ApproveCampaign) {
                    (steer("approve", "Approve the next wave", ""))
                }
                @if steering { (steer("cancel", "Cancel", "danger")) }
            }
        }
    }
}

pub fn run_page(
    progress: &RunProgress,
    live: Markup,
    live_url: &str,
    instances: Option<Markup>,
) -> Markup {
    let id = progress.run_id;
    html! {
        p { "Campaign " a href={ "/ui/campaigns/" (progress.campaign) } { (progress.campaign) } " · run " code { (id) } " · results in " code { (progress.results_location) } }
        div #run-live data-live=(live_url) { (live) }
        @if let Some(instances) = instances { (instances) }
    }
}

/// Instances a location's page lists (failures first); the report's CSV has all.
pub const LOCATION_INSTANCES: usize = 500;

/// What a location's page shows of its results.
pub struct LocationInstances {
    /// Results of the location in all.
    pub total: usize,
    /// The first [`LOCATION_INSTANCES`], failures first.
    pub records: Vec<scheduler::sink::ResultRecord>,
    /// Failed results by (step, status, cause), most first (at most 10).
    pub failures: Vec<((u16, String, String), u64)>,
}

fn at(ms: Option<protocol::job::UnixMillis>) -> String {
    ms.and_then(protocol::job::UnixMillis::to_datetime)
        .map_or_else(|| "–".into(), |at| at.format("%H:%M:%S").to_string())
}

/// A location's instances: status, timings, and what each command printed
/// (as SSM returned its start; with `output_logging`, where the whole output
/// is) — to principals who may steer runs; others see each result's masked
/// cause, as the run's top failures show it (outputs may hold what a host
/// should not tell a viewer). `Err`: why they cannot be read. Read once per
/// page view (reload for the latest).
pub fn location_instances(
    instances: &Result<LocationInstances, String>,
    steps: &[String],
    may_read_output: bool,
) -> Markup {
    html! {
        section #instances {
            @if let Ok(found) = instances && !found.failures.is_empty() {
                h2 { "This location's top failures" }
                table #location-failures {
                    thead { tr { th { "Step" } th { "Status" } th { "Cause" } th { "Targets" } } }
                    tbody {
                        @for ((step, status, cause), count) in &found.failures {
                            tr { td { (step_label(steps, *step)) } td { (status) } td.cause { (cause) } td.n { (count) } }
                        }
                    }
                }
            }
            h2 { "Instances" }
            @match instances {
                Err(why) => { p.error { (why) } }
                Ok(found) if found.records.is_empty() => { p { "No results yet." } }
                Ok(LocationInstances { total, records, .. }) => {
                    @if *total > records.len() {
                        p { "The first " (records.len()) " of " (*total) " results, failures first; every one: " code { "flotilla report RUN --format csv" } }
                    }
                    table #instance-table {
                        thead { tr { th { "Instance" } th { "Step" } th { "Status" } th { "Requested" } th { "Started" } th { "Finished" } th { "Code" } th { "Output" } } }
                        tbody {
                            @for record in records {
                                tr data-instance=(record.instance_id) {
                                    td { (record.instance_id) }
                                    td { (step_label(steps, record.step_index)) }
                                    td { span class=(if record.status == "Success" { "st ok" } else if record.status == "Not Started" { "st warn" } else { "st bad" }) { (record.status_detail) } }
                                    td { (at(record.requested_at)) }
                                    td { (at(record.started_at)) }
                                    td { (at(record.finished_at)) }
                                    td.n { (record.response_code.map(|code| code.to_string()).unwrap_or_default()) }
                                    td {
                                        @if may_read_output {
                                            details.output {
                                                summary { (record.output.lines().next().unwrap_or("(no output)")) }
                                                pre { (record.output) }
                                                @if let Some(location) = &record.output_location { p { "Whole output: " code { (location) } } }
                                                @if let Some(command) = &record.command_id { p { "Command " code { (command) } } }
                                            }
                                        } @else {
                                            span.cause { (scheduler::failures::failure_kind(&record.output)) }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}
