//! The simulated fleet, derived on demand from the profile and its seed.
//!
//! Nothing is stored per instance: an instance id encodes its region, account and
//! index (plus a check derived from the seed), and every attribute is a hash of
//! those. That is why the `large` profile (a million instances) starts instantly
//! and costs no memory until commands run.

use crate::profile::{FleetProfile, OutcomeMix};

/// splitmix64: a small, well-mixed hash for deterministic per-instance attributes.
pub fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

pub fn hash(parts: &[u64]) -> u64 {
    parts.iter().fold(0x5EED, |acc, part| mix(acc ^ part))
}

/// A uniform number in [0, 1) from a hash.
fn unit(h: u64) -> f64 {
    (h >> 11) as f64 / (1u64 << 53) as f64
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InstanceKey {
    pub account: u32,
    pub region: u8,
    pub index: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    Failed,
    TimedOut,
    Undeliverable,
}

#[derive(Debug, Clone)]
pub struct Instance {
    pub key: InstanceKey,
    pub id: String,
    pub windows: bool,
    pub online: bool,
    pub tags: Vec<(String, String)>,
    pub missing_critical: u32,
    pub missing_security: u32,
    pub missing_other: u32,
}

#[derive(Debug)]
pub struct Fleet {
    pub profile: FleetProfile,
}

impl Fleet {
    pub fn new(profile: FleetProfile) -> Self {
        Self { profile }
    }

    pub fn account_id(&self, account: u32) -> String {
        account_id(account)
    }

    pub fn account_index(&self, account_id: &str) -> Option<u32> {
        let number: u64 = account_id.parse().ok()?;
        let index = u32::try_from(number.checked_sub(100_000_000_000)?).ok()?;
        (account_id.len() == 12 && index < self.profile.accounts).then_some(index)
    }

    pub fn region_index(&self, region: &str) -> Option<u8> {
        let index = self.profile.regions.iter().position(|r| r == region)?;
        u8::try_from(index).ok()
    }

    pub fn instance_count(&self, account: u32, region: u8) -> u32 {
        let range = self.profile.instances_per_location;
        let spread = u64::from(range.max - range.min) + 1;
        let extra = hash(&[self.profile.seed, 1, u64::from(account), u64::from(region)]) % spread;
        range.min + u32::try_from(extra).unwrap_or(0)
    }

    /// Every instance of one location, in index order.
    pub fn location_instances(
        &self,
        account: u32,
        region: u8,
    ) -> impl Iterator<Item = InstanceKey> {
        (0..self.instance_count(account, region)).map(move |index| InstanceKey {
            account,
            region,
            index,
        })
    }

    /// One attribute of one instance, named by `salt`, as a hash of the seed.
    fn attribute_hash(&self, key: InstanceKey, salt: u64) -> u64 {
        hash(&[
            self.profile.seed,
            salt,
            u64::from(key.account),
            u64::from(key.region),
            u64::from(key.index),
        ])
    }

    fn check_bits(&self, key: InstanceKey) -> u64 {
        self.attribute_hash(key, 2) & 0xFF_FFFF
    }

    /// `i-` and 17 hex digits: region (4 bits), account (20), index (20), check (24).
    pub fn instance_id(&self, key: InstanceKey) -> String {
        let bits: u128 = (u128::from(key.region) << 64)
            | (u128::from(key.account) << 44)
            | (u128::from(key.index) << 24)
            | u128::from(self.check_bits(key));
        format!("i-{bits:017x}")
    }

    /// The instance an id names, if it exists in this fleet.
    pub fn parse_instance_id(&self, id: &str) -> Option<InstanceKey> {
        let hex = id.strip_prefix("i-")?;
        if hex.len() != 17
            || !hex
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        {
            return None;
        }
        let bits = u128::from_str_radix(hex, 16).ok()?;
        let key = InstanceKey {
            region: u8::try_from(bits >> 64).ok()?,
            account: u32::try_from((bits >> 44) & 0xF_FFFF).ok()?,
            index: u32::try_from((bits >> 24) & 0xF_FFFF).ok()?,
        };
        let valid = u64::try_from(bits & 0xFF_FFFF).ok()? == self.check_bits(key)
            && key.account < self.profile.accounts
            && usize::from(key.region) < self.profile.regions.len()
            && key.index < self.instance_count(key.account, key.region);
        valid.then_some(key)
    }

    /// Whether the instance's agent is Online (the rest are ConnectionLost).
    pub fn is_online(&self, key: InstanceKey) -> bool {
        unit(self.attribute_hash(key, 6)) >= self.profile.connection_lost_share
    }

    pub fn instance(&self, key: InstanceKey) -> Instance {
        let profile = &self.profile;
        let h = |salt: u64| self.attribute_hash(key, salt);
        let tags = profile
            .tags
            .iter()
            .enumerate()
            .filter(|(_, (_, values))| !values.is_empty())
            .map(|(n, (tag, values))| {
                let pick = usize::try_from(h(100 + n as u64) % values.len() as u64).unwrap_or(0);
                (tag.clone(), values[pick].clone())
            })
            .collect();
        let patches = profile.missing_patches;
        let non_compliant = unit(h(4)) < patches.share_non_compliant;
        let count = |salt: u64, max: u32| {
            if non_compliant && max > 0 {
                u32::try_from(h(salt) % (u64::from(max) + 1)).unwrap_or(0)
            } else {
                0
            }
        };
        Instance {
            key,
            id: self.instance_id(key),
            windows: unit(h(5)) < profile.windows_share,
            online: self.is_online(key),
            tags,
            missing_critical: count(7, patches.max_critical),
            missing_security: count(8, patches.max_security),
            missing_other: count(9, patches.max_other),
        }
    }

    /// The outcome and simulated duration of running `document` on an instance for
    /// the `nth` time (a retry may turn out differently).
    pub fn invocation_plan(&self, key: InstanceKey, document: &str, nth: u32) -> (Outcome, f64) {
        let profile = &self.profile;
        let doc_hash = document
            .bytes()
            .fold(0u64, |acc, b| mix(acc ^ u64::from(b)));
        let h = hash(&[
            profile.seed,
            10,
            u64::from(key.account),
            u64::from(key.region),
            u64::from(key.index),
            doc_hash,
            u64::from(nth),
        ]);
        let mix_weights: &OutcomeMix = profile
            .document_outcomes
            .get(document)
            .unwrap_or(&profile.outcomes);
        let total = u64::from(
            mix_weights.success
                + mix_weights.failed
                + mix_weights.timed_out
                + mix_weights.undeliverable,
        )
        .max(1);
        let mut roll = h % total;
        let mut outcome = Outcome::Success;
        for (weight, candidate) in [
            (mix_weights.success, Outcome::Success),
            (mix_weights.failed, Outcome::Failed),
            (mix_weights.timed_out, Outcome::TimedOut),
            (mix_weights.undeliverable, Outcome::Undeliverable),
        ] {
            if roll < u64::from(weight) {
                outcome = candidate;
                break;
            }
            roll -= u64::from(weight);
        }
        let range = profile.command_seconds;
        let seconds = range.min + (range.max - range.min) * unit(mix(h));
        (outcome, seconds)
    }

    pub fn has_role(&self, account: u32, role_name: &str) -> bool {
        role_name == self.profile.role_name
            && !self.profile.accounts_without_role.contains(&account)
    }

    /// OU ids: top-level `ou-root-{n:08x}`, children `ou-root-{n:04x}{c:04x}`… kept to
    /// Organizations' pattern `ou-[0-9a-z]{4,32}-[a-z0-9]{8,32}`.
    pub fn root_id(&self) -> String {
        "r-sim0".to_string()
    }

    pub fn top_ou_id(&self, ou: u32) -> String {
        format!("ou-sim0-{ou:08x}")
    }

    pub fn child_ou_id(&self, ou: u32, child: u32) -> String {
        format!("ou-sim0-{ou:08x}{child:04x}")
    }

    /// Every OU in deal order: top-level OUs, each followed by its children.
    fn all_ous(&self) -> Vec<String> {
        let mut ous = Vec::new();
        for ou in 0..self.profile.organizational_units {
            ous.push(self.top_ou_id(ou));
            for child in 0..self.profile.child_ous_per_ou {
                ous.push(self.child_ou_id(ou, child));
            }
        }
        ous
    }

    /// Children of a parent: `(ous, account indexes)`; None when the parent is unknown.
    pub fn children(&self, parent: &str) -> Option<(Vec<String>, Vec<u32>)> {
        let ous = self.all_ous();
        let accounts_of = |slot: usize| -> Vec<u32> {
            // Account 0 (management) sits at the root; members are dealt over OUs.
            (1..self.profile.accounts)
                .filter(|account| (*account as usize - 1) % ous.len() == slot)
                .collect()
        };
        if parent == self.root_id() {
            let top = (0..self.profile.organizational_units)
                .map(|ou| self.top_ou_id(ou))
                .collect();
            return Some((top, vec![0]));
        }
        let slot = ous.iter().position(|ou| ou == parent)?;
        let children =
            match (0..self.profile.organizational_units).find(|ou| self.top_ou_id(*ou) == parent) {
                Some(ou) => (0..self.profile.child_ous_per_ou)
                    .map(|child| self.child_ou_id(ou, child))
                    .collect(),
                None => Vec::new(),
            };
        Some((children, accounts_of(slot)))
    }
}

/// The 12-digit id of the fleet's account `index` (account 0 is the management
/// account): `100000000000` upwards.
pub fn account_id(index: u32) -> String {
    format!("{:012}", 100_000_000_000u64 + u64::from(index))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_ids_round_trip_and_reject_forgeries() {
        let fleet = Fleet::new(FleetProfile::tiny());
        let key = InstanceKey {
            account: 2,
            region: 1,
            index: 3,
        };
        let id = fleet.instance_id(key);
        assert_eq!(id.len(), 19);
        assert_eq!(fleet.parse_instance_id(&id), Some(key));
        let mut forged = id.clone();
        forged.replace_range(18..19, if id.ends_with('0') { "1" } else { "0" });
        assert_eq!(fleet.parse_instance_id(&forged), None);
        assert_eq!(fleet.parse_instance_id("i-0123456789abcdef0"), None);
    }

    #[test]
    fn the_same_seed_gives_the_same_fleet() {
        let a = Fleet::new(FleetProfile::tiny());
        let b = Fleet::new(FleetProfile::tiny());
        let key = InstanceKey {
            account: 1,
            region: 0,
            index: 4,
        };
        assert_eq!(a.instance(key).tags, b.instance(key).tags);
        assert_eq!(a.instance_count(1, 0), b.instance_count(1, 0));
        assert_eq!(
            a.invocation_plan(key, "AWS-RunPatchBaseline", 0),
            b.invocation_plan(key, "AWS-RunPatchBaseline", 0)
        );
    }

    #[test]
    fn every_member_account_sits_in_exactly_one_ou() {
        let fleet = Fleet::new(FleetProfile::demo());
        let mut seen = vec![0u32; fleet.profile.accounts as usize];
        for ou in fleet.all_ous() {
            for account in fleet.children(&ou).unwrap().1 {
                seen[account as usize] += 1;
            }
        }
        assert_eq!(seen[0], 0, "the management account is at the root");
        assert!(seen[1..].iter().all(|n| *n == 1), "{seen:?}");
    }
}
