//! The notification outbox: every notification is written to Redis before
//! anything tries to deliver it, and delivered from there by whichever
//! replica is up — so one in retry outlives the scheduler that queued it.
//!
//! - A delivery is a hash under the `{notify}` hash tag (event, both
//!   bodies, a reference to its webhook, tries, state) and an entry of the
//!   due queue (a sorted set: delivery id → when it is next due, Unix ms).
//! - It holds no URL: a webhook's path is its secret (Slack), so the
//!   delivery names it by scope (`default`: the deployment's, `campaign`:
//!   the run's campaign's) and the SHA-256 of its URL, and the delivering
//!   replica looks it up in its own configuration or the run's campaign.
//! - Each replica's loop takes what is due with a lease (`notify_claim.lua`):
//!   the delivery is due again when the lease ends, so a replica that dies
//!   mid-try leaves it to another. Delivery is at least once: the body and
//!   the `X-Flotilla-Delivery` header carry the delivery id, the same on
//!   every try, for the receiver to drop repeats by.
//! - A run's deliveries have ids derived from the run, the event, its
//!   occurrence and the webhook (UUID v5), and a settled delivery is kept a
//!   week: a replica announcing an event again queues nothing twice.

use std::time::Duration;

use protocol::spec::{NotifyEvent, NotifySpec};
use redis::Script;
use std::sync::LazyLock;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::{Scheduler, SchedulerError, now_ms};

/// Tries of one delivery: at once, then after 1, 2, 4 … 256 s (8.5 minutes in all).
const MAX_ATTEMPTS: u32 = 10;
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a replica holds a delivery it tries: longer than a try.
const LEASE: Duration = Duration::from_secs(15);
/// Deliveries one replica takes at once.
const BATCH: u32 = 16;
/// How long a settled delivery is kept (its id refused a second time).
const KEEP_SETTLED: Duration = Duration::from_secs(7 * 24 * 3600);
/// How often each replica looks for deliveries due (sooner when it queues one).
const POLL: Duration = Duration::from_secs(1);

static ENQUEUE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("../lua/notify_enqueue.lua")));
static CLAIM: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("../lua/notify_claim.lua")));
static SETTLE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("../lua/notify_settle.lua")));

/// UUID v5 namespace of deliveries: ids derived from what they announce.
const DELIVERY_NAMESPACE: Uuid = Uuid::from_u128(0x6c0e_2a51_4e1b_4f0e_9d7e_2f1a_b8c3_5d42);

/// Which webhook a delivery goes to, without its URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct WebhookRef(String);

impl WebhookRef {
    /// One of the deployment's default webhooks (`--notify-webhook`).
    pub(crate) fn default_hook(spec: &NotifySpec) -> Self {
        Self(format!("default:{}", digest(&spec.webhook)))
    }

    /// One of the run's campaign's webhooks (`notify:`).
    pub(crate) fn campaign_hook(spec: &NotifySpec) -> Self {
        Self(format!("campaign:{}", digest(&spec.webhook)))
    }

    fn as_str(&self) -> &str {
        &self.0
    }
}

/// Hex SHA-256 of a webhook URL: names it without holding its secret path.
fn digest(url: &str) -> String {
    hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, url.as_bytes()).as_ref())
}

/// The delivery id of a run's `event` (its occurrence `once`) to `hook`:
/// the same on every replica.
pub(crate) fn run_delivery_id(
    run_id: Uuid,
    event: NotifyEvent,
    once: &str,
    hook: &WebhookRef,
) -> Uuid {
    Uuid::new_v5(
        &DELIVERY_NAMESPACE,
        format!("{run_id}/{}/{once}/{}", event.as_str(), hook.as_str()).as_bytes(),
    )
}

/// One notification to queue.
pub(crate) struct Outgoing<'a> {
    pub id: Uuid,
    pub event: NotifyEvent,
    pub hook: WebhookRef,
    pub run_id: Option<Uuid>,
    /// The JSON body (the delivery id is added to it).
    pub body: &'a serde_json::Value,
    /// The text of a Slack message.
    pub text: &'a str,
}

/// How a try went.
enum Tried {
    Delivered,
    /// Not delivered (refused, unreachable, or its webhook not found or
    /// refused on this replica — another may know it): tried again until
    /// the tries run out.
    Retry(String),
    /// Settled already (by a replica whose try overlapped this one).
    Settled,
}

impl Scheduler {
    /// Queues a notification in the outbox (once per delivery id) and wakes
    /// this replica's delivery loop; true when it was new.
    pub(crate) async fn enqueue_notification(
        &self,
        outgoing: Outgoing<'_>,
    ) -> Result<bool, SchedulerError> {
        let names = self.ledger().names();
        let mut body = outgoing.body.clone();
        if let Some(object) = body.as_object_mut() {
            object.insert("delivery_id".into(), outgoing.id.to_string().into());
        }
        let queued: i64 = ENQUEUE
            .key(&names.notify_script_keys(outgoing.id)[..])
            .arg(outgoing.id.to_string())
            .arg(now_ms())
            .arg("event")
            .arg(outgoing.event.as_str())
            .arg("hook")
            .arg(outgoing.hook.as_str())
            .arg("run")
            .arg(outgoing.run_id.map(|id| id.to_string()).unwrap_or_default())
            .arg("json")
            .arg(body.to_string())
            .arg("text")
            .arg(outgoing.text)
            .arg("attempts")
            .arg(0)
            .arg("state")
            .arg("pending")
            .arg("queued_ms")
            .arg(now_ms())
            .invoke_async(&mut self.ledger().connection())
            .await?;
        self.notifications_queued.notify_one();
        Ok(queued == 1)
    }

    /// Delivers what the outbox holds due, until `stop`: every replica runs
    /// it (see the module's notes), beside its report consumer and through
    /// its reconnects — it needs Redis only. An outage is logged and waited out.
    pub(crate) async fn deliver_notifications(&self, stop: &CancellationToken) {
        loop {
            match self.deliver_due_notifications().await {
                // A full batch: more may be due.
                Ok(taken) if taken >= BATCH as usize => continue,
                Ok(_) => {}
                Err(error) => tracing::warn!(error = %error, "cannot read the notification outbox"),
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = self.notifications_queued.notified() => {}
                () = tokio::time::sleep(POLL) => {}
            }
        }
    }

    /// One round of the delivery loop: takes the deliveries due now (at
    /// most 16) and tries each once; how many it took. The loop of `run_with`
    /// runs it every second and whenever this replica queues one.
    pub async fn deliver_due_notifications(&self) -> Result<usize, SchedulerError> {
        let names = self.ledger().names();
        let now = now_ms();
        let lease_ms = u64::try_from(LEASE.as_millis()).unwrap_or(u64::MAX);
        let lease = now.saturating_add(lease_ms);
        let ids: Vec<String> = CLAIM
            .key(names.notify_due_key())
            .arg(now)
            .arg(lease)
            .arg(BATCH)
            .invoke_async(&mut self.ledger().connection())
            .await?;
        let taken = ids.len();
        let tries = ids.into_iter().map(|id| self.try_delivery(id, lease));
        for result in futures_util::future::join_all(tries).await {
            result?;
        }
        Ok(taken)
    }

    /// One try of one delivery (claimed until `lease`), and its outcome recorded.
    async fn try_delivery(&self, id: String, lease: u64) -> Result<(), SchedulerError> {
        use redis::AsyncCommands as _;
        let names = self.ledger().names();
        let Ok(delivery) = Uuid::parse_str(&id) else {
            // Not one of ours: nothing to try, nothing to keep.
            let _: i64 = self
                .ledger()
                .connection()
                .zrem(names.notify_due_key(), &id)
                .await?;
            return Ok(());
        };
        let keys = names.notify_script_keys(delivery);
        let fields: std::collections::HashMap<String, String> =
            self.ledger().connection().hgetall(&keys[1]).await?;
        let field = |name: &str| fields.get(name).map(String::as_str).unwrap_or_default();
        let event = field("event").to_string();
        // Unreadable: this try is its last.
        let attempts: u32 = field("attempts")
            .parse()
            .unwrap_or(MAX_ATTEMPTS.saturating_sub(1));
        let tried = self.post_delivery(delivery, &fields).await;
        let (outcome, next_due) = match &tried {
            Tried::Delivered => {
                self.metrics.notification(&event, "delivered");
                ("delivered", 0)
            }
            // Nothing to record but its leaving the queue (the script does).
            Tried::Settled => ("failed", 0),
            Tried::Retry(error) if attempts.saturating_add(1) >= MAX_ATTEMPTS => {
                self.metrics.notification(&event, "failed");
                tracing::warn!(%delivery, event, error, tries = attempts.saturating_add(1), "notification given up");
                ("failed", 0)
            }
            Tried::Retry(error) => {
                self.metrics.notification(&event, "retried");
                tracing::warn!(%delivery, event, error, attempt = attempts, "notification not delivered");
                let delay = Duration::from_secs(1 << attempts.min(8));
                let delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
                ("retry", now_ms().saturating_add(delay_ms))
            }
        };
        let _: i64 = SETTLE
            .key(&keys[..])
            .arg(&id)
            .arg(outcome)
            .arg(next_due)
            .arg(KEEP_SETTLED.as_secs())
            .arg(lease)
            .invoke_async(&mut self.ledger().connection())
            .await?;
        Ok(())
    }

    /// Finds the delivery's webhook, checks it against the egress policy
    /// and posts the body its format wants.
    async fn post_delivery(
        &self,
        delivery: Uuid,
        fields: &std::collections::HashMap<String, String>,
    ) -> Tried {
        let field = |name: &str| fields.get(name).map(String::as_str).unwrap_or_default();
        if field("state") != "pending" {
            return Tried::Settled;
        }
        let hook = field("hook");
        let spec = match self.resolve_hook(hook, field("run")).await {
            Ok(Some(spec)) => spec,
            Ok(None) => {
                return Tried::Retry(format!(
                    "its webhook ({hook}) is not configured on this replica"
                ));
            }
            Err(error) => return Tried::Retry(format!("cannot look up its webhook: {error}")),
        };
        let shown = crate::egress::redacted_url(&spec.webhook);
        if let Err(why) = self.config().egress.check("the webhook", &spec.webhook) {
            return Tried::Retry(format!("the egress policy refuses {shown}: {why}"));
        }
        let (payload, key) = match spec.format {
            protocol::spec::NotifyFormat::Slack => (
                serde_json::json!({ "text": field("text") }).to_string(),
                None,
            ),
            protocol::spec::NotifyFormat::Json => {
                let key = self.config().notify.hmac_key.clone();
                if key.is_none() {
                    tracing::warn!(
                        webhook = shown.as_str(),
                        "a JSON notification goes unsigned: the scheduler has no --notify-hmac-key-file"
                    );
                }
                (field("json").to_string(), key)
            }
        };
        let url = spec.webhook.clone();
        let posted = tokio::task::spawn_blocking(move || {
            post(&url, delivery, &payload, key.as_deref().map(Vec::as_slice))
        })
        .await
        .unwrap_or_else(|error| Err(error.to_string()));
        match posted {
            Ok(()) => Tried::Delivered,
            // The webhook's path is its secret (Slack): never logged.
            Err(error) => {
                Tried::Retry(format!("{shown}: {}", error.replace(&spec.webhook, &shown)))
            }
        }
    }

    /// The webhook a reference names: among the deployment's defaults, or
    /// the run's campaign's.
    async fn resolve_hook(
        &self,
        hook: &str,
        run: &str,
    ) -> Result<Option<NotifySpec>, SchedulerError> {
        let Some((scope, wanted)) = hook.split_once(':') else {
            return Ok(None);
        };
        let candidates: Vec<NotifySpec> = match scope {
            "default" => self.config().notify.defaults.clone(),
            "campaign" => match Uuid::parse_str(run) {
                Ok(run_id) => self.plan(run_id).await?.campaign.notify.clone(),
                Err(_) => return Ok(None),
            },
            _ => return Ok(None),
        };
        Ok(candidates
            .into_iter()
            .find(|spec| digest(&spec.webhook) == wanted))
    }
}

fn post(url: &str, delivery: Uuid, payload: &str, key: Option<&[u8]>) -> Result<(), String> {
    let mut request = crate::outbound_http(DELIVERY_TIMEOUT)
        .post(url)
        .header("Content-Type", "application/json")
        .header("X-Flotilla-Delivery", delivery.to_string());
    if let Some(key) = key {
        let seconds = now_ms() / 1000;
        request = request.header(
            "X-Flotilla-Signature",
            super::signature(key, seconds, payload),
        );
    }
    let response = request
        .send(payload)
        .map_err(|error| format!("cannot reach it: {error}"))?;
    if response.status().is_success() {
        Ok(())
    } else {
        Err(format!("it answered HTTP {}", response.status()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_delivery_id_is_the_same_for_the_same_announcement_only() {
        let run = Uuid::from_u128(7);
        let hook = |url: &str| {
            WebhookRef::campaign_hook(&NotifySpec {
                on: vec![],
                webhook: url.into(),
                format: protocol::spec::NotifyFormat::Json,
            })
        };
        let a = hook("https://hooks.example.com/a");
        let id = run_delivery_id(run, NotifyEvent::Halted, "", &a);
        assert_eq!(id, run_delivery_id(run, NotifyEvent::Halted, "", &a));
        assert_ne!(id, run_delivery_id(run, NotifyEvent::Completed, "", &a));
        assert_ne!(id, run_delivery_id(run, NotifyEvent::Halted, "wave-2", &a));
        assert_ne!(
            id,
            run_delivery_id(Uuid::from_u128(8), NotifyEvent::Halted, "", &a)
        );
        assert_ne!(
            id,
            run_delivery_id(
                run,
                NotifyEvent::Halted,
                "",
                &hook("https://hooks.example.com/b")
            )
        );
    }

    #[test]
    fn a_webhook_reference_holds_no_part_of_its_url() {
        let secret = "https://hooks.slack.com/services/T0/B0/secretpath";
        let spec = NotifySpec {
            on: vec![],
            webhook: secret.into(),
            format: protocol::spec::NotifyFormat::Slack,
        };
        for hook in [
            WebhookRef::default_hook(&spec),
            WebhookRef::campaign_hook(&spec),
        ] {
            assert!(!hook.as_str().contains("secretpath"), "{hook:?}");
            assert!(!hook.as_str().contains("hooks.slack.com"), "{hook:?}");
        }
        assert_ne!(
            WebhookRef::default_hook(&spec),
            WebhookRef::campaign_hook(&spec)
        );
    }
}
