//! Fleet profiles: the shape of a simulated fleet, from YAML or a preset.
//!
//! Everything random about a fleet is derived from `seed`, so the same profile
//! always yields the same accounts, instances, tags, outcomes and durations.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FleetProfile {
    pub seed: u64,
    /// Member accounts; account 0 is the management account the caller's own
    /// credentials belong to.
    pub accounts: u32,
    /// At most 16.
    pub regions: Vec<String>,
    /// Top-level OUs under the root; each has `child_ous_per_ou` children. Accounts
    /// are dealt round-robin over all OUs.
    pub organizational_units: u32,
    pub child_ous_per_ou: u32,
    pub instances_per_location: CountRange,
    /// Share of instances that run Windows (the rest Linux).
    pub windows_share: f64,
    /// Share of instances whose agent is ConnectionLost.
    pub connection_lost_share: f64,
    /// Tag key → the values instances get, spread evenly.
    pub tags: BTreeMap<String, Vec<String>>,
    /// Outcome mix of every document not listed in `document_outcomes`.
    pub outcomes: OutcomeMix,
    pub document_outcomes: BTreeMap<String, OutcomeMix>,
    /// Simulated seconds from delivery to a terminal status.
    pub command_seconds: SecondsRange,
    /// Simulated seconds per real second: 60 makes a 1-minute command take 1 s.
    pub time_scale: f64,
    pub missing_patches: MissingPatches,
    /// The role every account has (unless listed in `accounts_without_role`).
    pub role_name: String,
    /// When set, AssumeRole must present exactly this ExternalId.
    pub external_id: Option<String>,
    /// Account indexes (0-based) where the role does not exist.
    pub accounts_without_role: Vec<u32>,
    pub api_limits: ApiLimits,
    /// Invocations not yet terminal, per account; SendCommand beyond it is throttled.
    pub max_pending_invocations_per_account: u32,
    /// The access key id of the caller's own (management account) credentials.
    pub caller_access_key_id: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CountRange {
    pub min: u32,
    pub max: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecondsRange {
    pub min: f64,
    pub max: f64,
}

/// Relative weights of the terminal outcome of one invocation.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutcomeMix {
    pub success: u32,
    pub failed: u32,
    pub timed_out: u32,
    pub undeliverable: u32,
}

impl Default for OutcomeMix {
    fn default() -> Self {
        Self {
            success: 97,
            failed: 2,
            timed_out: 1,
            undeliverable: 0,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MissingPatches {
    /// Share of instances missing any patch at all.
    pub share_non_compliant: f64,
    pub max_critical: u32,
    pub max_security: u32,
    pub max_other: u32,
}

impl Default for MissingPatches {
    fn default() -> Self {
        Self {
            share_non_compliant: 0.3,
            max_critical: 3,
            max_security: 5,
            max_other: 10,
        }
    }
}

/// Token buckets per account-region-operation: `rate` per second, `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiLimits {
    pub send_command: Bucket,
    pub list_command_invocations: Bucket,
    pub describe_instance_information: Bucket,
    pub other_ssm: Bucket,
    /// Per account.
    pub assume_role: Bucket,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bucket {
    pub rate: f64,
    pub burst: f64,
}

impl Default for ApiLimits {
    /// Plausible for one AWS account-region: enough for a careful client, and a
    /// hammering one gets ThrottlingException.
    fn default() -> Self {
        Self {
            send_command: Bucket {
                rate: 20.0,
                burst: 40.0,
            },
            list_command_invocations: Bucket {
                rate: 40.0,
                burst: 80.0,
            },
            describe_instance_information: Bucket {
                rate: 20.0,
                burst: 40.0,
            },
            other_ssm: Bucket {
                rate: 40.0,
                burst: 80.0,
            },
            assume_role: Bucket {
                rate: 50.0,
                burst: 100.0,
            },
        }
    }
}

impl Default for FleetProfile {
    fn default() -> Self {
        Self::tiny()
    }
}

impl FleetProfile {
    /// For tests: 3 accounts × 2 regions, a handful of instances each, fast commands.
    pub fn tiny() -> Self {
        Self {
            seed: 7,
            accounts: 3,
            regions: vec!["us-east-1".into(), "eu-west-1".into()],
            organizational_units: 2,
            child_ous_per_ou: 1,
            instances_per_location: CountRange { min: 8, max: 12 },
            windows_share: 0.25,
            connection_lost_share: 0.1,
            tags: BTreeMap::from([
                ("PatchGroup".into(), vec!["web".into(), "db".into()]),
                ("Environment".into(), vec!["prod".into(), "staging".into()]),
            ]),
            outcomes: OutcomeMix::default(),
            document_outcomes: BTreeMap::new(),
            command_seconds: SecondsRange {
                min: 5.0,
                max: 30.0,
            },
            time_scale: 60.0,
            missing_patches: MissingPatches::default(),
            role_name: "FlotillaExecutionRole".into(),
            external_id: None,
            accounts_without_role: Vec::new(),
            api_limits: ApiLimits::default(),
            max_pending_invocations_per_account: 10_000,
            caller_access_key_id: "AKIAFLOTILLASIMULATOR".into(),
        }
    }

    /// About 10,000 instances over 20 accounts × 3 regions.
    pub fn demo() -> Self {
        Self {
            seed: 2026,
            accounts: 20,
            regions: vec![
                "us-east-1".into(),
                "eu-west-1".into(),
                "ap-southeast-2".into(),
            ],
            organizational_units: 4,
            child_ous_per_ou: 2,
            instances_per_location: CountRange { min: 100, max: 234 },
            command_seconds: SecondsRange {
                min: 20.0,
                max: 120.0,
            },
            time_scale: 120.0,
            ..Self::tiny()
        }
    }

    /// 1,000,000 instances over 10,000 accounts × 2 regions, near-instant commands.
    pub fn large() -> Self {
        Self {
            seed: 1_000_000,
            accounts: 10_000,
            regions: vec!["us-east-1".into(), "eu-west-1".into()],
            organizational_units: 50,
            child_ous_per_ou: 4,
            instances_per_location: CountRange { min: 50, max: 50 },
            command_seconds: SecondsRange { min: 0.0, max: 0.5 },
            time_scale: 1.0,
            max_pending_invocations_per_account: 100_000,
            ..Self::tiny()
        }
    }

    pub fn preset(name: &str) -> Option<Self> {
        match name {
            "tiny" => Some(Self::tiny()),
            "demo" => Some(Self::demo()),
            "large" => Some(Self::large()),
            _ => None,
        }
    }

    /// A preset name or a path to a YAML profile.
    pub fn load(name_or_path: &str) -> Result<Self, String> {
        if let Some(profile) = Self::preset(name_or_path) {
            return Ok(profile);
        }
        let text = std::fs::read_to_string(name_or_path).map_err(|error| {
            format!("{name_or_path:?} is neither a preset (tiny, demo, large) nor a readable file: {error}")
        })?;
        let profile: Self =
            serde_norway::from_str(&text).map_err(|error| format!("{name_or_path}: {error}"))?;
        profile.validate()?;
        Ok(profile)
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.accounts == 0 || self.accounts > (1 << 20) {
            return Err(format!(
                "accounts must be 1 to {}, got {}",
                1 << 20,
                self.accounts
            ));
        }
        if self.regions.is_empty() || self.regions.len() > 16 {
            return Err(format!(
                "regions must list 1 to 16 regions, got {}",
                self.regions.len()
            ));
        }
        let CountRange { min, max } = self.instances_per_location;
        if min > max || max >= (1 << 20) {
            return Err(format!(
                "instances_per_location must have min <= max < {}, got {min}..{max}",
                1 << 20
            ));
        }
        if !(self.time_scale > 0.0 && self.time_scale.is_finite()) {
            return Err(format!(
                "time_scale must be above 0, got {}",
                self.time_scale
            ));
        }
        let SecondsRange { min, max } = self.command_seconds;
        if !(0.0..=max).contains(&min) {
            return Err(format!(
                "command_seconds must have 0 <= min <= max, got {min}..{max}"
            ));
        }
        if self.organizational_units == 0 {
            return Err("organizational_units must be at least 1".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_are_valid_and_sized_as_documented() {
        for name in ["tiny", "demo", "large"] {
            FleetProfile::preset(name).unwrap().validate().unwrap();
        }
        let large = FleetProfile::large();
        let instances = u64::from(large.accounts)
            * large.regions.len() as u64
            * u64::from(large.instances_per_location.max);
        assert_eq!(instances, 1_000_000);
    }

    #[test]
    fn a_yaml_profile_overrides_what_it_names() {
        let dir = std::env::temp_dir().join(format!("sim-profile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("fleet.yaml");
        std::fs::write(
            &path,
            "seed: 9\naccounts: 5\nregions: [us-west-2]\nexternal_id: abc123\n",
        )
        .unwrap();
        let profile = FleetProfile::load(path.to_str().unwrap()).unwrap();
        assert_eq!((profile.seed, profile.accounts), (9, 5));
        assert_eq!(profile.external_id.as_deref(), Some("abc123"));
        assert_eq!(
            profile.role_name, "FlotillaExecutionRole",
            "unnamed fields keep the tiny defaults"
        );
        std::fs::write(&path, "accounts: 0\n").unwrap();
        assert!(
            FleetProfile::load(path.to_str().unwrap())
                .unwrap_err()
                .contains("accounts must be")
        );
        std::fs::write(&path, "acounts: 5\n").unwrap();
        assert!(
            FleetProfile::load(path.to_str().unwrap())
                .unwrap_err()
                .contains("unknown field `acounts`")
        );
        assert!(
            FleetProfile::load("huge")
                .unwrap_err()
                .contains("neither a preset")
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
