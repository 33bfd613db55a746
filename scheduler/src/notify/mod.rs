//! Notifications: webhooks told when a run halts, completes, is cancelled or
//! paused, fails a rollout gate or waits for an approval, and when the kill
//! switch is engaged. A campaign names its own (`notify:`); the deployment's
//! defaults (`--notify-webhook`) hear about every campaign and the kill switch.
//!
//! Each event of a run is announced once: a field of the run record, set
//! with HSETNX, records that it was, and the deliveries' ids derive from
//! the run, the event and the webhook, so a replica announcing it again
//! queues nothing new. Every notification goes through the durable outbox
//! ([`outbox`]): written to Redis first, then delivered — retried with
//! backoff, never holding up the run — by whichever replica is up, so one
//! in retry survives the scheduler that queued it. Deliveries are metered.
//! JSON bodies carry `X-Flotilla-Signature: t=<unix seconds>,v1=<hex
//! HMAC-SHA256 of "<t>.<body>">` under the deployment's key; Slack bodies
//! are a `text` message (Slack's incoming webhooks carry no signature).
//! Every body carries an `X-Flotilla-Delivery: <uuid>` header (and a JSON
//! body its `delivery_id`), the same on every try: delivery is at least
//! once, and the receiver drops repeats by it.

pub(crate) mod outbox;

use std::sync::Arc;

use protocol::spec::{NotifyEvent, NotifySpec};
use serde_json::json;
use uuid::Uuid;

use crate::{Scheduler, SchedulerError, now_ms};
use outbox::{Outgoing, WebhookRef};

/// The deployment's notification settings.
#[derive(Clone, Default)]
pub struct NotifySettings {
    /// Told about every campaign's runs (as their `on` lists) and the kill switch.
    pub defaults: Vec<NotifySpec>,
    /// Signs JSON bodies; without it they go unsigned (and a warning is logged).
    pub hmac_key: Option<Arc<Vec<u8>>>,
    /// The API's address as people reach it, for the link to a run.
    pub link_base: Option<String>,
}

impl std::fmt::Debug for NotifySettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NotifySettings")
            .field("defaults", &self.defaults.len())
            .field("hmac_key", &self.hmac_key.is_some())
            .field("link_base", &self.link_base)
            .finish()
    }
}

/// `t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">`.
pub fn signature(key: &[u8], unix_seconds: u64, body: &str) -> String {
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, key);
    let tag = aws_lc_rs::hmac::sign(&key, format!("{unix_seconds}.{body}").as_bytes());
    format!("t={unix_seconds},v1={}", hex::encode(tag.as_ref()))
}

impl Scheduler {
    /// Announces `event` of a run once (`once` names the occurrence, e.g. a
    /// wave), to the campaign's and the deployment's webhooks that want it.
    pub(crate) async fn notify_run_once(
        &self,
        run_id: Uuid,
        event: NotifyEvent,
        once: &str,
    ) -> Result<(), SchedulerError> {
        use redis::AsyncCommands as _;
        let plan = self.plan(run_id).await?;
        let wants = |spec: &&NotifySpec| spec.on.contains(&event);
        let targets: Vec<WebhookRef> = plan
            .campaign
            .notify
            .iter()
            .filter(wants)
            .map(WebhookRef::campaign_hook)
            .chain(
                self.config()
                    .notify
                    .defaults
                    .iter()
                    .filter(wants)
                    .map(WebhookRef::default_hook),
            )
            .collect();
        if targets.is_empty() {
            return Ok(());
        }
        let field = format!("notified:{}:{once}", event.as_str());
        let run_key = self.ledger().names().run_key(run_id);
        let mut connection = self.ledger().connection();
        // Announced already: nothing to queue. A replica that stopped
        // between queueing and this mark is repeated by the next one, and
        // the delivery ids make the repeat queue nothing twice.
        if connection.hexists(&run_key, &field).await? {
            return Ok(());
        }
        let progress = self.progress(run_id).await?;
        let link = self
            .config()
            .notify
            .link_base
            .as_ref()
            .map(|base| format!("{}/runs/{run_id}", base.trim_end_matches('/')));
        let body = json!({
            "event": event.as_str(),
            "run_id": run_id,
            "campaign": progress.campaign,
            "state": progress.state,
            "reason": progress.reason,
            "targets": progress.total_targets,
            "failures": progress.failures,
            "allowed_errors": progress.allowed_errors,
            "results": progress.results,
            "started_by": progress.started_by,
            "link": link,
            "time_ms": now_ms(),
        });
        let text = format!(
            "flotilla: run {run_id} of {} {}: {} ({} targets, {} failed){}",
            progress.campaign,
            event.as_str().replace('_', " "),
            progress.reason,
            progress.total_targets,
            progress.failures,
            link.map(|link| format!(" <{link}>")).unwrap_or_default()
        );
        for hook in targets {
            let id = outbox::run_delivery_id(run_id, event, once, &hook);
            self.enqueue_notification(Outgoing {
                id,
                event,
                hook,
                run_id: Some(run_id),
                body: &body,
                text: &text,
            })
            .await?;
        }
        let _: bool = connection.hset_nx(&run_key, &field, now_ms()).await?;
        Ok(())
    }

    /// [`Scheduler::notify_run_once`], whose failure (Redis, say) is logged:
    /// a notification never fails what it announces.
    pub(crate) async fn announce(&self, run_id: Uuid, event: NotifyEvent, once: &str) {
        if let Err(error) = self.notify_run_once(run_id, event, once).await {
            tracing::warn!(%run_id, event = event.as_str(), error = %error, "could not notify");
        }
    }

    /// Tells the deployment's default webhooks that want `event` (the kill
    /// switch), through the outbox; a failure to queue is logged: a
    /// notification never fails what it announces.
    pub(crate) async fn notify_deployment(&self, event: NotifyEvent, text: &str) {
        let body = json!({ "event": event.as_str(), "reason": text, "time_ms": now_ms() });
        let text = format!("flotilla: {text}");
        for spec in &self.config().notify.defaults {
            if !spec.on.contains(&event) {
                continue;
            }
            let queued = self
                .enqueue_notification(Outgoing {
                    id: Uuid::new_v4(),
                    event,
                    hook: WebhookRef::default_hook(spec),
                    run_id: None,
                    body: &body,
                    text: &text,
                })
                .await;
            if let Err(error) = queued {
                self.metrics.notification(event.as_str(), "failed");
                tracing::warn!(event = event.as_str(), error = %error, "could not queue a notification");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_an_hmac_of_the_time_and_the_body() {
        // RFC 4231 test case 2's key and HMAC-SHA256 over "what do ya want for nothing?".
        let key = b"Jefe";
        let body = "what do ya want for nothing?";
        let tag = aws_lc_rs::hmac::sign(
            &aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, key),
            body.as_bytes(),
        );
        assert_eq!(
            hex::encode(tag.as_ref()),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        let signed = signature(key, 1_700_000_000, "{}");
        assert!(signed.starts_with("t=1700000000,v1="));
        assert_ne!(
            signed,
            signature(key, 1_700_000_001, "{}"),
            "the time is signed"
        );
        assert_ne!(
            signed,
            signature(key, 1_700_000_000, "{ }"),
            "the body is signed"
        );
    }
}
