//! `flotilla admin`: maintenance of a deployment's queues and keys.
//!
//! A deployment is everything under one `--prefix`: 14 RabbitMQ queues and 2
//! exchanges (`<prefix>.…`) and the Redis keys `<prefix>:*`. `purge` removes
//! them all, for an operator retiring a deployment and for test cleanup.
//! `arm` arms a new deployment: its global kill switch starts released —
//! the one explicit, audited act that does, never inferred from a missing
//! record.

use anyhow::Context;
use clap::Subcommand;
use protocol::names::Names;

#[derive(Debug, Clone, Subcommand)]
pub enum AdminCommand {
    /// Delete deployments' queues, exchanges and Redis keys, whatever they hold.
    /// Stop their schedulers and workers first (they wait for the queues to
    /// be declared again by `flotilla admin arm`).
    Purge {
        /// The deployment's prefix; repeat to purge several.
        #[arg(long = "prefix", required = true, value_parser = parse_prefix)]
        prefixes: Vec<String>,
        /// RabbitMQ URL.
        #[arg(
            long,
            env = "FLOTILLA_AMQP_URL",
            hide_env_values = true,
            default_value = crate::services::DEFAULT_AMQP_URL
        )]
        amqp_url: String,
        /// Redis URL (the deployment's keys live there).
        #[arg(
            long,
            env = "FLOTILLA_REDIS_URL",
            hide_env_values = true,
            default_value = "redis://127.0.0.1:6379/"
        )]
        redis_url: String,
    },
    /// Set up a new deployment: declare its queues and exchanges on RabbitMQ
    /// (idempotent; the services only check them and may not configure) and
    /// release its global kill switch. Only a deployment with no marker and
    /// no run is armed; anywhere else the kill switch is left as it is (a
    /// missing record stays engaged: release it with `flotilla kill
    /// release`). Audited as done by `--by`. Run it with the broker's setup
    /// user (deploy/rabbitmq/users.sh: flotilla-setup).
    Arm {
        /// The deployment's prefix.
        #[arg(long, env = "FLOTILLA_PREFIX", default_value = "flotilla", value_parser = parse_prefix)]
        prefix: String,
        /// Who arms it, for the audit trail.
        #[arg(long, default_value = "admin")]
        by: String,
        /// RabbitMQ URL of a user that may configure the prefix's queues.
        #[arg(
            long,
            env = "FLOTILLA_AMQP_URL",
            hide_env_values = true,
            default_value = crate::services::DEFAULT_AMQP_URL
        )]
        amqp_url: String,
        /// The CA (PEM) of RabbitMQ's certificate, for an `amqps://` URL.
        #[arg(long, env = "FLOTILLA_AMQP_CA_FILE")]
        amqp_ca_file: Option<std::path::PathBuf>,
        /// Redis URL of a user that may write the prefix's kill switch and audit trail.
        #[arg(
            long,
            env = "FLOTILLA_REDIS_URL",
            hide_env_values = true,
            default_value = "redis://127.0.0.1:6379/"
        )]
        redis_url: String,
    },
}

/// A prefix is a name, never a pattern: letters, digits, `_ . -`, 1–100.
pub fn parse_prefix(prefix: &str) -> Result<String, String> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-');
    if prefix.is_empty() || prefix.len() > 100 || !prefix.chars().all(allowed) {
        return Err(format!(
            "{prefix:?} is not a deployment prefix: use 1-100 of letters, digits, '_', '.', '-'"
        ));
    }
    Ok(prefix.to_string())
}

/// What one purge removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Purged {
    pub redis_keys: u64,
}

/// Deletes the deployment `names`' queues, exchanges and Redis keys (on
/// `memory://` URLs, those of the in-memory backends of that name).
pub async fn purge(amqp_url: &str, redis_url: &str, names: &Names) -> anyhow::Result<Purged> {
    broker::Broker::delete_deployment(amqp_url, names)
        .await
        .with_context(|| format!("deleting the queues of {}", names.prefix()))?;
    let store = store::RedisStore::connect(redis_url, names.clone()).await?;
    let redis_keys = store
        .purge()
        .await
        .with_context(|| format!("deleting the Redis keys of {}", names.prefix()))?;
    Ok(Purged { redis_keys })
}

pub fn admin(
    command: AdminCommand,
    output: crate::commands::OutputArgs,
    out: &mut impl std::io::Write,
) -> anyhow::Result<std::process::ExitCode> {
    match command {
        AdminCommand::Purge {
            prefixes,
            amqp_url,
            redis_url,
        } => {
            let runtime = tokio::runtime::Runtime::new()?;
            let mut done = Vec::new();
            for prefix in prefixes {
                let names = Names::new(prefix.clone());
                let purged = runtime.block_on(purge(&amqp_url, &redis_url, &names))?;
                if !output.json() {
                    writeln!(
                        out,
                        "{prefix}: queues and exchanges deleted, {} Redis keys deleted",
                        purged.redis_keys
                    )?;
                }
                done.push(serde_json::json!({
                    "prefix": prefix,
                    "queues_deleted": true,
                    "redis_keys_deleted": purged.redis_keys,
                }));
            }
            if output.json() {
                crate::commands::print_json(out, &done)?;
            }
            Ok(std::process::ExitCode::SUCCESS)
        }
        AdminCommand::Arm {
            prefix,
            by,
            amqp_url,
            amqp_ca_file,
            redis_url,
        } => {
            crate::services::warn_of_passwords_in_flags(&amqp_url, &redis_url);
            let runtime = tokio::runtime::Runtime::new()?;
            let names = Names::new(prefix.clone());
            let tls = broker::BrokerTls {
                ca_file: amqp_ca_file,
            };
            runtime
                .block_on(broker::Broker::declare_topology(&amqp_url, &names, &tls))
                .with_context(|| format!("declaring the queues of {prefix}"))?;
            if !output.json() {
                writeln!(out, "{prefix}: queues and exchanges declared")?;
            }
            let arming = runtime.block_on(async {
                let store = store::RedisStore::connect(&redis_url, names.clone()).await?;
                let audit = scheduler::audit::AuditLog::new(
                    store.connection(),
                    names.audit_stream_key(),
                    None,
                );
                anyhow::Ok(scheduler::arm_new_deployment(&store, audit, &by).await?)
            })?;
            let (arming, line, code) = match arming {
                store::Arming::Armed => ("armed", "armed: the global kill switch is released", 0),
                store::Arming::AlreadyArmed => (
                    "already_armed",
                    "already armed: nothing changed (an engaged kill switch is released with `flotilla kill release`)",
                    0,
                ),
                store::Arming::HasRuns => (
                    "refused",
                    "refused: the deployment has runs but no marker (was it deleted?); nothing changed, a missing kill switch record stays engaged",
                    1,
                ),
            };
            if output.json() {
                crate::commands::print_json(
                    out,
                    &serde_json::json!({
                        "prefix": prefix,
                        "queues_declared": true,
                        "arming": arming,
                        "detail": line,
                    }),
                )?;
            } else {
                writeln!(out, "{prefix}: {line}")?;
            }
            Ok(std::process::ExitCode::from(code))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefix_is_a_name_not_a_pattern() {
        assert!(parse_prefix("flotilla-test-3f2a").is_ok());
        for bad in ["", "a*", "a?b", "[x]", "a:b", "a b", &"x".repeat(101)] {
            let error = parse_prefix(bad).unwrap_err();
            assert!(error.contains("letters, digits"), "{bad:?}: {error}");
        }
    }
}
