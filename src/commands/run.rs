//! `flotilla run`: start (through the scheduler's start gate), list, show,
//! watch, pause, resume, cancel, approve a wave.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use api::json::RunDetail;
use clap::Subcommand;
use scheduler::RunProgress;
use serde_json::json;
use uuid::Uuid;

use super::{ApiArgs, apply, print_json};
use crate::client::ApiClient;
use crate::watch::{progress_line, watch};

#[derive(Debug, Subcommand)]
pub enum RunCommand {
    /// Start a run of a stored campaign.
    Start {
        name: String,
        /// Apply this spec first (it must be the campaign NAME).
        #[arg(short = 'f', long = "file")]
        file: Option<PathBuf>,
        /// Only discover: print the targets per location, send nothing.
        #[arg(long)]
        plan: bool,
        /// Show progress until the run ends; exit 0 only if it completed.
        #[arg(long)]
        watch: bool,
        /// Start although a change freeze covers the campaign: why
        /// (recorded; an approver's or admin's).
        #[arg(long, value_name = "REASON")]
        override_freeze: Option<String>,
        /// Start although another run of the campaign is live (by default a
        /// second run is refused: both could act on the same hosts).
        #[arg(long)]
        allow_concurrent: bool,
    },
    /// Recent runs with their counters.
    List {
        #[arg(long)]
        campaign: Option<String>,
        /// `json` prints the API's answer as it is, for scripts.
        #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
        format: OutputFormat,
    },
    /// One run: state, counters and every location.
    Show {
        run_id: Uuid,
        /// `json` prints the API's answer as it is, for scripts.
        #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
        format: OutputFormat,
    },
    /// Live progress until the run ends; exit 0 only if it completed.
    Watch { run_id: Uuid },
    /// Stop admitting and sending; in-flight commands finish.
    Pause {
        run_id: Uuid,
        #[arg(long)]
        reason: Option<String>,
    },
    Resume {
        run_id: Uuid,
        #[arg(long)]
        reason: Option<String>,
        /// Resume although an alert fires for the run's campaign: why (recorded).
        #[arg(long, value_name = "REASON")]
        despite_alert: Option<String>,
    },
    /// End the run; what was not started is reported as Not Started.
    Cancel {
        run_id: Uuid,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Let a rollout waiting between two waves (AwaitingApproval) go on
    /// (an approver's, not the run's starter's).
    Approve {
        run_id: Uuid,
        #[arg(long)]
        reason: Option<String>,
    },
}

/// How `run list` and `run show` print.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    /// One line per run (and per location), for people.
    Table,
    /// The API's JSON, pretty-printed.
    Json,
}

pub fn run(api: &ApiArgs, command: RunCommand, out: &mut impl Write) -> anyhow::Result<ExitCode> {
    let client = ApiClient::from_args(api)?;
    match command {
        RunCommand::Start {
            name,
            file,
            plan,
            watch: follow,
            override_freeze,
            allow_concurrent,
        } => {
            if let Some(file) = file {
                let applied = apply(&client, &file, out)?;
                if applied["name"].as_str() != Some(name.as_str()) {
                    anyhow::bail!(
                        "{} is campaign {}, not {name}",
                        file.display(),
                        applied["name"]
                    );
                }
            }
            let started: serde_json::Value = client.post_json(
                &format!("/campaigns/{name}/runs"),
                &json!({
                    "plan_only": plan,
                    "override_freeze": override_freeze,
                    "allow_concurrent": allow_concurrent,
                }),
            )?;
            let run_id: Uuid = serde_json::from_value(started["run_id"].clone())
                .context("the API answered without a run id")?;
            writeln!(
                out,
                "run {run_id} started ({name} v{})",
                started["campaign_version"]
            )?;
            out.flush()?;
            if plan {
                return print_plan(&client, run_id, out);
            }
            if follow {
                return watch(&client, run_id, out);
            }
        }
        RunCommand::List { campaign, format } => {
            let path = match campaign {
                Some(campaign) => format!("/runs?campaign={campaign}"),
                None => "/runs".to_string(),
            };
            if format == OutputFormat::Json {
                print_json(out, &client.get(&path)?)?;
                return Ok(ExitCode::SUCCESS);
            }
            let runs: Vec<RunProgress> = client.get(&path)?;
            for progress in &runs {
                writeln!(out, "{}", progress_line(progress))?;
            }
        }
        RunCommand::Show { run_id, format } => {
            if format == OutputFormat::Json {
                print_json(out, &client.get(&format!("/runs/{run_id}"))?)?;
                return Ok(ExitCode::SUCCESS);
            }
            let detail: RunDetail = client.get(&format!("/runs/{run_id}"))?;
            writeln!(out, "{}", progress_line(&detail.progress))?;
            for line in crate::watch::wave_lines(&detail.progress) {
                writeln!(out, "  {line}")?;
            }
            for location in &detail.location_states {
                writeln!(
                    out,
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
                )?;
            }
        }
        RunCommand::Watch { run_id } => return watch(&client, run_id, out),
        RunCommand::Pause { run_id, reason } => steer(&client, run_id, "pause", reason, out)?,
        RunCommand::Resume {
            run_id,
            reason,
            despite_alert,
        } => steer_with(&client, run_id, "resume", reason, despite_alert, out)?,
        RunCommand::Cancel { run_id, reason } => steer(&client, run_id, "cancel", reason, out)?,
        RunCommand::Approve { run_id, reason } => steer(&client, run_id, "approve", reason, out)?,
    }
    Ok(ExitCode::SUCCESS)
}

fn print_plan(client: &ApiClient, run_id: Uuid, out: &mut impl Write) -> anyhow::Result<ExitCode> {
    loop {
        let detail: RunDetail = client.get(&format!("/runs/{run_id}"))?;
        if detail.progress.finished {
            writeln!(out, "{}", detail.progress.reason)?;
            for location in &detail.location_states {
                writeln!(
                    out,
                    "  {}/{:<16} {:>7} targets",
                    location.account_id, location.region, location.targets
                )?;
            }
            return Ok(ExitCode::SUCCESS);
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

fn steer(
    client: &ApiClient,
    run_id: Uuid,
    action: &str,
    reason: Option<String>,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    steer_with(client, run_id, action, reason, None, out)
}

fn steer_with(
    client: &ApiClient,
    run_id: Uuid,
    action: &str,
    reason: Option<String>,
    despite_alert: Option<String>,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let mut body = json!({});
    if let Some(reason) = reason {
        body["reason"] = json!(reason);
    }
    if let Some(why) = despite_alert {
        body["despite_alert"] = json!(why);
    }
    let answer: serde_json::Value = client.post_json(&format!("/runs/{run_id}/{action}"), &body)?;
    let verb = if answer["changed"] == json!(true) {
        "now"
    } else {
        "unchanged,"
    };
    writeln!(
        out,
        "run {run_id} {verb} {}",
        answer["state"].as_str().unwrap_or_default()
    )?;
    Ok(())
}
