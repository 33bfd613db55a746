//! `run watch` (and the demo's): a run's progress as live bars and lines.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use api::json::RunDetail;
use scheduler::RunProgress;
use uuid::Uuid;

use crate::client::ApiClient;

/// A run on one line: state, counts and the error budget (the reason, which
/// may name a budget of its own, goes on a line of its own: see [`reason_line`]).
pub fn progress_line(progress: &RunProgress) -> String {
    let results: Vec<String> = progress
        .results
        .iter()
        .map(|(step, statuses)| {
            let counts: Vec<String> = statuses
                .iter()
                .map(|(status, n)| format!("{status} {n}"))
                .collect();
            format!("step {step}: {}", counts.join(", "))
        })
        .collect();
    format!(
        "{} {} {}: {} targets, {} in flight, {}/{} locations done, {}{}",
        progress.run_id,
        progress.campaign,
        progress.state,
        progress.total_targets,
        progress.targets_in_flight,
        progress.locations_done,
        progress.locations,
        budget_line(progress.failures, progress.allowed_errors),
        if results.is_empty() {
            String::new()
        } else {
            format!(" | {}", results.join("; "))
        }
    )
}

/// Why the run is in its state, as the scheduler recorded it.
pub fn reason_line(progress: &RunProgress) -> Option<String> {
    (!progress.reason.is_empty()).then(|| format!("  why: {}", progress.reason))
}

/// `run show`: the run, why it is where it is, what holds it, its waves and
/// every location.
pub fn detail_lines(detail: &RunDetail) -> Vec<String> {
    let mut lines = vec![progress_line(&detail.progress)];
    lines.extend(reason_line(&detail.progress));
    lines.push(format!("  {}", time_line(&detail.progress)));
    lines.extend(in_flight_line(detail));
    if let Some(overrides) = &detail.progress.overrides {
        lines.push(format!("  {overrides}"));
    }
    lines.extend(hold_lines(detail));
    lines.extend(
        wave_lines(&detail.progress)
            .into_iter()
            .map(|line| format!("  {line}")),
    );
    for location in &detail.location_states {
        lines.push(format!(
            "  {}/{:<16} {:<12} {:>7} targets{}",
            location.account_id,
            location.region,
            location.state,
            location.targets,
            location
                .failure
                .as_ref()
                .map(|failure| format!("  {failure}"))
                .unwrap_or_default()
        ));
    }
    lines
}

/// When the run was made and ended, and how long it took (or runs).
fn time_line(progress: &RunProgress) -> String {
    let at = |ms: u64| {
        protocol::job::UnixMillis(ms)
            .to_rfc3339()
            .unwrap_or_else(|| format!("{ms} ms"))
    };
    let took = |from: u64, to: u64| {
        humantime::format_duration(Duration::from_secs(to.saturating_sub(from) / 1000))
    };
    match progress.ended_ms {
        Some(ended) => format!(
            "created {}, ended {} (took {})",
            at(progress.created_ms),
            at(ended),
            took(progress.created_ms, ended)
        ),
        None if progress.finished => format!("created {}", at(progress.created_ms)),
        None => format!(
            "created {}, running for {}",
            at(progress.created_ms),
            took(progress.created_ms, protocol::job::UnixMillis::now().0)
        ),
    }
}

/// The targets in flight split into those sending (or running) and those
/// whose send a worker holds back; nothing when none is held.
fn in_flight_line(detail: &RunDetail) -> Option<String> {
    let in_flight = detail.progress.targets_in_flight;
    let held = scheduler::explain::held_targets(&detail.holds, in_flight);
    (held > 0).then(|| {
        format!(
            "  in flight: {} sending or running, {held} held back",
            in_flight - held
        )
    })
}

/// What keeps the run from moving, as the scheduler sees it now.
pub fn hold_lines(detail: &RunDetail) -> Vec<String> {
    detail
        .holds
        .iter()
        .map(|hold| format!("  waiting: {hold}"))
        .collect()
}

/// The global kill switch when it is engaged (`run list` says it above the
/// runs: it holds every send). Nothing when released or when the caller
/// may not read it.
pub fn kill_switch_line(client: &ApiClient) -> Option<String> {
    let answer: serde_json::Value = client.get("/kill").ok()?;
    (answer["engaged"] == serde_json::json!(true)).then(|| {
        format!(
            "the global kill switch is ENGAGED ({}): no run sends until `flotilla kill release`",
            answer["reason"].as_str().unwrap_or("no reason given")
        )
    })
}

/// Ctrl-C while watching ends the watching, not the run: say so, and how to
/// watch again, then exit 130 as an interrupted command does.
pub fn on_interrupt_say_the_run_goes_on(run_id: Uuid) {
    let spawned = std::thread::Builder::new()
        .name("ctrl-c".into())
        .spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            if runtime.block_on(tokio::signal::ctrl_c()).is_ok() {
                eprintln!(
                    "\nstopped watching; run {run_id} goes on. Watch it again with `flotilla run watch {run_id}`, stop it with `flotilla run cancel {run_id}`"
                );
                std::process::exit(130);
            }
        });
    if let Err(error) = spawned {
        tracing::debug!(%error, "cannot watch for Ctrl-C; it stops the command silently");
    }
}

/// One wave of a rollout: where it is, its targets and failures, its gates.
pub fn wave_line(wave: &scheduler::rollout::WaveProgress, waves: usize) -> String {
    let through = match (wave.targets, wave.failures) {
        (Some(targets), Some(failures)) => format!(", {targets} targets, {failures} failed"),
        _ => String::new(),
    };
    let gates: Vec<String> = wave
        .gates
        .iter()
        .map(|gate| {
            if gate.passed {
                format!("{} passed", gate.gate)
            } else {
                format!("{} FAILED: {}", gate.gate, gate.detail)
            }
        })
        .collect();
    format!(
        "wave {}/{waves} (up to {} targets): {}{through}{}",
        wave.wave,
        wave.cumulative_targets,
        wave.state,
        if gates.is_empty() {
            String::new()
        } else {
            format!(" | {}", gates.join("; "))
        }
    )
}

/// The wave lines of a run, bake end included.
pub fn wave_lines(progress: &RunProgress) -> Vec<String> {
    progress
        .waves
        .iter()
        .map(|wave| {
            let mut line = wave_line(wave, progress.waves.len());
            if wave.state == "baking"
                && let Some(until) = progress
                    .bake_until_ms
                    .and_then(|ms| protocol::job::UnixMillis(ms).to_datetime())
            {
                line.push_str(&format!(
                    ", gates checked at {}",
                    until.format("%H:%M:%S UTC")
                ));
            }
            line
        })
        .collect()
}

/// Progress bars until the run is finished: targets with a result of the last
/// step reached, failures against the budget, and locations by state.
/// The failures bar's text: the real count, never clamped to the bar.
fn budget_line(failures: u64, allowed: Option<u64>) -> String {
    match allowed {
        None => format!("{failures} failed (budget known once discovery ends)"),
        Some(allowed) if failures > allowed => {
            format!("{failures} failed of {allowed} allowed (budget exceeded)")
        }
        Some(allowed) => format!(
            "{failures} failed of {allowed} allowed ({} left)",
            allowed - failures
        ),
    }
}

pub(crate) fn watch(
    client: &ApiClient,
    run_id: Uuid,
    out: &mut impl Write,
) -> anyhow::Result<ExitCode> {
    use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
    let bars = MultiProgress::new();
    let targets = bars.add(ProgressBar::new(0));
    targets.set_style(
        ProgressStyle::with_template("targets   {bar:40} {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let budget = bars.add(ProgressBar::new(0));
    budget.set_style(
        ProgressStyle::with_template("failures  {bar:40} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let locations = bars.add(ProgressBar::new_spinner());
    let waves = bars.add(ProgressBar::new_spinner());
    let holds = bars.add(ProgressBar::new_spinner());
    on_interrupt_say_the_run_goes_on(run_id);
    loop {
        let detail: RunDetail = client.get(&format!("/runs/{run_id}"))?;
        let progress = &detail.progress;
        let finished_targets: u64 = progress
            .results
            .get(&0)
            .map_or(0, |statuses| statuses.values().sum());
        targets.set_length(progress.total_targets.max(1));
        targets.set_position(finished_targets);
        let held = scheduler::explain::held_targets(&detail.holds, progress.targets_in_flight);
        targets.set_message(if held > 0 {
            format!(
                "{} in flight ({held} held back) · {}",
                progress.targets_in_flight, progress.state
            )
        } else {
            format!(
                "{} in flight · {}",
                progress.targets_in_flight, progress.state
            )
        });
        let allowed = progress.allowed_errors.unwrap_or(0);
        budget.set_length(allowed.max(1));
        budget.set_position(progress.failures.min(allowed));
        budget.set_message(budget_line(progress.failures, progress.allowed_errors));
        let mut by_state: std::collections::BTreeMap<&str, usize> =
            std::collections::BTreeMap::new();
        for location in &detail.location_states {
            *by_state.entry(location.state.as_str()).or_default() += 1;
        }
        let states: Vec<String> = by_state
            .iter()
            .map(|(state, n)| format!("{state} {n}"))
            .collect();
        locations.set_message(format!("locations {}", states.join(" · ")));
        locations.tick();
        let lines = wave_lines(progress);
        let current = progress
            .waves
            .iter()
            .position(|wave| wave.state != "passed")
            .unwrap_or(lines.len().saturating_sub(1));
        if let Some(line) = lines.get(current) {
            waves.set_message(line.clone());
            waves.tick();
        }
        holds.set_message(hold_lines(&detail).join("\n"));
        holds.tick();
        if progress.finished {
            // `abandon`, not `finish`: finishing fills a bar to its length,
            // which would show a budget spent that was not.
            targets.abandon();
            budget.abandon();
            locations.abandon();
            waves.finish_and_clear();
            holds.finish_and_clear();
            writeln!(out, "{}", progress_line(progress))?;
            if let Some(reason) = reason_line(progress) {
                writeln!(out, "{reason}")?;
            }
            for line in &lines {
                writeln!(out, "  {line}")?;
            }
            writeln!(out, "results: {}", progress.results_location)?;
            return Ok(if progress.state == protocol::run::RunState::Completed {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            });
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_failures_line_shows_the_real_count() {
        assert_eq!(
            budget_line(266, Some(449)),
            "266 failed of 449 allowed (183 left)"
        );
        assert_eq!(
            budget_line(9, Some(5)),
            "9 failed of 5 allowed (budget exceeded)"
        );
        assert!(budget_line(3, None).starts_with("3 failed"));
    }
}
