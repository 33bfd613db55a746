//! The operator's subcommands, all through the scheduler's HTTP API:
//! `campaign`, `run`, `kill` and `report`.

mod control;
mod reports;
mod run;

pub use self::control::{CalendarCommand, KillCommand, calendar, kill};
pub use self::reports::{ComplianceArgs, ReportArgs, compliance, report};
pub use self::run::{RunCommand, run};

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

/// How a command prints: for people, or one JSON document for scripts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum OutputFormat {
    /// Lines for people.
    #[default]
    Table,
    /// One pretty-printed JSON document on stdout (the API's answer where
    /// there is one); messages for people go to stderr.
    Json,
}

/// `--format`, given anywhere after the command's name.
#[derive(Debug, Clone, Copy, Args)]
pub struct OutputArgs {
    /// `table` for people, `json` for scripts.
    #[arg(long, global = true, value_enum, default_value_t = OutputFormat::Table)]
    pub format: OutputFormat,
}

impl OutputArgs {
    pub fn json(self) -> bool {
        self.format == OutputFormat::Json
    }
}

#[derive(Debug, Subcommand)]
pub enum CampaignCommand {
    /// Store a campaign spec (a changed spec becomes a new version).
    Apply {
        /// The campaign spec: `.json` is read as JSON, anything else as YAML.
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
    },
    /// List stored campaigns: name, latest version, schedule.
    List,
    /// Show a stored campaign's latest version (always JSON).
    Show {
        /// The campaign's name.
        name: String,
    },
    /// Forget a campaign (its runs keep going).
    Delete {
        /// The campaign's name.
        name: String,
    },
    /// Approve a version that changes hosts (two-person rule: not your own).
    Approve {
        /// The campaign's name.
        name: String,
        /// The version to approve, as `campaign apply` or `campaign list` printed it.
        #[arg(long)]
        version: u32,
    },
}

pub(crate) fn print_json(
    out: &mut impl Write,
    value: &impl serde::Serialize,
) -> anyhow::Result<()> {
    writeln!(out, "{}", serde_json::to_string_pretty(value)?)?;
    Ok(())
}

/// Stores the spec; prints what happened (to stderr when `quiet`: the caller
/// prints JSON on stdout).
fn apply(
    client: &ApiClient,
    file: &PathBuf,
    quiet: bool,
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
    let line = format!(
        "campaign {} version {}{}{}",
        applied["name"].as_str().unwrap_or_default(),
        applied["version"],
        if applied["changed"] == json!(true) {
            ""
        } else {
            " (unchanged)"
        },
        approval_hint(&applied)
    );
    if quiet {
        eprintln!("{line}");
    } else {
        writeln!(out, "{line}")?;
    }
    Ok(applied)
}

/// What an applied version still needs before it may run: said only when the
/// two-person rule binds (with authentication off the version runs at once).
fn approval_hint(applied: &serde_json::Value) -> String {
    if applied["approval_required"] == json!(true) {
        format!(
            "; it changes hosts: another approver runs `flotilla campaign approve {} --version {}` before it can run",
            applied["name"].as_str().unwrap_or_default(),
            applied["version"]
        )
    } else {
        String::new()
    }
}

pub fn campaign(
    api: &ApiArgs,
    output: OutputArgs,
    command: CampaignCommand,
    out: &mut impl Write,
) -> anyhow::Result<ExitCode> {
    let client = ApiClient::from_args(api)?;
    match command {
        CampaignCommand::Apply { file } => {
            let applied = apply(&client, &file, output.json(), out)?;
            if output.json() {
                print_json(out, &applied)?;
            }
        }
        CampaignCommand::List => {
            let campaigns: Vec<serde_json::Value> = client.get("/campaigns")?;
            if output.json() {
                print_json(out, &campaigns)?;
                return Ok(ExitCode::SUCCESS);
            }
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
            let deleted: serde_json::Value = client.delete(&format!("/campaigns/{name}"))?;
            if output.json() {
                print_json(out, &deleted)?;
            } else {
                writeln!(out, "campaign {name} deleted")?;
            }
        }
        CampaignCommand::Approve { name, version } => {
            let approval: serde_json::Value = client.post_json(
                &format!("/campaigns/{name}/versions/{version}/approve"),
                &json!({}),
            )?;
            if output.json() {
                print_json(out, &approval)?;
                return Ok(ExitCode::SUCCESS);
            }
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
