//! `flotilla kill` and `flotilla calendar`: the kill switch and change
//! freezes.

use std::io::Write;
use std::process::ExitCode;

use clap::Subcommand;
use serde_json::json;

use super::{ApiArgs, OutputArgs, print_json};
use crate::client::ApiClient;

#[derive(Debug, Subcommand)]
pub enum KillCommand {
    /// Stop every worker from sending (or only one campaign's runs).
    Engage {
        /// Why, for the audit trail, the notifications and `kill status`.
        #[arg(long)]
        reason: String,
        /// Only this campaign's runs (every run when absent).
        #[arg(long)]
        campaign: Option<String>,
        /// Also cancel every command still running (CancelCommand per
        /// location, under the rate limits); their targets report Cancelled.
        #[arg(long)]
        cancel_in_flight: bool,
    },
    /// Let sends go on again (the global switch, or one campaign's).
    Release {
        /// Only this campaign's switch (the global one when absent).
        #[arg(long)]
        campaign: Option<String>,
    },
    /// Whether a switch is engaged, and why.
    Status {
        /// This campaign's runs: engaged if the global or its own switch is.
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
        /// Why, shown with the freeze and to every run it holds.
        #[arg(long)]
        reason: String,
        /// Only this campaign (every campaign that changes hosts when absent).
        #[arg(long)]
        campaign: Option<String>,
    },
    /// Every freeze, and whether the calendar is OPEN or CLOSED now.
    List {
        /// Whether the calendar is open for this campaign.
        #[arg(long)]
        campaign: Option<String>,
    },
    /// Remove a freeze (an approver's or admin's).
    Remove {
        /// The freeze's id, as `calendar list` prints it.
        id: String,
    },
}

pub fn kill(
    api: &ApiArgs,
    output: OutputArgs,
    command: KillCommand,
    out: &mut impl Write,
) -> anyhow::Result<ExitCode> {
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
    if output.json() {
        print_json(out, &answer)?;
        return Ok(ExitCode::SUCCESS);
    }
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
    output: OutputArgs,
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
            if output.json() {
                print_json(out, &freeze)?;
                return Ok(ExitCode::SUCCESS);
            }
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
            if output.json() {
                print_json(out, &answer)?;
                return Ok(ExitCode::SUCCESS);
            }
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
            let removed: serde_json::Value = client.delete(&format!("/calendar/{id}"))?;
            if output.json() {
                print_json(out, &removed)?;
            } else {
                writeln!(out, "{id} removed")?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
