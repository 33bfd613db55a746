//! Notifications: webhooks told when a run halts, completes, is cancelled or
//! paused, fails a rollout gate or waits for an approval, and when the kill
//! switch is engaged. A campaign names its own (`notify:`); the deployment's
//! defaults (`--notify-webhook`) hear about every campaign and the kill switch.
//!
//! Each event of a run is announced once (a field of the run record, set
//! with HSETNX, decides which replica sends it). Delivery runs on a task of
//! its own — retried with backoff, never holding up the run — and is metered;
//! a scheduler that dies mid-retry loses that delivery (see docs/src/how-to/patch-tuesday.md).
//! JSON bodies carry `X-Flotilla-Signature: t=<unix seconds>,v1=<hex
//! HMAC-SHA256 of "<t>.<body>">` under the deployment's key; Slack bodies
//! are a `text` message (Slack's incoming webhooks carry no signature).

use std::sync::Arc;
use std::time::Duration;

use protocol::spec::{NotifyEvent, NotifyFormat, NotifySpec};
use serde_json::json;
use uuid::Uuid;

use crate::{Scheduler, SchedulerError, now_ms};

/// Tries of one delivery: at once, then after 1, 2, 4, 8 and 16 s.
const MAX_ATTEMPTS: u32 = 6;
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(5);

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
        let targets: Vec<NotifySpec> = plan
            .campaign
            .notify
            .iter()
            .chain(&self.config().notify.defaults)
            .filter(|spec| spec.on.contains(&event))
            .cloned()
            .collect();
        if targets.is_empty() {
            return Ok(());
        }
        let mut connection = self.ledger().connection();
        let first: bool = connection
            .hset_nx(
                self.ledger().names().run_key(run_id),
                format!("notified:{}:{once}", event.as_str()),
                now_ms(),
            )
            .await?;
        if !first {
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
        for target in targets {
            self.deliver(target, event, &body, &text);
        }
        Ok(())
    }

    /// [`Scheduler::notify_run_once`], whose failure (Redis, say) is logged:
    /// a notification never fails what it announces.
    pub(crate) async fn announce(&self, run_id: Uuid, event: NotifyEvent, once: &str) {
        if let Err(error) = self.notify_run_once(run_id, event, once).await {
            tracing::warn!(%run_id, event = event.as_str(), error = %error, "could not notify");
        }
    }

    /// Tells the deployment's default webhooks that want `event` (the kill switch).
    pub(crate) fn notify_deployment(&self, event: NotifyEvent, text: &str) {
        let body = json!({ "event": event.as_str(), "reason": text, "time_ms": now_ms() });
        for target in self.config().notify.defaults.clone() {
            if target.on.contains(&event) {
                self.deliver(target, event, &body, &format!("flotilla: {text}"));
            }
        }
    }

    /// Posts on a task of its own, with retries; never waits for it.
    fn deliver(
        &self,
        target: NotifySpec,
        event: NotifyEvent,
        body: &serde_json::Value,
        text: &str,
    ) {
        let shown = crate::egress::redacted_url(&target.webhook);
        if let Err(why) = self.config().egress.check("the webhook", &target.webhook) {
            self.metrics.notification(event.as_str(), "failed");
            tracing::warn!(
                webhook = shown.as_str(),
                why,
                "notification not sent: the egress policy refuses the webhook"
            );
            return;
        }
        let payload = match target.format {
            NotifyFormat::Slack => json!({ "text": text }).to_string(),
            NotifyFormat::Json => body.to_string(),
        };
        let key = match target.format {
            NotifyFormat::Json => self.config().notify.hmac_key.clone(),
            NotifyFormat::Slack => None,
        };
        if target.format == NotifyFormat::Json && key.is_none() {
            tracing::warn!(
                webhook = shown.as_str(),
                "a JSON notification goes unsigned: the scheduler has no --notify-hmac-key-file"
            );
        }
        let metrics = self.metrics.clone();
        tokio::spawn(async move {
            for attempt in 0..MAX_ATTEMPTS {
                if attempt > 0 {
                    tokio::time::sleep(Duration::from_secs(1 << (attempt - 1))).await;
                }
                let (url, payload, key) = (target.webhook.clone(), payload.clone(), key.clone());
                let posted = tokio::task::spawn_blocking(move || {
                    post(&url, &payload, key.as_deref().map(Vec::as_slice))
                })
                .await
                .unwrap_or_else(|error| Err(error.to_string()));
                match posted {
                    Ok(()) => {
                        metrics.notification(event.as_str(), "delivered");
                        return;
                    }
                    Err(error) => {
                        metrics.notification(event.as_str(), "retried");
                        // The webhook's path is its secret (Slack): never logged.
                        let error = error.replace(&target.webhook, &shown);
                        tracing::warn!(
                            webhook = shown.as_str(),
                            attempt,
                            error,
                            "notification not delivered"
                        );
                    }
                }
            }
            metrics.notification(event.as_str(), "failed");
        });
    }
}

fn post(url: &str, payload: &str, key: Option<&[u8]>) -> Result<(), String> {
    let mut request = crate::outbound_http(DELIVERY_TIMEOUT)
        .post(url)
        .header("Content-Type", "application/json");
    if let Some(key) = key {
        let seconds = now_ms() / 1000;
        request = request.header("X-Flotilla-Signature", signature(key, seconds, payload));
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
