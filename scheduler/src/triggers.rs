//! What starts and stops runs besides an operator: EventBridge-shaped events
//! (a new instance starts each campaign that has a matching trigger, for that
//! instance only, through the urgent queue) and Alertmanager webhooks (a firing
//! alert labelled with a campaign pauses its runs; `scope=global` engages the
//! kill switch), as SSM stops a command on a CloudWatch alarm.

use protocol::run_fields::RunField;
use std::collections::BTreeMap;

use protocol::job::Location;
use protocol::run::RunState;
use protocol::spec::TriggerEvent;
use serde::{Deserialize, Serialize};
use store::{KillScope, Store};
use uuid::Uuid;

use crate::{Scheduler, SchedulerError, now_ms};

/// An EventBridge event, as EventBridge delivers it to a target.
#[derive(Debug, Clone, Deserialize)]
pub struct Event {
    pub source: String,
    #[serde(rename = "detail-type")]
    pub detail_type: String,
    pub account: String,
    pub region: String,
    #[serde(default)]
    pub detail: serde_json::Value,
}

/// The most events one `POST /events` may carry (EventBridge's API
/// destinations deliver one at a time); more is refused whole (413).
pub const MAX_EVENTS_PER_REQUEST: usize = 100;
/// The most alerts one `POST /alerts` may carry; Alertmanager's
/// `webhook_config.max_alerts` keeps its groups under it. More is refused
/// whole (413).
pub const MAX_ALERTS_PER_REQUEST: usize = 200;

/// Refuses a batch of `count` `what`s over `max`, before any is acted on.
fn check_batch(what: &str, count: usize, max: usize, hint: &str) -> Result<(), SchedulerError> {
    if count > max {
        return Err(SchedulerError::TooLarge(format!(
            "{count} {what} in one request; at most {max} are taken at once{hint}"
        )));
    }
    Ok(())
}

/// Reads a `POST /events` body: one EventBridge event or an array of them.
/// The error names the event (by index) and what is wrong with it.
pub fn parse_events(body: &str) -> Result<Vec<Event>, String> {
    let value: serde_json::Value =
        serde_json::from_str(body).map_err(|error| format!("event is not JSON: {error}"))?;
    let items = match value {
        serde_json::Value::Array(items) => items,
        single => vec![single],
    };
    items
        .into_iter()
        .enumerate()
        .map(|(index, item)| {
            serde_json::from_value(item).map_err(|error| format!("event {index}: {error}"))
        })
        .collect()
}

/// Reads a `POST /alerts` body: Alertmanager's webhook payload.
pub fn parse_alerts(body: &str) -> Result<AlertmanagerPayload, String> {
    serde_json::from_str(body)
        .map_err(|error| format!("not an Alertmanager webhook payload: {error}"))
}

/// The event as a trigger: which kind, for which instance. `None` for events
/// flotilla does not act on (another state, another source).
pub fn trigger_of(event: &Event) -> Result<Option<(TriggerEvent, String)>, SchedulerError> {
    let instance = |field: &str| {
        event
            .detail
            .get(field)
            .and_then(|value| value.as_str())
            .map(str::to_string)
            .ok_or_else(|| {
                SchedulerError::Invalid(format!(
                    "detail.{field}: missing; the event names no instance"
                ))
            })
    };
    match (event.source.as_str(), event.detail_type.as_str()) {
        ("aws.ec2", "EC2 Instance State-change Notification") => {
            if event.detail.get("state").and_then(|state| state.as_str()) != Some("running") {
                return Ok(None);
            }
            Ok(Some((
                TriggerEvent::Ec2InstanceRunning,
                instance("instance-id")?,
            )))
        }
        ("aws.ssm", "SSM Managed Instance Registration") => Ok(Some((
            TriggerEvent::SsmInstanceRegistered,
            instance("instance-id")?,
        ))),
        _ => Ok(None),
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct StartedRun {
    pub campaign: String,
    pub run_id: Uuid,
}

/// An Alertmanager webhook payload (version 4), the parts flotilla reads.
#[derive(Debug, Clone, Deserialize)]
pub struct AlertmanagerPayload {
    pub alerts: Vec<Alert>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Alert {
    pub status: String,
    /// Alertmanager's identity of the alert (its label set's hash).
    #[serde(default)]
    pub fingerprint: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

impl Alert {
    /// The alert's identity: Alertmanager's fingerprint, else its labels.
    fn identity(&self) -> String {
        match &self.fingerprint {
            Some(fingerprint) if !fingerprint.is_empty() => fingerprint.clone(),
            _ => self
                .labels
                .iter()
                .map(|(name, value)| format!("{name}={value}"))
                .collect::<Vec<_>>()
                .join(","),
        }
    }
}

/// An alert firing for a campaign, as the scheduler remembers it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FiringAlert {
    pub alert: String,
    pub summary: String,
    pub since_ms: u64,
}

/// What an alert made flotilla do.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AlertAction {
    pub alert: String,
    /// `kill_switch_engaged`, `run_paused` or `ignored`.
    pub action: String,
    pub campaign: Option<String>,
    pub run_id: Option<Uuid>,
}

impl Scheduler {
    /// Handles the events of one request, at most
    /// [`MAX_EVENTS_PER_REQUEST`] (else none).
    pub async fn handle_events(&self, events: &[Event]) -> Result<Vec<StartedRun>, SchedulerError> {
        check_batch("events", events.len(), MAX_EVENTS_PER_REQUEST, "")?;
        let mut started = Vec::new();
        for event in events {
            started.extend(self.handle_event(event).await?);
        }
        Ok(started)
    }

    /// Starts every stored campaign with a trigger of the event's kind, for
    /// the event's instance only, through the start gate (which checks that
    /// the campaign covers the event's account and region, approval,
    /// freezes and live runs, and records what it decided).
    pub async fn handle_event(&self, event: &Event) -> Result<Vec<StartedRun>, SchedulerError> {
        let Some((kind, instance_id)) = trigger_of(event)? else {
            return Ok(Vec::new());
        };
        let starter = crate::start_gate::Starter::Event {
            kind,
            location: Location {
                account_id: event.account.clone(),
                region: event.region.clone(),
            },
            instance_id,
        };
        let request = crate::start_gate::StartRequest::default();
        let mut started = Vec::new();
        // An outage, or a campaign whose start gate was busy, fails the
        // request once every campaign had its turn (the sender retries; what
        // started is not started twice: a live run refuses its instance).
        let mut retry = None;
        for name in self.campaign_names().await? {
            match self.start_run_as(&starter, &name, &request).await {
                Ok(start) => started.push(StartedRun {
                    campaign: name,
                    run_id: start.run_id,
                }),
                // Refused (recorded by the gate) or not this campaign's event.
                Err(error) if crate::start_gate::refusal_reason(&error).is_some() => {}
                Err(error) if error.is_retryable() => {
                    tracing::warn!(campaign = name.as_str(), error = %error, "event not decided for a campaign; the request fails for a retry");
                    retry.get_or_insert(error);
                }
                // One campaign's fault (a stored spec that no longer reads,
                // a calendar entry that does not parse) starts nothing for
                // it — fail closed — and keeps no other campaign from its turn.
                Err(error) => {
                    tracing::error!(campaign = name.as_str(), error = %error, "event started nothing for a campaign that cannot be checked");
                    retry.get_or_insert(error);
                }
            }
        }
        match retry {
            Some(error) => Err(error),
            None => Ok(started),
        }
    }

    /// The alerts firing for `campaign` now, as Alertmanager last said.
    pub async fn firing_alerts(&self, campaign: &str) -> Result<Vec<FiringAlert>, SchedulerError> {
        use redis::AsyncCommands as _;
        let mut connection = self.ledger().connection();
        let raw: Vec<String> = connection
            .hvals(self.ledger().names().campaign_alerts_key(campaign))
            .await?;
        // A record that does not parse still says an alert fires: fail closed.
        Ok(raw
            .iter()
            .map(|raw| {
                serde_json::from_str(raw).unwrap_or_else(|_| FiringAlert {
                    alert: "unreadable alert record".into(),
                    summary: String::new(),
                    since_ms: 0,
                })
            })
            .collect())
    }

    /// Remembers whether a campaign's alert fires (a resolved one is forgotten).
    async fn record_alert(
        &self,
        campaign: &str,
        alert: &Alert,
        name: &str,
        summary: &str,
    ) -> Result<(), SchedulerError> {
        use redis::AsyncCommands as _;
        let mut connection = self.ledger().connection();
        let key = self.ledger().names().campaign_alerts_key(campaign);
        if alert.status == "firing" {
            let record = FiringAlert {
                alert: name.to_string(),
                summary: summary.to_string(),
                since_ms: now_ms(),
            };
            let _: u8 = connection
                .hset_nx(&key, alert.identity(), serde_json::to_string(&record)?)
                .await?;
        } else {
            let _: u8 = connection.hdel(&key, alert.identity()).await?;
        }
        Ok(self.ledger().connection().replicated(&key).await?)
    }

    /// Acts on firing alerts and remembers which of a campaign's fire: its
    /// paused runs are not resumed while one does, unless overridden.
    pub async fn handle_alerts(
        &self,
        payload: &AlertmanagerPayload,
    ) -> Result<Vec<AlertAction>, SchedulerError> {
        check_batch(
            "alerts",
            payload.alerts.len(),
            MAX_ALERTS_PER_REQUEST,
            "; set max_alerts in Alertmanager's webhook_config",
        )?;
        let mut actions = Vec::new();
        // The global switch is engaged, told and recorded once per request,
        // however many of its alerts ask for it.
        let mut engaged_globally = false;
        for alert in &payload.alerts {
            let name = alert
                .labels
                .get("alertname")
                .cloned()
                .unwrap_or_else(|| "unnamed alert".into());
            let summary = alert
                .annotations
                .get("summary")
                .or_else(|| alert.annotations.get("description"))
                .map(|text| format!(": {text}"))
                .unwrap_or_default();
            let reason = format!("alert {name} firing{summary}");
            if let Some(campaign) = alert.labels.get("campaign") {
                self.record_alert(campaign, alert, &name, summary.trim_start_matches(": "))
                    .await?;
            }
            let ignored = |campaign: Option<String>| AlertAction {
                alert: name.clone(),
                action: "ignored".into(),
                campaign,
                run_id: None,
            };
            if alert.status != "firing" {
                actions.push(ignored(alert.labels.get("campaign").cloned()));
                continue;
            }
            if alert.labels.get("scope").map(String::as_str) == Some("global") {
                actions.push(AlertAction {
                    alert: name.clone(),
                    action: "kill_switch_engaged".into(),
                    campaign: None,
                    run_id: None,
                });
                if engaged_globally {
                    continue;
                }
                engaged_globally = true;
                self.store
                    .engage_kill_switch(&KillScope::Global, &reason)
                    .await?;
                tracing::warn!(
                    alert = name.as_str(),
                    "alert engaged the global kill switch"
                );
                self.notify_deployment(
                    protocol::spec::NotifyEvent::KillSwitch,
                    &format!("the global kill switch is engaged: {reason}"),
                )
                .await;
                self.audit_internal(
                    format!("alert:{name}"),
                    "kill:engage",
                    "global".into(),
                    reason.clone(),
                )
                .await;
                continue;
            }
            let Some(campaign) = alert.labels.get("campaign") else {
                actions.push(ignored(None));
                continue;
            };
            let mut paused_any = false;
            for run_id in self.live_runs_of(campaign).await? {
                if self.pause(run_id, &reason).await? {
                    tracing::warn!(alert = name.as_str(), campaign = campaign.as_str(), %run_id, "alert paused a run");
                    self.audit_internal(
                        format!("alert:{name}"),
                        "runs:steer",
                        format!("run {run_id} paused"),
                        reason.clone(),
                    )
                    .await;
                    paused_any = true;
                    actions.push(AlertAction {
                        alert: name.clone(),
                        action: "run_paused".into(),
                        campaign: Some(campaign.clone()),
                        run_id: Some(run_id),
                    });
                }
            }
            if !paused_any {
                actions.push(ignored(Some(campaign.clone())));
            }
        }
        Ok(actions)
    }

    /// Runs of `campaign` that are not over (newest first), from the live
    /// index; one of it whose state does not parse counts as live (an
    /// alert tries to pause it, the start gate refuses beside it).
    pub async fn live_runs_of(&self, campaign: &str) -> Result<Vec<Uuid>, SchedulerError> {
        Ok(self
            .live_run_records_of(campaign)
            .await?
            .into_iter()
            .map(|(run_id, _)| run_id)
            .collect())
    }

    /// [`Scheduler::live_runs_of`] with each run's record.
    pub async fn live_run_records_of(
        &self,
        campaign: &str,
    ) -> Result<Vec<(Uuid, crate::ledger::RunFields)>, SchedulerError> {
        Ok(self
            .ledger
            .live_runs()
            .await?
            .into_iter()
            .filter(|(_, fields)| {
                fields.get(RunField::Campaign) == Some(campaign)
                    && fields.state().map_or(true, |state| !state.is_final())
            })
            .collect())
    }

    /// Once a second: start delayed runs whose time has come, advance
    /// rollouts, apply freezes and windows, fire schedules (if this replica
    /// leads) and write new audit records to files. Each duty runs on its own: one that fails (an
    /// unparseable calendar entry, an invalid stored spec) is logged and
    /// counted in `flotilla_scheduler_tick_failures_total{duty}` and does
    /// not keep the others from running. An outage (Redis or RabbitMQ
    /// gone) is returned, for the caller to reconnect.
    pub async fn tick(&self) -> Result<(), SchedulerError> {
        let duties: [(&'static str, Result<(), SchedulerError>); 6] = [
            ("due_runs", self.start_due_runs().await.map(|_| ())),
            ("rollouts", self.rollout_tick().await),
            ("freezes", self.freeze_tick().await),
            ("windows", self.window_tick().await),
            ("schedules", self.schedule_tick().await),
            ("audit_files", self.export_audit().await.map(|_| ())),
        ];
        let mut outage = None;
        for (duty, result) in duties {
            let Err(error) = result else { continue };
            self.metrics.tick_failed(duty);
            if error.service().is_some() && error.is_retryable() {
                tracing::warn!(duty, error = %error, "tick duty failed: a service is away");
                outage.get_or_insert(error);
            } else {
                tracing::error!(duty, error = %error, "tick duty failed; the other duties went on");
            }
        }
        outage.map_or(Ok(()), Err)
    }

    /// Refreshes the gauges that describe runs and queues (at scrape time).
    pub async fn refresh_gauges(&self) -> Result<(), SchedulerError> {
        let mut by_state: BTreeMap<&'static str, i64> = RunState::ALL
            .iter()
            .map(|state| (state.as_str(), 0))
            .collect();
        self.metrics.reset_run_gauges();
        let mut budgets: BTreeMap<String, (i64, i64)> = BTreeMap::new();
        // Live runs only (the index), every one of them: finished runs are
        // history, and a cap taken over all runs dropped older live ones.
        for (run_id, fields) in self.ledger.live_runs().await? {
            let state = match fields.state() {
                Ok(state) => state,
                Err(error) => {
                    tracing::warn!(%run_id, error = %error, "run record unreadable; left out of the gauges");
                    continue;
                }
            };
            if state.is_final() {
                continue;
            }
            *by_state.entry(state.as_str()).or_default() += 1;
            let campaign = fields
                .get(RunField::Campaign)
                .unwrap_or_default()
                .to_string();
            if fields.get(RunField::AllowedErrors).is_some() {
                let allowed =
                    i64::try_from(fields.number(RunField::AllowedErrors)?).unwrap_or(i64::MAX);
                let failures =
                    i64::try_from(fields.number(RunField::Failures)?).unwrap_or(i64::MAX);
                // The run closest to halting speaks for its campaign.
                let tightest = budgets
                    .entry(campaign.clone())
                    .or_insert((allowed, allowed - failures));
                if allowed - failures < tightest.1 {
                    *tightest = (allowed, allowed - failures);
                }
            }
            self.metrics.set_discovery(
                &campaign,
                i64::try_from(fields.number(RunField::DiscoveredLocations)?).unwrap_or(0),
                i64::try_from(fields.number(RunField::LocationCount)?).unwrap_or(0),
            );
        }
        // Finished runs: the states of the newest 1,000, one pipelined read
        // of one field each (the `Halted` alert watches this count rise).
        for state in self.ledger.recent_final_states(1_000).await? {
            *by_state.entry(state.as_str()).or_default() += 1;
        }
        for (campaign, (allowed, remaining)) in budgets {
            self.metrics.set_budget(&campaign, allowed, remaining);
        }
        self.metrics.set_runs(&by_state);
        let prefix = format!("{}.", self.broker.names().prefix());
        for (queue, messages) in self.broker.queue_depths().await? {
            // By role (jobs.bulk, reports, …): the prefix is the same for all.
            let role = queue.strip_prefix(&prefix).unwrap_or(&queue);
            self.metrics.set_queue_messages(role, i64::from(messages));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn event(json: &str) -> Event {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn a_running_instance_is_a_trigger_and_other_states_are_not() {
        let running = event(
            r#"{"source":"aws.ec2","detail-type":"EC2 Instance State-change Notification","account":"111122223333","region":"us-east-1","detail":{"instance-id":"i-0123456789abcdef0","state":"running"}}"#,
        );
        assert_eq!(
            trigger_of(&running).unwrap(),
            Some((
                TriggerEvent::Ec2InstanceRunning,
                "i-0123456789abcdef0".into()
            ))
        );
        let stopped = event(
            r#"{"source":"aws.ec2","detail-type":"EC2 Instance State-change Notification","account":"111122223333","region":"us-east-1","detail":{"instance-id":"i-0123456789abcdef0","state":"stopped"}}"#,
        );
        assert_eq!(trigger_of(&stopped).unwrap(), None);
        let registered = event(
            r#"{"source":"aws.ssm","detail-type":"SSM Managed Instance Registration","account":"111122223333","region":"us-east-1","detail":{"instance-id":"mi-0123456789abcdef0"}}"#,
        );
        assert_eq!(
            trigger_of(&registered).unwrap(),
            Some((
                TriggerEvent::SsmInstanceRegistered,
                "mi-0123456789abcdef0".into()
            ))
        );
    }

    #[test]
    fn an_event_without_its_instance_says_which_field_is_missing() {
        let broken = event(
            r#"{"source":"aws.ec2","detail-type":"EC2 Instance State-change Notification","account":"1","region":"us-east-1","detail":{"state":"running"}}"#,
        );
        assert!(
            trigger_of(&broken)
                .unwrap_err()
                .to_string()
                .contains("detail.instance-id")
        );
    }
}
