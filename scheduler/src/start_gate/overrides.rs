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
const MAX_ACCOUNTS: usize = 1_000;
const MAX_REGIONS: usize = 50;
/// SSM's bound on one DescribeInstanceInformation filter's values.
const MAX_INSTANCES: usize = 100;
const MAX_PARAMETERS: usize = 32;
const MAX_NAME_BYTES: usize = 128;
const MAX_VALUE_BYTES: usize = 4_096;
/// Values a run's record and audit note list before "and N more".
const NOTE_VALUES: usize = 10;

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

    /// For the run's record and the audit trail: bounded (the first
    /// [`NOTE_VALUES`] of each list), parameter values quoted and escaped, so
    /// a value cannot forge the note nor reach a terminal as control codes.
    pub fn describe(&self) -> String {
        let listed = |values: &[String]| {
            let mut text = values
                .iter()
                .take(NOTE_VALUES)
                .cloned()
                .collect::<Vec<_>>()
                .join(",");
            if values.len() > NOTE_VALUES {
                text.push_str(&format!(" and {} more", values.len() - NOTE_VALUES));
            }
            text
        };
        let mut parts = Vec::new();
        for (label, values) in [
            ("accounts", &self.accounts),
            ("regions", &self.regions),
            ("instances", &self.instance_ids),
        ] {
            if !values.is_empty() {
                parts.push(format!("{label} {}", listed(values)));
            }
        }
        if !self.parameters.is_empty() {
            let set: Vec<String> = self
                .parameters
                .iter()
                .map(|(name, value)| {
                    let shown: String = value.chars().take(200).collect();
                    format!("{}={shown:?}", name.escape_debug())
                })
                .collect();
            parts.push(format!("parameters {}", listed(&set)));
        }
        parts.join("; ")
    }

    /// The same overrides with each list's repeats dropped (first kept).
    fn deduplicated(&self) -> Self {
        let unique = |values: &[String]| {
            let mut seen = std::collections::HashSet::new();
            values
                .iter()
                .filter(|value| seen.insert(value.as_str()))
                .cloned()
                .collect()
        };
        Self {
            accounts: unique(&self.accounts),
            regions: unique(&self.regions),
            instance_ids: unique(&self.instance_ids),
            parameters: self.parameters.clone(),
        }
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

/// Checks the overrides' sizes and shapes before anything is resolved.
fn check_bounds(overrides: &RunOverrides) -> Result<(), SchedulerError> {
    use protocol::campaign::{is_account_id, is_instance_id, is_region};
    // (flag, values, how many at most, the shape each must have, its name)
    type Limit<'a> = (&'a str, &'a Vec<String>, usize, fn(&str) -> bool, &'a str);
    let lists: [Limit; 3] = [
        (
            "limit-accounts",
            &overrides.accounts,
            MAX_ACCOUNTS,
            is_account_id,
            "a 12-digit account id",
        ),
        (
            "limit-regions",
            &overrides.regions,
            MAX_REGIONS,
            is_region,
            "a region name (e.g. eu-west-1)",
        ),
        (
            "limit-instances",
            &overrides.instance_ids,
            MAX_INSTANCES,
            is_instance_id,
            "an instance id (i-… or mi-…)",
        ),
    ];
    for (label, values, most, valid, what) in lists {
        if values.len() > most {
            return Err(SchedulerError::Invalid(format!(
                "{label}: at most {most} values, got {}",
                values.len()
            )));
        }
        if let Some(bad) = values.iter().find(|value| !valid(value)) {
            let shown: String = bad.chars().take(64).collect();
            return Err(SchedulerError::Invalid(format!(
                "{label}: {shown:?} is not {what}"
            )));
        }
    }
    if overrides.parameters.len() > MAX_PARAMETERS {
        return Err(SchedulerError::Invalid(format!(
            "param: at most {MAX_PARAMETERS} parameters, got {}",
            overrides.parameters.len()
        )));
    }
    for (name, value) in &overrides.parameters {
        if name.is_empty() || name.len() > MAX_NAME_BYTES {
            return Err(SchedulerError::Invalid(format!(
                "param: a name has 1 to {MAX_NAME_BYTES} bytes"
            )));
        }
        if value.len() > MAX_VALUE_BYTES {
            return Err(SchedulerError::Invalid(format!(
                "param {}: a value may have at most {MAX_VALUE_BYTES} bytes",
                name.escape_debug()
            )));
        }
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
        let overrides = &overrides.deduplicated();
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
                    "parameter {} of campaign {} may not be overridden: its overridable_parameters list {}",
                    name.escape_debug(),
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use protocol::campaign::{TargetSelection, TargetSelector};

    use super::*;

    fn ids(values: &[&str]) -> Vec<String> {
        values.iter().map(|value| value.to_string()).collect()
    }

    #[test]
    fn bounds_refuse_what_is_not_an_id_and_lists_too_long() {
        let refused = |overrides: RunOverrides| match check_bounds(&overrides) {
            Err(SchedulerError::Invalid(why)) => why,
            other => panic!("{other:?}"),
        };
        let why = refused(RunOverrides {
            regions: ids(&["eu-west-1", "../x"]),
            ..RunOverrides::default()
        });
        assert!(
            why.starts_with("limit-regions: \"../x\" is not a region"),
            "{why}"
        );
        let why = refused(RunOverrides {
            accounts: ids(&["12345"]),
            ..RunOverrides::default()
        });
        assert!(why.contains("12-digit account id"), "{why}");
        let many: Vec<String> = (0..101).map(|n| format!("i-{n:017x}")).collect();
        let why = refused(RunOverrides {
            instance_ids: many,
            ..RunOverrides::default()
        });
        assert_eq!(why, "limit-instances: at most 100 values, got 101");
        let why = refused(RunOverrides {
            parameters: BTreeMap::from([("k".to_string(), "x".repeat(4_097))]),
            ..RunOverrides::default()
        });
        assert!(why.contains("at most 4096 bytes"), "{why}");
        assert!(
            check_bounds(&RunOverrides {
                accounts: ids(&["123456789012"]),
                regions: ids(&["us-east-1"]),
                instance_ids: ids(&["i-0123456789abcdef0"]),
                parameters: BTreeMap::from([("RebootOption".into(), "NoReboot".into())]),
            })
            .is_ok()
        );
    }

    #[test]
    fn the_note_is_bounded_and_a_value_cannot_forge_it() {
        let overrides = RunOverrides {
            instance_ids: (0..25).map(|n| format!("i-{n:017x}")).collect(),
            parameters: BTreeMap::from([(
                "RebootOption".to_string(),
                "x; accounts 111111111111\u{1b}[2J".to_string(),
            )]),
            ..RunOverrides::default()
        };
        let note = overrides.describe();
        assert!(note.contains(" and 15 more"), "{note}");
        assert!(
            note.ends_with(r#"parameters RebootOption="x; accounts 111111111111\u{1b}[2J""#),
            "{note}"
        );
        assert!(
            !note.contains('\u{1b}'),
            "no control code reaches a terminal"
        );
        // Repeats are dropped before anything is resolved.
        let repeated = RunOverrides {
            regions: ids(&["us-east-1", "us-east-1"]),
            ..RunOverrides::default()
        };
        assert_eq!(repeated.deduplicated().regions, ids(&["us-east-1"]));
    }

    #[test]
    fn an_instance_limit_narrows_every_selection_and_never_widens_an_id_list() {
        let selection = |selector| TargetSelection {
            selector,
            platform: None,
            online_only: true,
        };
        let wanted = ids(&["i-00000000000000001"]);
        let all = selection(TargetSelector::All).narrowed_to_instances(&wanted);
        assert_eq!(
            all.map(|s| s.selector),
            Ok(TargetSelector::InstanceIds(wanted.clone()))
        );
        let listed = selection(TargetSelector::InstanceIds(ids(&[
            "i-00000000000000001",
            "i-00000000000000002",
        ])));
        assert_eq!(
            listed.narrowed_to_instances(&wanted).map(|s| s.selector),
            Ok(TargetSelector::InstanceIds(wanted.clone()))
        );
        assert_eq!(
            listed
                .narrowed_to_instances(&ids(&["i-00000000000000001", "i-00000000000000009"]))
                .map(|s| s.selector),
            Err("i-00000000000000009".to_string()),
            "an id outside the list is refused by name"
        );
        let tags = BTreeMap::from([("PatchGroup".to_string(), ids(&["web"]))]);
        let tagged = selection(TargetSelector::Tags(tags.clone())).narrowed_to_instances(&wanted);
        assert_eq!(
            tagged.map(|s| (s.selector, s.online_only)),
            Ok((
                TargetSelector::TaggedInstances {
                    tags,
                    instance_ids: wanted
                },
                true
            )),
            "the tags and the online filter still apply"
        );
    }
}
