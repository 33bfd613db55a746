//! The operator's subcommands, all through the scheduler's HTTP API:
//! `campaign`, `run`, `kill` and `report`.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use scheduler::RunProgress;
use scheduler::api::RunDetail;
use serde_json::json;
use uuid::Uuid;

use crate::client::ApiClient;
use crate::report::{self, Format};
use crate::watch::{progress_line, watch};

#[derive(Debug, Clone, Args)]
pub struct ApiArgs {
    /// The scheduler's HTTP API.
    #[arg(
        long,
        env = "FLOTILLA_API_URL",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    pub api: String,
    /// The CA (PEM) that signed an https API's certificate, when the
    /// system's roots do not vouch for it.
    #[arg(long, env = "FLOTILLA_CA_FILE", global = true)]
    pub ca_file: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum CampaignCommand {
    /// Store a campaign spec (a changed spec becomes a new version).
    Apply {
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
    },
    /// List stored campaigns.
    List,
    /// Show a stored campaign's latest version.
    Show { name: String },
    /// Forget a campaign (its runs keep going).
    Delete { name: String },
    /// Approve a version that changes hosts (two-person rule: not your own).
    Approve {
        name: String,
        #[arg(long)]
        version: u32,
    },
}

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

#[derive(Debug, Subcommand)]
pub enum KillCommand {
    /// Stop every worker from sending (or only one campaign's runs).
    Engage {
        #[arg(long)]
        reason: String,
        #[arg(long)]
        campaign: Option<String>,
        /// Also cancel every command still running (CancelCommand per
        /// location, under the rate limits); their targets report Cancelled.
        #[arg(long)]
        cancel_in_flight: bool,
    },
    Release {
        #[arg(long)]
        campaign: Option<String>,
    },
    Status {
        #[arg(long)]
        campaign: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum CalendarCommand {
    /// Add a change freeze (an approver's or admin's).
    Add {
        /// Start, RFC 3339 (2026-12-24T00:00:00Z).
        #[arg(long)]
        from: String,
        /// End, RFC 3339.
        #[arg(long)]
        to: String,
        #[arg(long)]
        reason: String,
        /// Only this campaign (every campaign that changes hosts when absent).
        #[arg(long)]
        campaign: Option<String>,
    },
    /// Every freeze, and whether the calendar is OPEN or CLOSED now.
    List {
        #[arg(long)]
        campaign: Option<String>,
    },
    Remove {
        id: String,
    },
}

#[derive(Debug, Args)]
pub struct ComplianceArgs {
    #[arg(long)]
    pub account: Option<String>,
    #[arg(long)]
    pub region: Option<String>,
    /// critical, security, other or compliant.
    #[arg(long)]
    pub severity: Option<String>,
    /// Instances not reported for longer are stale.
    #[arg(long, default_value_t = 7)]
    pub stale_days: u64,
    /// At most this many instances listed.
    #[arg(long, default_value_t = 1000)]
    pub limit: usize,
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
}

#[derive(Debug, Args)]
pub struct ReportArgs {
    pub run_id: Uuid,
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
    /// The results directory or `s3://bucket/prefix` (default: the run's, as
    /// the scheduler reports it).
    #[arg(long)]
    pub dir: Option<String>,
    /// Read `s3://` results here instead of AWS (credentials: AWS_* variables).
    #[arg(long, env = "FLOTILLA_S3_ENDPOINT_URL")]
    pub s3_endpoint_url: Option<String>,
}

fn print_json(out: &mut impl Write, value: &serde_json::Value) -> anyhow::Result<()> {
    writeln!(out, "{}", serde_json::to_string_pretty(value)?)?;
    Ok(())
}

fn apply(
    client: &ApiClient,
    file: &PathBuf,
    out: &mut impl Write,
) -> anyhow::Result<serde_json::Value> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let content_type = if protocol::SpecFormat::from_path(file) == protocol::SpecFormat::Json {
        "application/json"
    } else {
        "application/yaml"
    };
    let applied: serde_json::Value = client.post("/campaigns", content_type, text)?;
    writeln!(
        out,
        "campaign {} version {}{}{}",
        applied["name"].as_str().unwrap_or_default(),
        applied["version"],
        if applied["changed"] == json!(true) {
            ""
        } else {
            " (unchanged)"
        },
        if applied["needs_approval"] == json!(true) {
            format!(
                "; it changes hosts: another approver runs `flotilla campaign approve {} --version {}` before it can run",
                applied["name"].as_str().unwrap_or_default(),
                applied["version"]
            )
        } else {
            String::new()
        }
    )?;
    Ok(applied)
}

pub fn campaign(
    api: &ApiArgs,
    command: CampaignCommand,
    out: &mut impl Write,
) -> anyhow::Result<ExitCode> {
    let client = ApiClient::from_args(api)?;
    match command {
        CampaignCommand::Apply { file } => {
            apply(&client, &file, out)?;
        }
        CampaignCommand::List => {
            let campaigns: Vec<serde_json::Value> = client.get("/campaigns")?;
            for campaign in campaigns {
                writeln!(
                    out,
                    "{:<32} v{:<4} {}",
                    campaign["name"].as_str().unwrap_or_default(),
                    campaign["version"],
                    campaign["schedule"].as_str().unwrap_or("")
                )?;
            }
        }
        CampaignCommand::Show { name } => {
            let campaign: serde_json::Value = client.get(&format!("/campaigns/{name}"))?;
            print_json(out, &campaign)?;
        }
        CampaignCommand::Delete { name } => {
            let _: serde_json::Value = client.delete(&format!("/campaigns/{name}"))?;
            writeln!(out, "campaign {name} deleted")?;
        }
        CampaignCommand::Approve { name, version } => {
            let approval: serde_json::Value = client.post_json(
                &format!("/campaigns/{name}/versions/{version}/approve"),
                &json!({}),
            )?;
            writeln!(
                out,
                "{name} v{version} (written by {}) approved by {}",
                approval["author"].as_str().unwrap_or("unknown"),
                approval["approver"].as_str().unwrap_or("unknown")
            )?;
        }
    }
    Ok(ExitCode::SUCCESS)
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

pub fn kill(api: &ApiArgs, command: KillCommand, out: &mut impl Write) -> anyhow::Result<ExitCode> {
    let client = ApiClient::from_args(api)?;
    let query = |campaign: &Option<String>| {
        campaign
            .as_ref()
            .map(|campaign| format!("?campaign={campaign}"))
            .unwrap_or_default()
    };
    let answer: serde_json::Value = match &command {
        KillCommand::Engage {
            reason,
            campaign,
            cancel_in_flight,
        } => {
            let mut path = format!("/kill{}", query(campaign));
            if *cancel_in_flight {
                path.push(if path.contains('?') { '&' } else { '?' });
                path.push_str("cancel_in_flight=true");
            }
            client.post_json(&path, &json!({ "reason": reason }))?
        }
        KillCommand::Release { campaign } => client.delete(&format!("/kill{}", query(campaign)))?,
        KillCommand::Status { campaign } => client.get(&format!("/kill{}", query(campaign)))?,
    };
    let scope = match &command {
        KillCommand::Engage { campaign, .. }
        | KillCommand::Release { campaign }
        | KillCommand::Status { campaign } => campaign
            .clone()
            .map_or("global kill switch".to_string(), |campaign| {
                format!("kill switch of {campaign}")
            }),
    };
    if answer["engaged"] == json!(true) {
        writeln!(
            out,
            "{scope}: engaged ({})",
            answer["reason"].as_str().unwrap_or_default()
        )?;
    } else {
        writeln!(out, "{scope}: released")?;
    }
    Ok(ExitCode::SUCCESS)
}

pub fn calendar(
    api: &ApiArgs,
    command: CalendarCommand,
    out: &mut impl Write,
) -> anyhow::Result<ExitCode> {
    let client = ApiClient::from_args(api)?;
    let time = |ms: &serde_json::Value| {
        ms.as_i64()
            .and_then(chrono::DateTime::from_timestamp_millis)
            .map_or_else(|| "-".to_string(), |at| at.to_rfc3339())
    };
    match command {
        CalendarCommand::Add {
            from,
            to,
            reason,
            campaign,
        } => {
            let freeze: serde_json::Value = client.post_json(
                "/calendar",
                &json!({ "from": from, "to": to, "reason": reason, "campaign": campaign }),
            )?;
            writeln!(
                out,
                "{} added: {} to {}",
                freeze["id"].as_str().unwrap_or_default(),
                time(&freeze["from_ms"]),
                time(&freeze["to_ms"])
            )?;
        }
        CalendarCommand::List { campaign } => {
            let path = match &campaign {
                Some(campaign) => format!("/calendar?campaign={campaign}"),
                None => "/calendar".to_string(),
            };
            let answer: serde_json::Value = client.get(&path)?;
            writeln!(
                out,
                "{} now{}",
                answer["state"]["state"].as_str().unwrap_or_default(),
                match answer["state"]["next_transition_ms"].as_i64() {
                    Some(_) => format!(
                        "; changes at {}",
                        time(&answer["state"]["next_transition_ms"])
                    ),
                    None => String::new(),
                }
            )?;
            for freeze in answer["freezes"].as_array().into_iter().flatten() {
                writeln!(
                    out,
                    "{}  {} → {}  {}  {} (by {})",
                    freeze["id"].as_str().unwrap_or_default(),
                    time(&freeze["from_ms"]),
                    time(&freeze["to_ms"]),
                    freeze["campaign"].as_str().unwrap_or("every campaign"),
                    freeze["reason"].as_str().unwrap_or_default(),
                    freeze["created_by"].as_str().unwrap_or_default()
                )?;
            }
        }
        CalendarCommand::Remove { id } => {
            let _: serde_json::Value = client.delete(&format!("/calendar/{id}"))?;
            writeln!(out, "{id} removed")?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn compliance(
    api: &ApiArgs,
    args: ComplianceArgs,
    out: &mut impl Write,
) -> anyhow::Result<ExitCode> {
    let client = ApiClient::from_args(api)?;
    let mut query = vec![
        format!("stale_days={}", args.stale_days),
        format!("limit={}", args.limit),
    ];
    for (name, value) in [
        ("account", &args.account),
        ("region", &args.region),
        ("severity", &args.severity),
    ] {
        if let Some(value) = value {
            query.push(format!("{name}={value}"));
        }
    }
    let path = format!("/compliance?{}", query.join("&"));
    if args.format == Format::Json {
        print_json(out, &client.get(&path)?)?;
        return Ok(ExitCode::SUCCESS);
    }
    let view: scheduler::compliance::FleetCompliance = client.get(&path)?;
    match args.format {
        Format::Html => out.write_all(crate::report_html::render_fleet(&view).as_bytes())?,
        Format::Csv => out.write_all(scheduler::compliance::attention_csv(&view).as_bytes())?,
        _ => {
            writeln!(
                out,
                "{} instances, {} non-compliant, {} stale (> {} days)",
                view.instances, view.non_compliant, view.stale, view.stale_days
            )?;
            for (severity, n) in &view.by_severity {
                writeln!(out, "  {severity:<10} {n:>8}")?;
            }
            writeln!(out, "by account (instances, non-compliant)")?;
            for (account, (instances, bad)) in &view.by_account {
                writeln!(out, "  {account}  {instances:>8} {bad:>8}")?;
            }
            for state in view.attention.iter().take(20) {
                writeln!(
                    out,
                    "  {:<22} {}/{}  {:<9} missing {:>3}",
                    state.instance_id,
                    state.account_id,
                    state.region,
                    state.severity(),
                    state.missing
                )?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn report(api: &ApiArgs, args: ReportArgs, out: &mut impl Write) -> anyhow::Result<ExitCode> {
    let output = match args.dir {
        Some(dir) => dir,
        None => {
            let detail: RunDetail =
                ApiClient::from_args(api)?.get(&format!("/runs/{}", args.run_id))?;
            detail.progress.results_location
        }
    };
    let store = match output.strip_prefix("s3://") {
        Some(location) => {
            let (bucket, prefix) = location.split_once('/').unwrap_or((location, ""));
            let settings = scheduler::sink::S3Settings {
                endpoint_url: args.s3_endpoint_url,
                region: std::env::var("AWS_REGION").ok(),
                credentials: None,
            };
            scheduler::sink::ResultsStore::s3(bucket, prefix, &settings)
                .with_context(|| format!("results at {output}"))?
        }
        None => scheduler::sink::ResultsStore::Local(PathBuf::from(&output)),
    };
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    let records = runtime
        .block_on(store.read_run(args.run_id))
        .with_context(|| format!("reading the results of run {} at {output}", args.run_id))?;
    if records.is_empty() {
        anyhow::bail!(
            "no results of run {} at {output}; pass where the scheduler writes them with --dir",
            args.run_id
        );
    }
    report::write(&report::build(args.run_id, &records), args.format, out)?;
    Ok(ExitCode::SUCCESS)
}
