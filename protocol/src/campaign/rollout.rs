//! A rollout: a run's targets in cumulative waves, with a bake time after each
//! wave and health gates that must pass before the next one starts (Ansible's
//! `serial`, AppConfig's bake time, Argo Rollouts' analysis).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::patterns::LABEL_NAME;
use super::rules::validate_account_ids;
use super::values::parse_duration_in;
use crate::rate_control::{RateKind, RateValue};
use crate::spec::{GateFailure, GateSpec, RolloutSpec};
use crate::validation::{FieldPath, Validator};

const BAKE_RANGE: (Duration, Duration) = (Duration::ZERO, Duration::from_secs(7 * 86_400));
const MAX_WAVES: usize = 20;
const MAX_GATES: usize = 10;
const MAX_CANARY_ACCOUNTS: usize = 100;
const MAX_URL_CHARS: usize = 2048;
const MAX_QUERY_CHARS: usize = 4096;
const MAX_MATCHERS: usize = 20;
const MAX_MATCHER_VALUE_CHARS: usize = 1024;

/// A validated rollout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rollout {
    /// Cumulative counts or percentages of the run's targets (of the targets
    /// outside the canary accounts, when there are some).
    pub waves: Vec<RateValue>,
    pub canary_accounts: Vec<String>,
    pub bake: Duration,
    /// Failed targets a wave may have (of the wave's targets); more fail its gate.
    pub max_wave_errors: RateValue,
    pub gates: Vec<HealthGate>,
    pub approve: bool,
    pub on_gate_failure: GateFailure,
}

/// A check against the outside world that must pass before the next wave.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum HealthGate {
    /// An instant PromQL query that must return an empty vector.
    Prometheus { url: String, query: String },
    /// No active, unsilenced alert carrying every one of these labels.
    Alertmanager {
        url: String,
        matchers: BTreeMap<String, String>,
    },
}

impl HealthGate {
    /// `prometheus` or `alertmanager`, the metrics label.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Prometheus { .. } => "prometheus",
            Self::Alertmanager { .. } => "alertmanager",
        }
    }

    /// The base URL the gate asks.
    pub fn url(&self) -> &str {
        match self {
            Self::Prometheus { url, .. } | Self::Alertmanager { url, .. } => url,
        }
    }
}

impl Rollout {
    /// The cumulative number of targets admitted by the end of each wave, for
    /// a run of `total` targets of which `canary` are in the canary accounts:
    /// the canary targets first (when there are canary accounts), then each
    /// wave's value resolved against the rest with SendCommand's rounding
    /// (a percentage rounds down, never below 1), capped at the rest. Waves
    /// that would add nothing are dropped; the last always reaches `total`.
    pub fn wave_caps(&self, total: u64, canary: u64) -> Vec<u64> {
        let canary = canary.min(total);
        let rest = total - canary;
        let mut caps: Vec<u64> = Vec::new();
        if !self.canary_accounts.is_empty() && canary > 0 {
            caps.push(canary);
        }
        for wave in &self.waves {
            let cap = canary + wave.concurrency(rest).min(rest);
            if caps.last().is_none_or(|last| cap > *last) {
                caps.push(cap);
            }
        }
        if caps.last().is_none_or(|last| *last < total) {
            caps.push(total);
        }
        caps
    }
}

pub(super) fn validate_rollout(
    v: &mut Validator,
    spec: &RolloutSpec,
    run_max_errors: Option<RateValue>,
    path: &FieldPath,
) -> Option<Rollout> {
    if spec.waves.is_empty() && spec.canary_accounts.is_empty() {
        v.error(path, "must list waves, canary_accounts, or both");
    }
    if spec.waves.len() > MAX_WAVES {
        v.error(
            &path.at("waves"),
            format!("may list at most {MAX_WAVES} waves"),
        );
    }
    let mut waves = Vec::with_capacity(spec.waves.len());
    let (mut last_count, mut last_percent) = (0u64, 0u8);
    for (index, wave) in spec.waves.iter().enumerate() {
        let wave_path = path.at("waves").index(index);
        let Some(value) = v.check(
            &wave_path,
            RateValue::parse(&wave.text, RateKind::Concurrency),
        ) else {
            continue;
        };
        // Cumulative: each count (or percentage) above the one before it.
        let increasing = match value {
            RateValue::Count(count) => std::mem::replace(&mut last_count, count) < count,
            RateValue::Percent(percent) => std::mem::replace(&mut last_percent, percent) < percent,
        };
        if !increasing {
            v.error(
                &wave_path,
                format!(
                    "waves are cumulative: {value} must be more than the earlier wave of the same kind"
                ),
            );
        }
        waves.push(value);
    }
    if spec.canary_accounts.len() > MAX_CANARY_ACCOUNTS {
        v.error(
            &path.at("canary_accounts"),
            format!("may list at most {MAX_CANARY_ACCOUNTS} accounts"),
        );
    }
    let canary_accounts =
        validate_account_ids(v, &spec.canary_accounts, &path.at("canary_accounts"));
    let bake = match &spec.bake {
        None => Some(Duration::ZERO),
        Some(text) => v.check(&path.at("bake"), parse_duration_in(text, BAKE_RANGE)),
    };
    let max_wave_errors = match &spec.max_wave_errors {
        None => run_max_errors,
        Some(text) => v.check(
            &path.at("max_wave_errors"),
            RateValue::parse(&text.text, RateKind::Errors),
        ),
    };
    if spec.gates.len() > MAX_GATES {
        v.error(
            &path.at("gates"),
            format!("may list at most {MAX_GATES} gates"),
        );
    }
    let gates: Vec<HealthGate> = spec
        .gates
        .iter()
        .enumerate()
        .filter_map(|(index, gate)| validate_gate(v, gate, &path.at("gates").index(index)))
        .collect();
    Some(Rollout {
        waves,
        canary_accounts,
        bake: bake?,
        max_wave_errors: max_wave_errors?,
        gates,
        approve: spec.approve,
        on_gate_failure: spec.on_gate_failure.unwrap_or_default(),
    })
}

fn validate_gate(v: &mut Validator, gate: &GateSpec, path: &FieldPath) -> Option<HealthGate> {
    match (&gate.prometheus_url, &gate.alertmanager_url) {
        (Some(url), None) => {
            if !gate.matchers.is_empty() {
                v.error(
                    &path.at("matchers"),
                    "belongs to an alertmanager_url gate; a prometheus_url gate takes a query",
                );
            }
            let url = v.check(&path.at("prometheus_url"), check_url(url));
            let query = match gate.query.as_deref().map(str::trim) {
                None | Some("") => {
                    v.error(
                        &path.at("query"),
                        "is required with prometheus_url: a PromQL query that returns nothing while all is well",
                    );
                    None
                }
                Some(query) if query.chars().count() > MAX_QUERY_CHARS => {
                    v.error(
                        &path.at("query"),
                        format!("must be at most {MAX_QUERY_CHARS} characters"),
                    );
                    None
                }
                Some(query) => Some(query.to_string()),
            };
            Some(HealthGate::Prometheus {
                url: url?,
                query: query?,
            })
        }
        (None, Some(url)) => {
            if gate.query.is_some() {
                v.error(
                    &path.at("query"),
                    "belongs to a prometheus_url gate; an alertmanager_url gate takes matchers",
                );
            }
            let url = v.check(&path.at("alertmanager_url"), check_url(url));
            if gate.matchers.is_empty() {
                v.error(
                    &path.at("matchers"),
                    "must name at least one label, e.g. {campaign: patch-install}: a gate on every alert of the deployment would stop on unrelated ones",
                );
            }
            if gate.matchers.len() > MAX_MATCHERS {
                v.error(
                    &path.at("matchers"),
                    format!("may name at most {MAX_MATCHERS} labels"),
                );
            }
            for (name, value) in &gate.matchers {
                if !LABEL_NAME.is_match(name) {
                    v.error(
                        &path.at("matchers").key(name),
                        "label names are 1-128 letters, digits or '_', not starting with a digit",
                    );
                }
                if value.chars().count() > MAX_MATCHER_VALUE_CHARS || value.contains('"') {
                    v.error(
                        &path.at("matchers").key(name),
                        format!(
                            "must be at most {MAX_MATCHER_VALUE_CHARS} characters, without '\"'"
                        ),
                    );
                }
            }
            Some(HealthGate::Alertmanager {
                url: url?,
                matchers: gate.matchers.clone(),
            })
        }
        _ => {
            v.error(
                path,
                "must name exactly one of prometheus_url (with query) or alertmanager_url (with matchers)",
            );
            None
        }
    }
}

/// An `http://` or `https://` base URL without credentials in it (a spec is
/// stored and shown back by the API).
fn check_url(url: &str) -> Result<String, String> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or_else(|| format!("must start with http:// or https://, got {url:?}"))?;
    if url.len() > MAX_URL_CHARS {
        return Err(format!("must be at most {MAX_URL_CHARS} characters"));
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if authority.is_empty() {
        return Err(format!("names no host, got {url:?}"));
    }
    if authority.contains('@') {
        return Err(
            "must not carry credentials (user:password@): specs are stored and shown back".into(),
        );
    }
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "must not contain spaces or control characters, got {url:?}"
        ));
    }
    Ok(url.trim_end_matches('/').to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rollout(waves: &[RateValue], canary: bool) -> Rollout {
        Rollout {
            waves: waves.to_vec(),
            canary_accounts: if canary {
                vec!["111111111111".into()]
            } else {
                vec![]
            },
            bake: Duration::ZERO,
            max_wave_errors: RateValue::Count(0),
            gates: vec![],
            approve: false,
            on_gate_failure: GateFailure::Halt,
        }
    }

    #[test]
    fn waves_are_cumulative_with_ssm_rounding_and_end_at_the_total() {
        use RateValue::{Count, Percent};
        let plan = rollout(&[Count(1), Count(5), Percent(10), Percent(100)], false);
        assert_eq!(plan.wave_caps(200, 0), vec![1, 5, 20, 200]);
        // 10% of 30 is 3, under the 5 before it: that wave adds nothing.
        assert_eq!(plan.wave_caps(30, 0), vec![1, 5, 30]);
        // Fewer targets than the first waves: capped, never beyond the total.
        assert_eq!(plan.wave_caps(3, 0), vec![1, 3]);
        // A last wave under 100% is followed by the rest.
        assert_eq!(rollout(&[Percent(50)], false).wave_caps(9, 0), vec![4, 9]);
        // A percentage never rounds to nothing.
        assert_eq!(rollout(&[Percent(1)], false).wave_caps(10, 0), vec![1, 10]);
        assert_eq!(plan.wave_caps(0, 0), vec![0]);
    }

    #[test]
    fn canary_accounts_come_first_and_the_waves_count_the_rest() {
        use RateValue::{Count, Percent};
        let plan = rollout(&[Count(2), Percent(50)], true);
        assert_eq!(plan.wave_caps(104, 4), vec![4, 6, 54, 104]);
        // Canary accounts without targets: the waves start at once.
        assert_eq!(plan.wave_caps(10, 0), vec![2, 5, 10]);
    }
}
