//! Rollouts: a run's targets in waves. The ledger's scripts admit a wave's
//! targets and move the run to Baking when the wave is through
//! (`admit.lua`); here what happens between two waves — after the bake time,
//! the health gates (the wave's own failures, PromQL queries, Alertmanager
//! alerts), then the next wave, an approval, a pause or a halt
//! (`wave_gate.lua`).
//!
//! Every replica's ticker looks at the runs whose bake has ended (a sorted
//! set indexed by bake end); all the state is in the run's record, so a
//! scheduler killed mid-bake loses nothing: the next one (or another replica)
//! checks the gates when the bake ends. Two replicas checking the same run at
//! once is harmless: the move is one script that only one of them wins.

use protocol::run_fields::{RunField, WaveField};
use std::collections::BTreeMap;
use std::time::Duration;

use protocol::campaign::{HealthGate, Rollout};
use protocol::run::RunState;
use protocol::spec::GateFailure;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::ledger::{RunFields, WaveOutcome, location_key};
use crate::{Scheduler, SchedulerError, now_ms};

/// How long a gate's HTTP request may take, all in.
const GATE_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest gate answer read (a PromQL result or alert list).
const MAX_GATE_ANSWER_BYTES: u64 = 1 << 20;
/// Baked runs looked at per tick.
const BAKED_PER_TICK: isize = 100;

/// One gate's verdict on a wave, kept in the run record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GateResult {
    /// `wave_errors`, `prometheus` or `alertmanager`.
    pub gate: String,
    pub passed: bool,
    pub detail: String,
}

/// One wave of a run, as operators see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WaveProgress {
    /// 1-based.
    pub wave: u64,
    /// Targets admitted by the end of this wave, cumulative.
    pub cumulative_targets: u64,
    /// `pending`, `running`, `baking`, `awaiting approval`, `passed`, `failed`.
    pub state: String,
    /// Targets of this wave and how many failed (once it is through).
    pub targets: Option<u64>,
    pub failures: Option<u64>,
    #[serde(default)]
    pub gates: Vec<GateResult>,
}

/// The cumulative caps of a run's waves, once discovery has resolved them.
fn wave_caps(fields: &RunFields) -> Option<Vec<u64>> {
    serde_json::from_str(fields.get(RunField::WaveCaps)?).ok()
}

/// The waves of a run from its record; empty without a rollout or before
/// discovery ends.
pub(crate) fn waves_of(fields: &RunFields) -> Result<Vec<WaveProgress>, SchedulerError> {
    let Some(caps) = wave_caps(fields) else {
        return Ok(Vec::new());
    };
    let current = fields.number(RunField::Wave)?;
    let state = fields.state().ok();
    caps.iter()
        .enumerate()
        .map(|(index, cap)| {
            let index = index as u64;
            let gates: Vec<GateResult> = fields
                .wave(index, WaveField::Gates)
                .and_then(|raw| serde_json::from_str(raw).ok())
                .unwrap_or_default();
            let label = match (index.cmp(&current), fields.wave(index, WaveField::Outcome)) {
                (std::cmp::Ordering::Greater, _) => "pending",
                (_, Some("pause" | "halt")) => "failed",
                (std::cmp::Ordering::Less, _) => "passed",
                (std::cmp::Ordering::Equal, _) => match state {
                    Some(RunState::Baking) => "baking",
                    Some(RunState::AwaitingApproval) => "awaiting approval",
                    Some(RunState::Completed) => "passed",
                    _ if index as usize + 1 == caps.len()
                        || fields.wave(index, WaveField::DoneMs).is_none() =>
                    {
                        "running"
                    }
                    _ => "through",
                },
            };
            Ok(WaveProgress {
                wave: index + 1,
                cumulative_targets: *cap,
                state: label.to_string(),
                targets: fields.wave_number(index, WaveField::Targets)?,
                failures: fields.wave_number(index, WaveField::Failures)?,
                gates,
            })
        })
        .collect()
}

impl Scheduler {
    /// A rollout's wave caps and canary location keys, once every location
    /// of the run is discovered (`total` targets).
    pub(crate) async fn resolve_waves(
        &self,
        run_id: Uuid,
        rollout: &Rollout,
        regions: &[String],
        total: u64,
    ) -> Result<(Vec<u64>, Vec<String>), SchedulerError> {
        let canary: Vec<String> = rollout
            .canary_accounts
            .iter()
            .flat_map(|account_id| {
                regions.iter().map(move |region| {
                    location_key(&protocol::job::Location {
                        account_id: account_id.clone(),
                        region: region.clone(),
                    })
                })
            })
            .collect();
        let counts = self.ledger.location_targets(run_id, &canary).await?;
        // Canary accounts not in the run (or whose discovery failed) add nothing.
        let canary: Vec<(String, u64)> = canary
            .into_iter()
            .zip(counts)
            .filter_map(|(key, count)| count.map(|count| (key, count)))
            .collect();
        let canary_targets = canary.iter().map(|(_, count)| count).sum();
        let caps = rollout.wave_caps(total, canary_targets);
        Ok((caps, canary.into_iter().map(|(key, _)| key).collect()))
    }

    /// Once a second: every baked run whose bake has ended gets its gates
    /// checked and moves on.
    pub(crate) async fn rollout_tick(&self) -> Result<(), SchedulerError> {
        let key = self.ledger.names().baking_runs_key();
        for run_id in self.ledger.due_runs(&key, now_ms(), BAKED_PER_TICK).await? {
            let fields = match self.ledger.run_fields(run_id).await? {
                Some(fields) if fields.state()? == RunState::Baking => fields,
                // Moved on (by another replica, a pause, a cancel) or gone.
                _ => {
                    self.ledger.unindex_run(&key, run_id).await?;
                    continue;
                }
            };
            let until = fields.number(RunField::BakeUntil)?;
            if until > now_ms() {
                // Baking again (a later wave) since it was indexed.
                self.ledger.index_run(&key, run_id, until).await?;
                continue;
            }
            self.check_gates(run_id, &fields).await?;
            self.ledger.unindex_run(&key, run_id).await?;
        }
        Ok(())
    }

    /// Checks the gates of the wave a baked run has finished, and moves it on.
    async fn check_gates(&self, run_id: Uuid, fields: &RunFields) -> Result<(), SchedulerError> {
        let plan = self.plan(run_id).await?;
        let Some(rollout) = plan.campaign.rollout.as_ref() else {
            return Err(SchedulerError::Corrupt(format!(
                "run {run_id} is baking but its campaign has no rollout"
            )));
        };
        let wave = fields.number(RunField::Wave)?;
        let waves = wave_caps(fields).map_or(0, |caps| caps.len());
        let targets = fields
            .wave_number(wave, WaveField::Targets)?
            .unwrap_or_default();
        let failures = fields
            .wave_number(wave, WaveField::Failures)?
            .unwrap_or_default();
        let allowed = rollout.max_wave_errors.allowed_errors(targets);
        let mut results = vec![GateResult {
            gate: "wave_errors".into(),
            passed: failures <= allowed,
            detail: format!(
                "{failures} of {targets} targets failed; {allowed} allowed (max_wave_errors {})",
                rollout.max_wave_errors
            ),
        }];
        for gate in &rollout.gates {
            let (passed, detail) = match check_gate(gate, &self.config().egress).await {
                Ok(()) => (true, describe_gate(gate)),
                Err(problem) => (false, format!("{}: {problem}", describe_gate(gate))),
            };
            results.push(GateResult {
                gate: gate.kind().into(),
                passed,
                detail,
            });
        }
        for result in &results {
            self.metrics.gate_checked(
                &plan.campaign.name,
                &result.gate,
                if result.passed { "passed" } else { "failed" },
            );
        }
        let failed: Vec<&GateResult> = results.iter().filter(|result| !result.passed).collect();
        let (outcome, reason) = match failed.first() {
            Some(first) => (
                match rollout.on_gate_failure {
                    GateFailure::Halt => WaveOutcome::Halt,
                    GateFailure::Pause => WaveOutcome::Pause,
                },
                format!(
                    "wave {} of {waves}: gate {} failed: {}",
                    wave + 1,
                    first.gate,
                    first.detail
                ),
            ),
            None if rollout.approve => (
                WaveOutcome::Approval,
                format!(
                    "wave {} of {waves} passed its gates; waiting for an approver (flotilla run approve)",
                    wave + 1
                ),
            ),
            None => (
                WaveOutcome::Next,
                format!(
                    "wave {} of {waves} passed its gates; wave {} started",
                    wave + 1,
                    wave + 2
                ),
            ),
        };
        let gates_json = serde_json::to_string(&results)?;
        if self
            .ledger
            .wave_gate(run_id, wave, outcome, &reason, &gates_json, now_ms())
            .await?
        {
            self.metrics
                .wave_ended(&plan.campaign.name, outcome.as_str());
            let event = match outcome {
                WaveOutcome::Halt | WaveOutcome::Pause => {
                    Some(protocol::spec::NotifyEvent::GateFailed)
                }
                WaveOutcome::Approval => Some(protocol::spec::NotifyEvent::AwaitingApproval),
                _ => None,
            };
            if let Some(event) = event {
                self.announce(run_id, event, &format!("wave-{wave}")).await;
            }
            tracing::info!(%run_id, wave = wave + 1, outcome = outcome.as_str(), reason, "wave gates checked");
            self.advance(run_id).await?;
        }
        Ok(())
    }

    /// An approver lets a run waiting between two waves go on.
    pub async fn approve_wave(&self, run_id: Uuid, reason: &str) -> Result<bool, SchedulerError> {
        let fields = self.ledger.known_run_fields(run_id).await?;
        let wave = fields.number(RunField::Wave)?;
        let approved = self
            .ledger
            .wave_gate(run_id, wave, WaveOutcome::Approved, reason, "", now_ms())
            .await?;
        if approved {
            self.metrics.wave_ended(
                fields.get(RunField::Campaign).unwrap_or_default(),
                WaveOutcome::Approved.as_str(),
            );
            self.advance(run_id).await?;
        }
        Ok(approved)
    }

    /// Resumes a run a failed gate paused: the operator has looked, and the
    /// next wave starts. False for any other run.
    pub(crate) async fn resume_past_gate(
        &self,
        run_id: Uuid,
        fields: &RunFields,
        reason: &str,
    ) -> Result<bool, SchedulerError> {
        if fields.get(RunField::GateFailedWave).is_none() {
            return Ok(false);
        }
        let resumed = self
            .ledger
            .wave_gate(
                run_id,
                fields.number(RunField::Wave)?,
                WaveOutcome::Resumed,
                reason,
                "",
                now_ms(),
            )
            .await?;
        if resumed {
            self.metrics.wave_ended(
                fields.get(RunField::Campaign).unwrap_or_default(),
                WaveOutcome::Resumed.as_str(),
            );
        }
        Ok(resumed)
    }
}

fn describe_gate(gate: &HealthGate) -> String {
    match gate {
        HealthGate::Prometheus { url, query } => format!("{url} query {query:?}"),
        HealthGate::Alertmanager { url, matchers } => format!("{url} alerts matching {matchers:?}"),
    }
}

/// Ok when the gate passes; else what it found (or why it could not look:
/// a gate that cannot be checked fails — closed).
async fn check_gate(gate: &HealthGate, egress: &crate::egress::EgressPolicy) -> Result<(), String> {
    // Again at every check: the policy may have changed since the apply.
    egress.check("the gate URL", gate.url())?;
    let gate = gate.clone();
    tokio::task::spawn_blocking(move || match &gate {
        HealthGate::Prometheus { url, query } => {
            let answer = get_json(&format!("{url}/api/v1/query"), &[("query", query.as_str())])?;
            prometheus_verdict(&answer)
        }
        HealthGate::Alertmanager { url, matchers } => {
            let filters: Vec<String> = matchers
                .iter()
                .map(|(name, value)| format!("{name}=\"{value}\""))
                .collect();
            let mut query = vec![
                ("active", "true"),
                ("silenced", "false"),
                ("inhibited", "false"),
            ];
            query.extend(filters.iter().map(|filter| ("filter", filter.as_str())));
            let answer = get_json(&format!("{url}/api/v2/alerts"), &query)?;
            alertmanager_verdict(&answer, matchers)
        }
    })
    .await
    .map_err(|error| format!("the check did not finish: {error}"))?
}

fn get_json(url: &str, query: &[(&str, &str)]) -> Result<serde_json::Value, String> {
    let mut request = crate::outbound_http(GATE_TIMEOUT).get(url);
    for (name, value) in query {
        request = request.query(*name, *value);
    }
    let mut response = request
        .call()
        .map_err(|error| format!("cannot reach it: {error}"))?;
    let status = response.status();
    let body = response
        .body_mut()
        .with_config()
        .limit(MAX_GATE_ANSWER_BYTES)
        .read_to_string()
        .map_err(|error| format!("reading its answer: {error}"))?;
    // Reported by status, never by body: what a gate answered is not shown
    // to viewers nor posted to webhooks.
    if status.is_redirection() {
        return Err(format!(
            "answered HTTP {status}, a redirect (never followed)"
        ));
    }
    if !status.is_success() {
        return Err(format!("answered HTTP {status}"));
    }
    serde_json::from_str(&body).map_err(|_| "its answer is not JSON".to_string())
}

/// A PromQL instant query passes when it returns an empty vector.
fn prometheus_verdict(answer: &serde_json::Value) -> Result<(), String> {
    if answer["status"] != "success" {
        return Err("the query failed (Prometheus answered status error)".into());
    }
    if answer["data"]["resultType"] != "vector" {
        return Err("the query must return a vector, it returned something else".into());
    }
    match answer["data"]["result"].as_array() {
        Some(series) if series.is_empty() => Ok(()),
        Some(series) => Err(format!("it returned {} series", series.len())),
        None => Err("its answer has no result list".into()),
    }
}

/// Alertmanager passes when no active alert carries every matcher label
/// (checked here too: an Alertmanager that ignored the filter must not pass
/// unrelated alerts, nor fail on them).
fn alertmanager_verdict(
    answer: &serde_json::Value,
    matchers: &BTreeMap<String, String>,
) -> Result<(), String> {
    let alerts = answer
        .as_array()
        .ok_or("its answer is not a list of alerts")?;
    let firing = alerts
        .iter()
        .filter(|alert| {
            alert["status"]["state"].as_str().unwrap_or("active") == "active"
                && matchers
                    .iter()
                    .all(|(name, value)| alert["labels"][name].as_str() == Some(value.as_str()))
        })
        .count();
    if firing == 0 {
        Ok(())
    } else {
        Err(format!("{firing} alert(s) firing"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A one-shot HTTP server on loopback answering `response` to every
    /// connection (at most `connections`); how many it served.
    fn answering(
        response: &'static str,
        connections: usize,
    ) -> (String, std::thread::JoinHandle<usize>) {
        use std::io::{Read as _, Write as _};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let served = std::thread::spawn(move || {
            let mut served = 0;
            let deadline = std::time::Instant::now() + Duration::from_secs(3);
            while served < connections && std::time::Instant::now() < deadline {
                match listener.accept() {
                    Ok((mut stream, _)) => {
                        stream.set_nonblocking(false).unwrap();
                        stream
                            .set_read_timeout(Some(Duration::from_secs(1)))
                            .unwrap();
                        let mut request = [0u8; 4096];
                        let _ = stream.read(&mut request);
                        let _ = stream.write_all(response.as_bytes());
                        served += 1;
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
            served
        });
        (url, served)
    }

    #[tokio::test]
    async fn a_gate_is_reported_by_status_never_by_body_and_never_redirected() {
        let loopback = crate::egress::EgressPolicy::plain_http_to(&["127.0.0.1"]);
        // A target the redirect points at: it must never be asked.
        let (target, target_served) =
            answering("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n[]", 1);
        let redirect: &'static str = Box::leak(
            format!("HTTP/1.1 302 Found\r\nlocation: {target}/api/v2/alerts\r\ncontent-length: 0\r\n\r\n")
                .into_boxed_str(),
        );
        let (redirecting, _) = answering(redirect, 1);
        let gate = HealthGate::Alertmanager {
            url: redirecting,
            matchers: BTreeMap::new(),
        };
        let why = check_gate(&gate, &loopback).await.unwrap_err();
        assert!(
            why.contains("302") && why.contains("never followed"),
            "{why}"
        );
        assert_eq!(
            target_served.join().unwrap(),
            0,
            "the redirect was followed"
        );

        let (leaking, _) = answering(
            "HTTP/1.1 500 Oops\r\ncontent-length: 24\r\n\r\nredis_password=SECRET123",
            1,
        );
        let gate = HealthGate::Prometheus {
            url: leaking,
            query: "up == 0".into(),
        };
        let why = check_gate(&gate, &loopback).await.unwrap_err();
        assert!(why.contains("500") && !why.contains("SECRET"), "{why}");

        let (erroring, _) = answering(
            "HTTP/1.1 200 OK\r\ncontent-length: 38\r\n\r\n{\"status\":\"error\",\"error\":\"SECRET123\"}",
            1,
        );
        let gate = HealthGate::Prometheus {
            url: erroring,
            query: "up == 0".into(),
        };
        let why = check_gate(&gate, &loopback).await.unwrap_err();
        assert!(!why.contains("SECRET"), "{why}");

        // A gate the policy does not allow is not asked at all.
        let (unasked, unasked_served) =
            answering("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n[]", 1);
        let gate = HealthGate::Alertmanager {
            url: unasked,
            matchers: BTreeMap::new(),
        };
        let why = check_gate(&gate, &crate::egress::EgressPolicy::default())
            .await
            .unwrap_err();
        assert!(why.contains("--egress-allow"), "{why}");
        assert_eq!(unasked_served.join().unwrap(), 0);
    }
    use serde_json::json;

    #[test]
    fn a_prometheus_gate_passes_only_on_an_empty_vector() {
        let empty = json!({"status": "success", "data": {"resultType": "vector", "result": []}});
        assert_eq!(prometheus_verdict(&empty), Ok(()));
        let series = json!({"status": "success", "data": {"resultType": "vector",
            "result": [{"metric": {"campaign": "c"}, "value": [1, "0.4"]}]}});
        assert!(
            prometheus_verdict(&series)
                .unwrap_err()
                .contains("1 series")
        );
        let scalar =
            json!({"status": "success", "data": {"resultType": "scalar", "result": [1, "1"]}});
        assert!(prometheus_verdict(&scalar).unwrap_err().contains("vector"));
        let failed = json!({"status": "error", "error": "parse error"});
        let why = prometheus_verdict(&failed).unwrap_err();
        assert!(
            why.contains("query failed") && !why.contains("parse error"),
            "by status, never by body: {why}"
        );
    }

    #[test]
    fn an_alertmanager_gate_fails_on_a_matching_active_alert_only() {
        let matchers = BTreeMap::from([("campaign".to_string(), "patch".to_string())]);
        let alerts = json!([
            {"labels": {"alertname": "Other", "campaign": "scan"}, "status": {"state": "active"}},
            {"labels": {"alertname": "Silenced", "campaign": "patch"}, "status": {"state": "suppressed"}},
        ]);
        assert_eq!(alertmanager_verdict(&alerts, &matchers), Ok(()));
        let firing = json!([
            {"labels": {"alertname": "FlotillaTargetErrorRateHigh", "campaign": "patch"}, "status": {"state": "active"}},
        ]);
        let why = alertmanager_verdict(&firing, &matchers).unwrap_err();
        assert!(
            why.contains("1 alert(s) firing") && !why.contains("FlotillaTargetErrorRateHigh"),
            "counted, not named: {why}"
        );
        assert!(alertmanager_verdict(&json!({}), &matchers).is_err());
    }
}
