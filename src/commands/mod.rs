//! The operator's subcommands, all through the scheduler's HTTP API:
//! `campaign`, `run`, `kill` and `report`.

mod control;
mod reports;
mod run;

pub use self::control::{CalendarCommand, KillCommand, calendar, kill};
pub use self::reports::{ComplianceArgs, ReportArgs, compliance, report};
pub use self::run::{OutputFormat, RunCommand, run};

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};
use serde_json::json;

use crate::client::ApiClient;

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
