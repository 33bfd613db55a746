//! `flotilla token` and `flotilla audit`: who may use the API, and what they
//! did with it.
//!
//! Tokens are printed once, when made, and kept only as hashes: offline in a
//! tokens file (`--tokens-file`, how the first admin token is made, before
//! any scheduler runs), or through the API (an admin's token), in Redis.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use api::auth::{append_tokens_file, read_tokens_file, revoke_in_tokens_file};
use api::json::ListedToken;
use clap::{Args, Subcommand};
use scheduler::audit::AuditRecord;
use scheduler::auth::{Role, TokenRecord, check_principal_name, new_token, token_hash};
use serde_json::json;

use crate::client::ApiClient;
use crate::commands::{ApiArgs, OutputArgs, OutputFormat, print_json};

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Make a token and print it (once: only its hash is kept).
    Create {
        /// The principal the token names (who the audit trail says acted).
        #[arg(long)]
        name: String,
        /// viewer, operator, approver, admin, alertmanager or eventbridge.
        #[arg(long)]
        role: Role,
        /// How long it is valid, e.g. 90d or 12h; forever when absent.
        #[arg(long, value_parser = humantime::parse_duration)]
        expires: Option<Duration>,
        /// Write it to this tokens file (offline; the scheduler's
        /// --tokens-file) instead of asking the API.
        #[arg(long)]
        tokens_file: Option<PathBuf>,
    },
    /// List tokens (names, roles, expiry; never the tokens).
    List {
        /// Read this tokens file (offline) instead of asking the API.
        #[arg(long)]
        tokens_file: Option<PathBuf>,
    },
    /// Revoke every token of a principal.
    Revoke {
        /// The principal whose tokens end.
        name: String,
        /// Remove them from this tokens file (offline) instead of asking the API.
        #[arg(long)]
        tokens_file: Option<PathBuf>,
    },
}

fn now_ms() -> u64 {
    protocol::job::UnixMillis::now().0
}

fn expiry(expires: Option<Duration>) -> Option<u64> {
    expires.map(|duration| {
        now_ms().saturating_add(u64::try_from(duration.as_millis()).unwrap_or(u64::MAX))
    })
}

/// Unix ms as RFC 3339 (UTC, milliseconds), or the number when out of range.
fn rfc3339(ms: u64) -> String {
    protocol::job::UnixMillis(ms)
        .to_rfc3339()
        .unwrap_or_else(|| ms.to_string())
}

fn print_tokens(
    out: &mut impl Write,
    output: OutputArgs,
    tokens: &[ListedToken],
) -> anyhow::Result<()> {
    if output.json() {
        return print_json(out, &tokens);
    }
    for token in tokens {
        let expires = token.expires_ms.map_or_else(
            || "never expires".to_string(),
            |expires| format!("expires {}", rfc3339(expires)),
        );
        writeln!(
            out,
            "{:<24} {:<13} {}…  {expires}, made by {}",
            token.name,
            token.role.as_str(),
            token.sha256_prefix,
            token.created_by
        )?;
    }
    Ok(())
}

/// A new token on stdout: the token alone, or `{"name", "role", "token"}`.
fn print_new_token(
    out: &mut impl Write,
    output: OutputArgs,
    name: &str,
    role: Role,
    token: &str,
) -> anyhow::Result<()> {
    if output.json() {
        print_json(
            out,
            &json!({ "name": name, "role": role.as_str(), "token": token }),
        )
    } else {
        writeln!(out, "{token}")?;
        Ok(())
    }
}

fn print_revoked(
    out: &mut impl Write,
    output: OutputArgs,
    name: &str,
    revoked: &serde_json::Value,
) -> anyhow::Result<()> {
    if output.json() {
        print_json(out, &json!({ "name": name, "revoked": revoked }))
    } else {
        writeln!(out, "revoked {revoked} token(s) of {name}")?;
        Ok(())
    }
}

pub fn token(
    api: &ApiArgs,
    output: OutputArgs,
    command: TokenCommand,
    out: &mut impl Write,
) -> anyhow::Result<ExitCode> {
    match command {
        TokenCommand::Create {
            name,
            role,
            expires,
            tokens_file: Some(path),
        } => {
            check_principal_name(&name).map_err(anyhow::Error::msg)?;
            let token = new_token().map_err(anyhow::Error::msg)?;
            let record = TokenRecord {
                name,
                role,
                sha256: token_hash(&token),
                created_ms: now_ms(),
                expires_ms: expiry(expires),
                created_by: "tokens-file".into(),
            };
            append_tokens_file(&path, &record).map_err(anyhow::Error::msg)?;
            print_new_token(out, output, &record.name, role, &token)?;
            eprintln!(
                "token of {} ({}) added to {}; it is shown only now",
                record.name,
                record.role,
                path.display()
            );
        }
        TokenCommand::Create {
            name,
            role,
            expires,
            tokens_file: None,
        } => {
            let client = ApiClient::from_args(api)?;
            let body = json!({
                "name": name,
                "role": role.as_str(),
                "expires_in": expires.map(|duration| humantime::format_duration(duration).to_string()),
            });
            let created: serde_json::Value = client.post_json("/tokens", &body)?;
            let token = created["token"]
                .as_str()
                .context("the API's answer has no token")?;
            print_new_token(out, output, &name, role, token)?;
            eprintln!("token of {name} ({role}) made; it is shown only now");
        }
        TokenCommand::List {
            tokens_file: Some(path),
        } => {
            let records = read_tokens_file(&path).map_err(anyhow::Error::msg)?;
            let listed: Vec<ListedToken> = records.into_iter().map(ListedToken::from).collect();
            print_tokens(out, output, &listed)?;
        }
        TokenCommand::List { tokens_file: None } => {
            let listed: Vec<ListedToken> = ApiClient::from_args(api)?.get("/tokens")?;
            print_tokens(out, output, &listed)?;
        }
        TokenCommand::Revoke {
            name,
            tokens_file: Some(path),
        } => {
            let removed = revoke_in_tokens_file(&path, &name).map_err(anyhow::Error::msg)?;
            if removed == 0 {
                bail!("no token of {name:?} in {}", path.display());
            }
            print_revoked(out, output, &name, &json!(removed))?;
        }
        TokenCommand::Revoke {
            name,
            tokens_file: None,
        } => {
            let revoked: serde_json::Value =
                ApiClient::from_args(api)?.delete(&format!("/tokens/{name}"))?;
            print_revoked(out, output, &name, &revoked["revoked"])?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, Args)]
pub struct AuditArgs {
    /// Records of this long ago or later (e.g. 1h, 7d); all kept when absent.
    #[arg(long, value_parser = humantime::parse_duration)]
    since: Option<Duration>,
    /// Only what this principal did (a token's name, `anonymous`, `schedule:NAME`).
    #[arg(long)]
    principal: Option<String>,
    /// e.g. runs:start, kill:engage, auth:refused.
    #[arg(long)]
    action: Option<String>,
    /// At most this many records, newest first.
    #[arg(long, default_value_t = 100)]
    limit: usize,
    /// `table` for people, `json` for scripts (each record with `time`, RFC 3339).
    #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
    format: OutputFormat,
}

pub fn audit(api: &ApiArgs, args: AuditArgs, out: &mut impl Write) -> anyhow::Result<ExitCode> {
    let mut query = vec![format!("limit={}", args.limit)];
    if let Some(since) = args.since {
        let since_ms =
            now_ms().saturating_sub(u64::try_from(since.as_millis()).unwrap_or(u64::MAX));
        query.push(format!("since={since_ms}"));
    }
    for (key, value) in [("principal", &args.principal), ("action", &args.action)] {
        if let Some(value) = value {
            query.push(format!("{key}={}", urlencode(value)));
        }
    }
    let path = format!("/audit?{}", query.join("&"));
    let records: Vec<AuditRecord> = ApiClient::from_args(api)?.get(&path)?;
    match args.format {
        OutputFormat::Json => {
            let mut timed = Vec::with_capacity(records.len());
            for record in &records {
                let mut value = serde_json::to_value(record)?;
                value["time"] = json!(rfc3339(record.time_ms));
                timed.push(value);
            }
            print_json(out, &timed)?;
        }
        OutputFormat::Table => {
            for record in &records {
                writeln!(
                    out,
                    "{} {:<20} {:<10} {:<16} {:<16} {} {}{}",
                    rfc3339(record.time_ms),
                    record.principal,
                    record.role,
                    record.source,
                    record.action,
                    record.outcome,
                    record.object,
                    if record.reason.is_empty() {
                        String::new()
                    } else {
                        format!("  ({})", record.reason)
                    }
                )?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Percent-encodes a query value (letters, digits and `-_.~` stay).
fn urlencode(value: &str) -> String {
    value
        .bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (byte as char).to_string()
            }
            other => format!("%{other:02X}"),
        })
        .collect()
}
