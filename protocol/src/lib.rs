//! flotilla's contract: everything scheduler and worker must agree on, and no IO.
//!
//! - [`spec`]: the campaign spec as written (YAML or JSON), shape only.
//! - [`campaign`]: validation of a spec into a typed [`campaign::Campaign`], every
//!   problem reported with its field path.
//! - [`validation`]: field paths and the error list validation produces.
//! - [`rate_control`]: max concurrency / max errors as counts or percentages, and
//!   their rounding.
//! - [`schedule`]: EventBridge `cron(…)` / `rate(…)` expressions and fire times.
//! - [`job`]: the jobs workers consume (Discover, Execute, Poll).
//! - [`report`]: what workers report back (targets discovered, results).
//! - [`run`]: a run's lifecycle states and what they allow workers to do.
//! - [`run_fields`]: the run record's field names, once for Rust and Lua.
//! - [`status`]: SSM's invocation statuses and which ones spend the error budget.
//! - [`envelope`]: the versioned, signed wire format around bincode.
//! - [`signing`]: Ed25519 signing keys, keyrings, who may sign what.
//! - [`names`]: queue, exchange and Redis key names.
//! - [`backoff`]: the one retry-delay formula every retry loop uses.
//! - [`clock`]: the wall clock every service shares (this host's, corrected
//!   to Redis's).

pub mod backoff;
pub mod campaign;
pub mod clock;
pub mod envelope;
pub mod job;
pub mod names;
pub mod rate_control;
pub mod report;
pub mod run;
pub mod run_fields;
pub mod schedule;
pub mod signing;
pub mod spec;
pub mod status;
pub mod validation;

pub use campaign::{Campaign, SpecFormat};
pub use job::Job;
pub use report::Report;
pub use validation::{FieldError, FieldErrors};

/// `amqp://user:secret@host` → `amqp://user:***@host` (and `redis://:secret@…`):
/// connection URLs go into error messages and logs, their passwords must not.
pub fn redact_password(url: &str) -> String {
    // A list of URLs (the nodes of a RabbitMQ cluster) is redacted one by one.
    if url.matches("://").count() > 1 {
        return url
            .split(',')
            .map(redact_password)
            .collect::<Vec<_>>()
            .join(",");
    }
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let Some((userinfo, host)) = rest.rsplit_once('@') else {
        return url.to_string();
    };
    match userinfo.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_url_of_a_list_is_redacted() {
        assert_eq!(
            redact_password("amqp://u:one@h1:5672/%2f,amqp://u:two@h2:5672/%2f"),
            "amqp://u:***@h1:5672/%2f,amqp://u:***@h2:5672/%2f"
        );
        assert_eq!(
            redact_password("redis+cluster://u:pw@h1:7000,h2:7000"),
            "redis+cluster://u:***@h1:7000,h2:7000"
        );
    }

    #[test]
    fn passwords_never_reach_error_messages() {
        assert_eq!(
            redact_password("amqp://guest:hunter2@127.0.0.1:5672/%2f"),
            "amqp://guest:***@127.0.0.1:5672/%2f"
        );
        assert_eq!(
            redact_password("redis://:hunter2@10.0.0.5:6379/0"),
            "redis://:***@10.0.0.5:6379/0"
        );
        assert_eq!(
            redact_password("amqp://127.0.0.1:5672"),
            "amqp://127.0.0.1:5672"
        );
    }
}
