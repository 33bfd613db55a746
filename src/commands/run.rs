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

use super::{ApiArgs, OutputArgs, apply, print_json};
use crate::client::ApiClient;
use crate::watch::{progress_line, watch};

#[derive(Debug, Subcommand)]
pub enum RunCommand {
    /// Start a run of a stored campaign (through the start gate: approval,
    /// freezes, one live run per campaign).
    #[command(after_help = "Examples:
  flotilla run start patch-scan --watch
  flotilla run start patch-scan -f examples/patch-scan.yaml --plan
  RUN=$(flotilla run start patch-scan --format json | jq -r .run_id)
  flotilla run start patch-install --limit-regions eu-west-1 --limit-instances i-0abc,i-0def
  flotilla run start patch-install --param RebootOption=NoReboot")]
    Start {
        /// The stored campaign's name.
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
        /// Only these of the campaign's accounts (comma-separated or
        /// repeated); one it does not cover is refused, never added.
        #[arg(long, value_delimiter = ',', value_name = "ACCOUNT")]
        limit_accounts: Vec<String>,
        /// Only these of the campaign's regions; one it does not list is refused.
        #[arg(long, value_delimiter = ',', value_name = "REGION")]
        limit_regions: Vec<String>,
        /// Only these instances, each still matching the campaign's targets
        /// (tags, platform, online); one outside its id list is refused.
        #[arg(long, value_delimiter = ',', value_name = "INSTANCE_ID")]
        limit_instances: Vec<String>,
        /// A new value of a parameter the campaign lists in
        /// `overridable_parameters`, for this run; repeat for several. Under
        /// the two-person rule a changed value needs a new approved version.
        #[arg(long = "param", value_name = "KEY=VALUE", value_parser = parse_param)]
        params: Vec<(String, String)>,
    },
    /// Recent runs with their counters.
    List {
        /// Only this campaign's runs.
        #[arg(long)]
        campaign: Option<String>,
    },
    /// One run: state, counters, why it is not moving, and every location.
    Show {
        /// The run's id, as `run start` or `run list` printed it.
        run_id: Uuid,
    },
    /// Live progress until the run ends; exit 0 only if it completed
    /// (Ctrl-C stops watching, not the run).
    Watch {
        /// The run's id.
        run_id: Uuid,
    },
    /// Stop admitting and sending; in-flight commands finish.
    Pause {
        /// The run's id.
        run_id: Uuid,
        /// Why, for the audit trail and the run's record.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Go on after a pause (or past a failed rollout gate, an approver's).
    Resume {
        /// The run's id.
        run_id: Uuid,
        /// Why, for the audit trail and the run's record.
        #[arg(long)]
        reason: Option<String>,
        /// Resume although an alert fires for the run's campaign: why (recorded).
        #[arg(long, value_name = "REASON")]
        despite_alert: Option<String>,
    },
    /// End the run; what was not started is reported as Not Started.
    Cancel {
        /// The run's id.
        run_id: Uuid,
        /// Why, for the audit trail and the run's record.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Let a rollout waiting between two waves (AwaitingApproval) go on
    /// (an approver's, not the run's starter's).
    Approve {
        /// The run's id.
        run_id: Uuid,
        /// Why, for the audit trail and the run's record.
        #[arg(long)]
        reason: Option<String>,
    },
}

pub fn run(
    api: &ApiArgs,
    output: OutputArgs,
    command: RunCommand,
    out: &mut impl Write,
) -> anyhow::Result<ExitCode> {
    let client = ApiClient::from_args(api)?;
    let json = output.json();
    match command {
        RunCommand::Start {
            name,
            file,
            plan,
            watch: follow,
            override_freeze,
            allow_concurrent,
            limit_accounts,
            limit_regions,
            limit_instances,
            params,
        } => {
            if let Some(file) = file {
                let applied = apply(&client, &file, json, out)?;
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
                    "limit": {
                        "accounts": limit_accounts,
                        "regions": limit_regions,
                        "instance_ids": limit_instances,
                    },
                    "parameters": unique_params(params)?,
                }),
            )?;
            let run_id: Uuid = serde_json::from_value(started["run_id"].clone())
                .context("the API answered without a run id")?;
            let line = format!(
                "run {run_id} started ({name} v{})",
                started["campaign_version"]
            );
            if json {
                // One JSON document: the run as it ended when waited for,
                // else the start's answer ({"run_id", "campaign_version", …}).
                eprintln!("{line}");
                if plan || follow {
                    return wait_json(&client, run_id, out);
                }
                print_json(out, &started)?;
                return Ok(ExitCode::SUCCESS);
            }
            writeln!(out, "{line}")?;
            out.flush()?;
            if plan {
                return print_plan(&client, run_id, out);
            }
            if follow {
                return watch(&client, run_id, out);
            }
        }
        RunCommand::List { campaign } => {
            let path = match campaign {
                Some(campaign) => format!("/runs?campaign={campaign}"),
                None => "/runs".to_string(),
            };
            if json {
                print_json(out, &client.get::<serde_json::Value>(&path)?)?;
                return Ok(ExitCode::SUCCESS);
            }
            let runs: Vec<RunProgress> = client.get(&path)?;
            if let Some(switch) = crate::watch::kill_switch_line(&client) {
                writeln!(out, "{switch}")?;
            }
            for progress in &runs {
                writeln!(out, "{}", progress_line(progress))?;
                if let Some(reason) = crate::watch::reason_line(progress) {
                    writeln!(out, "{reason}")?;
                }
            }
        }
        RunCommand::Show { run_id } => {
            if json {
                print_json(
                    out,
                    &client.get::<serde_json::Value>(&format!("/runs/{run_id}"))?,
                )?;
                return Ok(ExitCode::SUCCESS);
            }
            let detail: RunDetail = client.get(&format!("/runs/{run_id}"))?;
            for line in crate::watch::detail_lines(&detail) {
                writeln!(out, "{line}")?;
            }
        }
        RunCommand::Watch { run_id } if json => return wait_json(&client, run_id, out),
        RunCommand::Watch { run_id } => return watch(&client, run_id, out),
        RunCommand::Pause { run_id, reason } => {
            steer(&client, run_id, "pause", reason, None, json, out)?;
        }
        RunCommand::Resume {
            run_id,
            reason,
            despite_alert,
        } => steer(&client, run_id, "resume", reason, despite_alert, json, out)?,
        RunCommand::Cancel { run_id, reason } => {
            steer(&client, run_id, "cancel", reason, None, json, out)?;
        }
        RunCommand::Approve { run_id, reason } => {
            steer(&client, run_id, "approve", reason, None, json, out)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_plan(client: &ApiClient, run_id: Uuid, out: &mut impl Write) -> anyhow::Result<ExitCode> {
    let detail: RunDetail =
        serde_json::from_value(finished_run(client, run_id, Duration::from_millis(300))?)
            .context("the API's run is not what this flotilla expects")?;
    writeln!(out, "{}", detail.progress.reason)?;
    for location in &detail.location_states {
        writeln!(
            out,
            "  {}/{:<16} {:>7} targets",
            location.account_id, location.region, location.targets
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

/// The run (`GET /runs/{id}`, as the API answers it) once it is finished,
/// asked every `period`.
fn finished_run(
    client: &ApiClient,
    run_id: Uuid,
    period: Duration,
) -> anyhow::Result<serde_json::Value> {
    loop {
        let detail: serde_json::Value = client.get(&format!("/runs/{run_id}"))?;
        if detail["progress"]["finished"] == json!(true) {
            return Ok(detail);
        }
        std::thread::sleep(period);
    }
}

/// The `--param` values by name; a name given twice is an error, not the
/// last one silently winning.
fn unique_params(
    params: Vec<(String, String)>,
) -> anyhow::Result<std::collections::BTreeMap<String, String>> {
    let mut unique = std::collections::BTreeMap::new();
    for (key, value) in params {
        if unique.contains_key(&key) {
            anyhow::bail!("--param {key} is given twice; give each parameter once");
        }
        unique.insert(key, value);
    }
    Ok(unique)
}

/// `KEY=VALUE` of `--param`.
fn parse_param(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.trim().is_empty() => {
            Ok((key.trim().to_string(), value.to_string()))
        }
        _ => Err(format!("{text:?} is not KEY=VALUE")),
    }
}

/// Waits for the run to end, then prints it as `run show --format json`
/// does; exit 0 only if it completed (a plan completes when discovery ends).
fn wait_json(client: &ApiClient, run_id: Uuid, out: &mut impl Write) -> anyhow::Result<ExitCode> {
    crate::watch::on_interrupt_say_the_run_goes_on(run_id);
    let detail = finished_run(client, run_id, Duration::from_millis(500))?;
    print_json(out, &detail)?;
    Ok(if detail["progress"]["state"] == json!("Completed") {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn steer(
    client: &ApiClient,
    run_id: Uuid,
    action: &str,
    reason: Option<String>,
    despite_alert: Option<String>,
    json: bool,
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
    if json {
        return print_json(out, &answer);
    }
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
