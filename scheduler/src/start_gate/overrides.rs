//! Step 2b of the start gate: what a principal asks to change for one run —
//! narrower accounts, regions or instances (Ansible's `--limit`), and new
//! values of the parameters the campaign declares overridable (AWX's launch
//! prompts). An override narrows, never widens: an account, region or
//! instance outside the campaign's selection is refused by name. A changed
//! parameter of a campaign under the two-person rule needs a new approved
//! version; a narrowed run of an approved version needs nothing more.

use std::collections::BTreeMap;

use protocol::Campaign;
use protocol::campaign::TargetSelection;
use protocol::job::Location;
use protocol::spec::{Scalar, StringOrList};

use super::Starter;
use crate::{Scheduler, SchedulerError};

/// Bounds on one request's overrides (checked before anything is resolved).
const MAX_LIMITED: usize = 1_000;
const MAX_PARAMETERS: usize = 32;
const MAX_VALUE_BYTES: usize = 4_096;

/// What one run is started with besides the stored campaign.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunOverrides {
    /// Only these of the campaign's accounts.
    pub accounts: Vec<String>,
    /// Only these of the campaign's regions.
    pub regions: Vec<String>,
    /// Only these instances (each must still match the campaign's targets).
    pub instance_ids: Vec<String>,
    /// New values of parameters the campaign lists in `overridable_parameters`.
    pub parameters: BTreeMap<String, String>,
}

impl RunOverrides {
    pub fn is_empty(&self) -> bool {
        self.accounts.is_empty()
            && self.regions.is_empty()
            && self.instance_ids.is_empty()
            && self.parameters.is_empty()
    }

    /// For the run's record and the audit trail.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        for (label, values) in [
            ("accounts", &self.accounts),
            ("regions", &self.regions),
            ("instances", &self.instance_ids),
        ] {
            if !values.is_empty() {
                parts.push(format!("{label} {}", values.join(",")));
            }
        }
        if !self.parameters.is_empty() {
            let set: Vec<String> = self
                .parameters
                .iter()
                .map(|(name, value)| format!("{name}={value}"))
                .collect();
            parts.push(format!("parameters {}", set.join(",")));
        }
        parts.join("; ")
    }
}

/// The run the overrides make: the campaign with its parameters and regions
/// replaced, and the locations and targets it is narrowed to.
pub(super) struct Overridden {
    pub campaign: Campaign,
    pub locations: Option<Vec<Location>>,
    pub targets: Option<TargetSelection>,
    /// "overridden by NAME: …", for the run's record and the audit trail.
    pub note: String,
}

fn refused(what: &str, value: &str, campaign: &Campaign, allowed: &[String]) -> SchedulerError {
    SchedulerError::Forbidden(format!(
        "{what} {value} is not one of campaign {}'s ({}): an override narrows a run, never widens it",
        campaign.name,
        if allowed.len() > 10 {
            format!(
                "{} and {} more",
                allowed[..10].join(", "),
                allowed.len() - 10
            )
        } else {
            allowed.join(", ")
        }
    ))
}

fn check_bounds(overrides: &RunOverrides) -> Result<(), SchedulerError> {
    for (label, values) in [
        ("limit-accounts", &overrides.accounts),
        ("limit-regions", &overrides.regions),
        ("limit-instances", &overrides.instance_ids),
    ] {
        if values.len() > MAX_LIMITED {
            return Err(SchedulerError::Invalid(format!(
                "{label}: at most {MAX_LIMITED} values, got {}",
                values.len()
            )));
        }
        if let Some(bad) = values.iter().find(|value| {
            value.is_empty()
                || value.len() > 128
                || !value
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        }) {
            return Err(SchedulerError::Invalid(format!(
                "{label}: {bad:?} is not an id (1-128 of letters, digits, '-', '_')"
            )));
        }
    }
    if overrides.parameters.len() > MAX_PARAMETERS {
        return Err(SchedulerError::Invalid(format!(
            "param: at most {MAX_PARAMETERS} parameters, got {}",
            overrides.parameters.len()
        )));
    }
    if let Some((name, _)) = overrides
        .parameters
        .iter()
        .find(|(_, value)| value.len() > MAX_VALUE_BYTES)
    {
        return Err(SchedulerError::Invalid(format!(
            "param {name}: a value may have at most {MAX_VALUE_BYTES} bytes"
        )));
    }
    Ok(())
}

impl Scheduler {
    /// Step 2b: the run `overrides` make of `campaign`, or why not.
    pub(super) async fn apply_overrides(
        &self,
        starter: &Starter,
        campaign: &Campaign,
        overrides: &RunOverrides,
    ) -> Result<Overridden, SchedulerError> {
        let Starter::Principal { principal, .. } = starter else {
            return Err(SchedulerError::Forbidden(
                "only a principal may start a run with overrides".into(),
            ));
        };
        check_bounds(overrides)?;
        let mut spec = campaign.spec.clone();
        for region in &overrides.regions {
            if !campaign.regions.contains(region) {
                return Err(refused("region", region, campaign, &campaign.regions));
            }
        }
        if !overrides.regions.is_empty() {
            spec.regions
                .retain(|region| overrides.regions.contains(region));
        }
        for (name, value) in &overrides.parameters {
            if !spec.overridable_parameters.contains(name) {
                return Err(SchedulerError::Invalid(format!(
                    "parameter {name} of campaign {} may not be overridden: its overridable_parameters list {}",
                    campaign.name,
                    if spec.overridable_parameters.is_empty() {
                        "none".to_string()
                    } else {
                        spec.overridable_parameters.join(", ")
                    }
                )));
            }
            for step in &mut spec.steps {
                if let Some(slot) = step.parameters.get_mut(name) {
                    *slot = StringOrList(vec![Scalar {
                        text: value.clone(),
                        was_number: false,
                    }]);
                }
            }
        }
        // Every rule of a campaign holds for the run too (e.g. Operation is
        // Scan or Install).
        let effective = Campaign::build_and_validate_within(spec, self.accepted_max_locations())
            .map_err(|errors| {
                SchedulerError::Invalid(format!("the overridden campaign is invalid: {errors}"))
            })?;
        if !overrides.parameters.is_empty()
            && let Some(why) = self.approval_binds(&effective)
        {
            return Err(SchedulerError::NeedsApproval(format!(
                "campaign {} {why}: new parameter values change what its approved version runs; store them as a new version (`flotilla campaign apply`) and have another approver approve it",
                campaign.name
            )));
        }
        let locations = if overrides.accounts.is_empty() {
            None
        } else {
            let covered: Vec<String> = self
                .resolve_accounts(&effective)
                .await?
                .into_iter()
                .filter(|account| !effective.accounts.exclude_accounts.contains(account))
                .collect();
            for account in &overrides.accounts {
                if !covered.contains(account) {
                    return Err(refused("account", account, campaign, &covered));
                }
            }
            Some(crate::runs::locations(&effective, &overrides.accounts))
        };
        let targets = if overrides.instance_ids.is_empty() {
            None
        } else {
            match effective
                .targets
                .narrowed_to_instances(&overrides.instance_ids)
            {
                Ok(targets) => Some(targets),
                Err(outside) => {
                    let listed = effective
                        .targets
                        .instance_ids()
                        .map(<[String]>::to_vec)
                        .unwrap_or_default();
                    return Err(refused("instance", &outside, campaign, &listed));
                }
            }
        };
        Ok(Overridden {
            note: format!("overridden by {}: {}", principal.name, overrides.describe()),
            campaign: effective,
            locations,
            targets,
        })
    }
}
