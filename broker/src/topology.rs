//! Exchanges and queues. Every queue is a durable quorum queue: replicated, and
//! with a delivery limit RabbitMQ enforces itself.
//!
//! - `jobs` (direct) → `jobs.bulk` and `jobs.urgent` by routing key `bulk`/`urgent`;
//! - `reports`, filled through the default exchange;
//! - `delayed.<n>s.<priority>`: messages due n seconds after publishing,
//!   consumed by workers' delay pumps, which publish each back to `jobs` when
//!   it is due (no TTL, no dead-lettering: see `crate::delay` for why);
//! - `delayed.60s.reports`: reports whose results could not be written wait
//!   here a minute; schedulers' pumps put them back on `reports`;
//! - `dead-letter` (fanout exchange and queue): poison messages, messages past
//!   their delivery limit and jobs whose retries ran out, for an operator to read.

use lapin::options::{
    ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{Channel, ExchangeKind};
use protocol::job::Priority;
use protocol::names::{DELAY_STEPS_SECONDS, Names};

/// How often RabbitMQ delivers a message before dead-lettering it. Deliveries
/// come back when a worker dies holding them; a message that kills every worker
/// that takes it must stop after a few.
pub const DELIVERY_LIMIT: i32 = 5;

const PRIORITIES: [Priority; 2] = [Priority::Bulk, Priority::Urgent];

fn long_string(value: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value))
}

/// Arguments every flotilla queue shares: quorum, and dead-lettering that does
/// not lose messages (at-least-once needs `reject-publish` overflow).
fn quorum_arguments(dead_letter_exchange: &str) -> FieldTable {
    let mut arguments = FieldTable::default();
    arguments.insert("x-queue-type".into(), long_string("quorum"));
    arguments.insert(
        "x-dead-letter-exchange".into(),
        long_string(dead_letter_exchange),
    );
    arguments.insert(
        "x-dead-letter-strategy".into(),
        long_string("at-least-once"),
    );
    arguments.insert("x-overflow".into(), long_string("reject-publish"));
    arguments
}

/// A delay queue is a plain quorum queue: its messages wait for a pump, not
/// for a TTL, and no delivery limit applies (a pump never decodes them, so
/// none is poison to it).
fn delay_arguments(names: &Names) -> FieldTable {
    quorum_arguments(&names.dead_letter_exchange())
}

fn durable() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    }
}

/// Declares everything; safe to repeat with the same arguments.
pub async fn declare(channel: &Channel, names: &Names) -> Result<(), lapin::Error> {
    let exchange_options = ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    };
    channel
        .exchange_declare(
            names.dead_letter_exchange().into(),
            ExchangeKind::Fanout,
            exchange_options,
            FieldTable::default(),
        )
        .await?;
    let mut dead_letter_arguments = FieldTable::default();
    dead_letter_arguments.insert("x-queue-type".into(), long_string("quorum"));
    channel
        .queue_declare(
            names.dead_letter_queue().into(),
            durable(),
            dead_letter_arguments,
        )
        .await?;
    channel
        .queue_bind(
            names.dead_letter_queue().into(),
            names.dead_letter_exchange().into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;

    channel
        .exchange_declare(
            names.jobs_exchange().into(),
            ExchangeKind::Direct,
            exchange_options,
            FieldTable::default(),
        )
        .await?;
    let mut work_arguments = quorum_arguments(&names.dead_letter_exchange());
    work_arguments.insert(
        "x-delivery-limit".into(),
        AMQPValue::LongInt(DELIVERY_LIMIT),
    );
    for priority in PRIORITIES {
        channel
            .queue_declare(
                names.work_queue(priority).into(),
                durable(),
                work_arguments.clone(),
            )
            .await?;
        channel
            .queue_bind(
                names.work_queue(priority).into(),
                names.jobs_exchange().into(),
                priority.as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        for step in DELAY_STEPS_SECONDS {
            channel
                .queue_declare(
                    names.delay_queue_of_step(step, priority).into(),
                    durable(),
                    delay_arguments(names),
                )
                .await?;
        }
    }
    channel
        .queue_declare(names.reports_queue().into(), durable(), work_arguments)
        .await?;
    channel
        .queue_declare(
            names.reports_delay_queue().into(),
            durable(),
            delay_arguments(names),
        )
        .await?;
    Ok(())
}

/// Checks that the deployment's exchanges and queues exist, declaring
/// nothing: a passive declare needs no `configure` right, so services run
/// with users that may not create, delete or rebind anything. The setup
/// step (`flotilla admin arm`) declares them.
pub async fn verify(channel: &Channel, names: &Names) -> Result<(), lapin::Error> {
    let exchange = ExchangeDeclareOptions {
        passive: true,
        ..ExchangeDeclareOptions::default()
    };
    for (name, kind) in [
        (names.dead_letter_exchange(), ExchangeKind::Fanout),
        (names.jobs_exchange(), ExchangeKind::Direct),
    ] {
        channel
            .exchange_declare(name.into(), kind, exchange, FieldTable::default())
            .await?;
    }
    let queue = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    for name in queue_names(names) {
        channel
            .queue_declare(name.into(), queue, FieldTable::default())
            .await?;
    }
    Ok(())
}

/// Every queue name of a deployment (for tests' cleanup and for monitoring).
pub fn queue_names(names: &Names) -> Vec<String> {
    let mut queues = vec![
        names.bulk_queue(),
        names.urgent_queue(),
        names.reports_queue(),
        names.reports_delay_queue(),
        names.dead_letter_queue(),
    ];
    for priority in PRIORITIES {
        for step in DELAY_STEPS_SECONDS {
            queues.push(names.delay_queue_of_step(step, priority));
        }
    }
    queues
}

/// Deletes a deployment's queues and exchanges (test teardown).
pub async fn delete(channel: &Channel, names: &Names) -> Result<(), lapin::Error> {
    for queue in queue_names(names)
        .into_iter()
        .chain(names.legacy_delay_queues())
    {
        channel
            .queue_delete(queue.into(), QueueDeleteOptions::default())
            .await?;
    }
    for exchange in [names.jobs_exchange(), names.dead_letter_exchange()] {
        channel
            .exchange_delete(exchange.into(), Default::default())
            .await?;
    }
    Ok(())
}

/// Which kind of service a broker user is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceKind {
    Scheduler,
    Worker,
    /// The setup step that declares the topology (`flotilla admin arm`).
    Setup,
}

/// A RabbitMQ user's permissions on the deployment's vhost: regexes over
/// resource names, for `rabbitmqctl set_permissions -p VHOST USER CONF WRITE READ`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Permissions {
    pub configure: String,
    pub write: String,
    pub read: String,
}

/// The least a user of `kind` needs. Only the setup step declares (and may
/// delete or rebind): configure, and write and read on the prefix (binding
/// a queue needs write on it and read on its exchange). Services only check
/// the topology (a passive declare needs no right) and have no `configure`.
/// Publishing through the default exchange needs write on `amq.default`.
/// Then:
/// - a scheduler publishes jobs and parks reports, and reads only reports
///   and the dead-letter queue;
/// - a worker publishes jobs it derives (polls, next pages), delayed jobs and
///   reports, and reads only work and delay queues: it cannot consume
///   reports or dead letters.
pub fn permissions(names: &Names, kind: ServiceKind) -> Permissions {
    let prefix = regex_escape(names.prefix());
    let ours = |names: &[&str]| format!("^{prefix}\\.({})$", names.join("|"));
    let (write, read): (Vec<&str>, Vec<&str>) = match kind {
        ServiceKind::Setup => {
            let everything = format!("^{prefix}\\..*");
            return Permissions {
                configure: everything.clone(),
                write: everything.clone(),
                read: everything,
            };
        }
        ServiceKind::Scheduler => (
            vec!["jobs", "reports", "delayed\\.[0-9]+s\\.reports"],
            vec!["dead-letter", "reports", "delayed\\.[0-9]+s\\.reports"],
        ),
        ServiceKind::Worker => (
            vec!["jobs", "reports", "delayed\\.[0-9]+s\\.(bulk|urgent)"],
            vec![
                "jobs\\.bulk",
                "jobs\\.urgent",
                "delayed\\.[0-9]+s\\.(bulk|urgent)",
            ],
        ),
    };
    Permissions {
        configure: "^$".into(),
        write: format!("^amq\\.default$|{}", ours(&write)),
        read: ours(&read),
    }
}

/// `text` as a literal in a RabbitMQ (Erlang `re`) regex.
fn regex_escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for character in text.chars() {
        if "\\.^$|?*+()[]{}".contains(character) {
            escaped.push('\\');
        }
        escaped.push(character);
    }
    escaped
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `deploy/rabbitmq/users.sh` sets exactly these for the default prefix.
    #[test]
    fn the_deployed_permissions_are_the_ones_the_code_needs() {
        let script = include_str!("../../deploy/rabbitmq/users.sh");
        for kind in [
            ServiceKind::Scheduler,
            ServiceKind::Worker,
            ServiceKind::Setup,
        ] {
            let wanted = permissions(&Names::default(), kind);
            for regex in [&wanted.configure, &wanted.write, &wanted.read] {
                assert!(script.contains(&format!("'{regex}'")), "{kind:?}: {regex}");
            }
        }
    }
}
