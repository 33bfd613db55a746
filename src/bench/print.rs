//! The bench's table.

use std::io::Write;

use super::RunFigures;
use super::probe::percentile;
use super::scenarios::Fidelity;

pub(super) fn run(out: &mut dyn Write, title: &str, figures: &RunFigures) -> anyhow::Result<()> {
    writeln!(out, "\n{title}")?;
    let row =
        |out: &mut dyn Write, name: &str, value: String| writeln!(out, "  {name:<40} {value}");
    row(out, "targets", figures.targets.to_string())?;
    row(out, "state", figures.state.clone())?;
    row(out, "wall time", format!("{:.1} s", figures.wall_seconds))?;
    row(
        out,
        "targets/s",
        format!("{:.0}", figures.targets_per_second),
    )?;
    row(
        out,
        "targets with exactly one result",
        format!(
            "{} ({} with several)",
            figures.targets_with_one_result, figures.targets_with_several_results
        ),
    )?;
    row(
        out,
        "messages published per target",
        format!("{:.3}", figures.messages_published_per_target),
    )?;
    let calls: Vec<String> = figures
        .aws_calls_per_target
        .iter()
        .filter(|(_, n)| **n > 0.0)
        .map(|(operation, n)| format!("{operation} {n:.4}"))
        .collect();
    row(out, "AWS calls per target", calls.join(", "))?;
    row(
        out,
        "throttles",
        figures.throttles.values().sum::<u64>().to_string(),
    )?;
    row(
        out,
        "Redis commands per target",
        format!("{:.2}", figures.redis_commands_per_target),
    )?;
    let mut by_command: Vec<(&String, &f64)> = figures
        .redis_commands_per_target_by_command
        .iter()
        .collect();
    by_command.sort_by(|a, b| b.1.total_cmp(a.1));
    let top: Vec<String> = by_command
        .iter()
        .take(12)
        .map(|(name, n)| format!("{name} {n:.3}"))
        .collect();
    row(out, "  by command (top 12)", top.join(", "))?;
    let cpu: Vec<String> = figures
        .cpu_seconds_per_10k_targets
        .iter()
        .map(|(name, seconds)| format!("{name} {seconds:.2}"))
        .collect();
    row(out, "CPU-s per 10,000 targets", cpu.join(", "))?;
    let rss: Vec<String> = figures
        .processes
        .iter()
        .filter_map(|process| {
            process
                .peak_rss_mib
                .map(|mib| format!("{} {mib:.0}", process.name))
        })
        .collect();
    row(out, "peak RSS (MiB)", rss.join(", "))?;
    if let Some(fanout) = &figures.fanout {
        let seconds =
            |value: Option<f64>| value.map_or("not seen".to_string(), |s| format!("{s:.2} s"));
        row(
            out,
            &format!("fanout: {} Discover jobs published", fanout.locations),
            seconds(fanout.all_discover_published_seconds),
        )?;
        row(
            out,
            "fanout: first SendCommand",
            seconds(fanout.first_send_command_seconds),
        )?;
    }
    Ok(())
}

pub(super) fn fidelity(
    out: &mut dyn Write,
    rate: f64,
    fidelity: &Fidelity,
    figures: &RunFigures,
) -> anyhow::Result<()> {
    writeln!(
        out,
        "\nrate-fidelity: SendCommand limited to {rate}/s per location, {} locations ({}/s in all)\n  achieved {:.3} of the allowed rate (worst location {:.3}); throttles at the simulator: {}",
        fidelity.locations,
        rate * fidelity.locations as f64,
        fidelity.overall,
        fidelity.worst,
        figures.throttles.values().sum::<u64>()
    )?;
    Ok(())
}

pub(super) fn killswitch(
    out: &mut dyn Write,
    sorted_delays: &[f64],
    figures: &RunFigures,
) -> anyhow::Result<()> {
    writeln!(
        out,
        "\nkillswitch: {} trials during a scan of {} targets\n  engage → last SendCommand: p50 {:.3} s, p99 {:.3} s, max {:.3} s\n  after release the run ended {} with {} of {} targets holding exactly one result ({} with several)",
        sorted_delays.len(),
        figures.targets,
        percentile(sorted_delays, 0.5),
        percentile(sorted_delays, 0.99),
        sorted_delays.last().copied().unwrap_or(f64::NAN),
        figures.state,
        figures.targets_with_one_result,
        figures.targets,
        figures.targets_with_several_results
    )?;
    Ok(())
}

pub(super) fn scale_out_row(
    out: &mut dyn Write,
    workers: u16,
    figures: &RunFigures,
) -> anyhow::Result<()> {
    writeln!(
        out,
        "  {workers} worker(s): {:>7.1} s, {:>7.0} targets/s, throttles {}",
        figures.wall_seconds,
        figures.targets_per_second,
        figures.throttles.values().sum::<u64>()
    )?;
    Ok(())
}

pub(super) fn embedded(
    out: &mut dyn Write,
    workers: u16,
    figures: &RunFigures,
) -> anyhow::Result<()> {
    writeln!(
        out,
        "\nembedded (in-memory backends, {workers} workers, one process): {} targets in {:.1} s, {:.0} targets/s, {:.2} CPU-s per 10,000 targets, peak RSS {:.0} MiB",
        figures.targets,
        figures.wall_seconds,
        figures.targets_per_second,
        figures
            .cpu_seconds_per_10k_targets
            .get("flotilla")
            .copied()
            .unwrap_or(0.0),
        figures
            .processes
            .first()
            .and_then(|process| process.peak_rss_mib)
            .unwrap_or(0.0)
    )?;
    Ok(())
}
