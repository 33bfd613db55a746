//! Instances: DescribeInstanceInformation and DescribeInstancePatchStates.

use serde::Serialize;
use serde_json::{Value, json};

use super::{Scope, json_object, to_json};
use crate::fleet::{Instance, InstanceKey};
use crate::state::SimState;
use crate::wire::{AwsError, max_results, page_start, page_token, required_str, string_list};

/// The instance an id names, if it is in the caller's account and region.
pub(super) fn own_instance(state: &SimState, scope: &Scope, id: &str) -> Option<InstanceKey> {
    let key = state.fleet.parse_instance_id(id)?;
    (key.account == scope.account && Some(key.region) == scope.region).then_some(key)
}

#[derive(Default)]
pub(super) struct InstanceFilter {
    ids: Option<Vec<String>>,
    ping: Option<Vec<String>>,
    platforms: Option<Vec<String>>,
    tags: Vec<(String, Vec<String>)>,
    tag_keys: Option<Vec<String>>,
}

impl InstanceFilter {
    /// DescribeInstanceInformation's `Filters` and `InstanceInformationFilterList`.
    pub(super) fn parse(body: &Value) -> Result<Self, AwsError> {
        let mut filter = Self::default();
        for (list, key_field, values_field) in [
            ("Filters", "Key", "Values"),
            ("InstanceInformationFilterList", "key", "valueSet"),
        ] {
            if let Some(Value::Array(items)) = body.get(list) {
                filter.add_all(items, key_field, values_field)?;
            }
        }
        Ok(filter)
    }

    /// Adds `{key_field: …, values_field: […]}` items; SendCommand's `Targets`
    /// have the same shape as `Filters`.
    pub(super) fn add_all(
        &mut self,
        items: &[Value],
        key_field: &str,
        values_field: &str,
    ) -> Result<(), AwsError> {
        for item in items {
            let key = required_str(item, key_field)?;
            let values = string_list(item, values_field)?.unwrap_or_default();
            if values.is_empty() {
                return Err(AwsError::bad_request(
                    "InvalidFilterValue",
                    format!("The filter {key} needs values."),
                ));
            }
            match key {
                "InstanceIds" => self.ids = Some(values),
                "PingStatus" => self.ping = Some(values),
                "PlatformTypes" => self.platforms = Some(values),
                "tag-key" => self.tag_keys = Some(values),
                key if key.starts_with("tag:") => self
                    .tags
                    .push((key.trim_start_matches("tag:").to_string(), values)),
                "AgentVersion" | "ResourceType" | "AssociationStatus" | "IamRole"
                | "ActivationIds" => {}
                other => {
                    return Err(AwsError::bad_request(
                        "InvalidFilterKey",
                        format!("The filter key {other} is not valid."),
                    ));
                }
            }
        }
        Ok(())
    }

    pub(super) fn matches(&self, instance: &Instance) -> bool {
        let ping = if instance.online {
            "Online"
        } else {
            "ConnectionLost"
        };
        let platform = if instance.windows { "Windows" } else { "Linux" };
        self.ids
            .as_ref()
            .is_none_or(|ids| ids.contains(&instance.id))
            && self
                .ping
                .as_ref()
                .is_none_or(|values| values.iter().any(|v| v == ping))
            && self
                .platforms
                .as_ref()
                .is_none_or(|values| values.iter().any(|v| v == platform))
            && self.tag_keys.as_ref().is_none_or(|keys| {
                keys.iter()
                    .all(|k| instance.tags.iter().any(|(t, _)| t == k))
            })
            && self.tags.iter().all(|(key, values)| {
                instance
                    .tags
                    .iter()
                    .any(|(tag, value)| tag == key && values.contains(value))
            })
    }
}

/// One entry of DescribeInstanceInformation's answer, serialized as is
/// (a `Value` tree per instance was most of the simulator's CPU).
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct InstanceInformation<'a> {
    instance_id: &'a str,
    ping_status: &'static str,
    last_ping_date_time: f64,
    agent_version: &'static str,
    is_latest_version: bool,
    platform_type: &'static str,
    platform_name: &'static str,
    platform_version: &'static str,
    resource_type: &'static str,
    #[serde(rename = "IPAddress")]
    ip_address: String,
    computer_name: String,
    association_status: &'static str,
    source_id: &'a str,
    source_type: &'static str,
}

pub(super) fn instance_information<'a>(
    state: &SimState,
    instance: &'a Instance,
) -> InstanceInformation<'a> {
    let last_ping =
        state.clock.epoch(state.clock.now()) - if instance.online { 30.0 } else { 86_400.0 };
    let octets = [
        (instance.key.account >> 8) & 0xFF,
        instance.key.account & 0xFF,
        instance.key.index & 0xFF,
    ];
    InstanceInformation {
        instance_id: &instance.id,
        ping_status: if instance.online {
            "Online"
        } else {
            "ConnectionLost"
        },
        last_ping_date_time: last_ping,
        agent_version: "3.3.1142.0",
        is_latest_version: true,
        platform_type: if instance.windows { "Windows" } else { "Linux" },
        platform_name: if instance.windows {
            "Microsoft Windows Server 2022 Datacenter"
        } else {
            "Amazon Linux"
        },
        platform_version: if instance.windows {
            "10.0.20348"
        } else {
            "2023"
        },
        resource_type: "EC2Instance",
        ip_address: format!("10.{}.{}.{}", octets[0], octets[1], octets[2]),
        computer_name: format!("ip-10-{}-{}-{}", octets[0], octets[1], octets[2]),
        association_status: "Success",
        source_id: &instance.id,
        source_type: "AWS::EC2::Instance",
    }
}

pub(super) fn describe_instance_information(
    state: &SimState,
    scope: &Scope,
    body: &Value,
) -> Result<String, AwsError> {
    let limit = max_results(body, 5..=50, 50)?;
    let filter = InstanceFilter::parse(body)?;
    let start = page_start(body)?;
    // The location's instances in a stable order, or just the named ones.
    let keys: Vec<InstanceKey> = match (&filter.ids, scope.region) {
        (_, None) => Vec::new(),
        (Some(ids), Some(_)) => ids
            .iter()
            .filter_map(|id| own_instance(state, scope, id))
            .collect(),
        (None, Some(region)) => state
            .fleet
            .location_instances(scope.account, region)
            .collect(),
    };
    let mut matching = Vec::with_capacity(limit);
    let mut position = start;
    let instance_now = state.instances();
    while position < keys.len() && matching.len() < limit {
        let instance = instance_now(keys[position]);
        if filter.matches(&instance) {
            matching.push(instance);
        }
        position += 1;
    }
    let list: Vec<InstanceInformation<'_>> = matching
        .iter()
        .map(|instance| instance_information(state, instance))
        .collect();
    let next_token = (position < keys.len()).then(|| page_token(position));
    to_json(&json_object("InstanceInformationList", list, next_token))
}

/// One entry of DescribeInstancePatchStates' answer.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct InstancePatchState<'a> {
    instance_id: &'a str,
    patch_group: &'a str,
    baseline_id: &'static str,
    installed_count: u32,
    installed_other_count: u32,
    installed_pending_reboot_count: u32,
    installed_rejected_count: u32,
    missing_count: u32,
    failed_count: u32,
    unreported_not_applicable_count: u32,
    not_applicable_count: u32,
    operation_start_time: f64,
    operation_end_time: f64,
    operation: &'static str,
    reboot_option: &'static str,
    critical_non_compliant_count: u32,
    security_non_compliant_count: u32,
    other_non_compliant_count: u32,
}

pub(super) fn describe_instance_patch_states(
    state: &SimState,
    scope: &Scope,
    body: &Value,
) -> Result<String, AwsError> {
    let ids = string_list(body, "InstanceIds")?.unwrap_or_default();
    if ids.is_empty() || ids.len() > 50 {
        return Err(AwsError::validation(format!(
            "InstanceIds must list 1 to 50 ids, got {}",
            ids.len()
        )));
    }
    let now = state.clock.now();
    let inner = state.lock();
    let instances: Vec<Instance> = ids
        .iter()
        .filter_map(|id| own_instance(state, scope, id))
        .map(|key| state.fleet.instance(key))
        .collect();
    let states: Vec<InstancePatchState<'_>> = instances
        .iter()
        .map(|instance| {
            let key = instance.key;
            let (mut critical, mut security, mut other) = (
                instance.missing_critical,
                instance.missing_security,
                instance.missing_other,
            );
            let (mut installed, mut pending_reboot, mut failed) = (40u32, 0u32, 0u32);
            let mut operation = "Scan";
            let mut reboot_option = "RebootIfNeeded";
            let (mut started, mut ended) = (0.0, 0.0);
            let records = inner
                .patch_records
                .get(&key)
                .map(Vec::as_slice)
                .unwrap_or_default();
            for record in records.iter().filter(|r| r.at <= now) {
                (started, ended) = (record.started, record.at);
                operation = if record.install { "Install" } else { "Scan" };
                reboot_option = if record.no_reboot {
                    "NoReboot"
                } else {
                    "RebootIfNeeded"
                };
                if !record.install {
                    continue;
                }
                if record.succeeded {
                    installed += critical + security + other;
                    if record.no_reboot {
                        pending_reboot += critical + security + other;
                    }
                    (critical, security, other) = (0, 0, 0);
                } else {
                    failed = 1;
                }
            }
            InstancePatchState {
                instance_id: &instance.id,
                patch_group: instance
                    .tags
                    .iter()
                    .find(|(k, _)| k == "PatchGroup")
                    .map(|(_, v)| v.as_str())
                    .unwrap_or_default(),
                baseline_id: "pb-0123456789abcdef0",
                installed_count: installed,
                installed_other_count: 2,
                installed_pending_reboot_count: pending_reboot,
                installed_rejected_count: 0,
                missing_count: critical + security + other,
                failed_count: failed,
                unreported_not_applicable_count: 0,
                not_applicable_count: 100,
                operation_start_time: state.clock.epoch(started),
                operation_end_time: state.clock.epoch(ended),
                operation,
                reboot_option,
                critical_non_compliant_count: critical,
                security_non_compliant_count: security,
                other_non_compliant_count: other,
            }
        })
        .collect();
    to_json(&json_object("InstancePatchStates", states, None))
}

/// RemoveTagsFromResource for a managed instance: its tags no longer match
/// filters or tag targets from now on.
pub(super) fn remove_tags_from_resource(
    state: &SimState,
    scope: &Scope,
    body: &Value,
) -> Result<Value, AwsError> {
    let resource_type = required_str(body, "ResourceType")?;
    if resource_type != "ManagedInstance" {
        return Err(AwsError::validation(format!(
            "ResourceType {resource_type} is not supported by the simulator (ManagedInstance is)"
        )));
    }
    let id = required_str(body, "ResourceId")?;
    let keys = string_list(body, "TagKeys")?.unwrap_or_default();
    let Some(key) = own_instance(state, scope, id) else {
        return Err(AwsError::bad_request(
            "InvalidResourceId",
            format!("The resource ID {id} is not valid."),
        ));
    };
    state
        .lock()
        .removed_tags
        .entry(key)
        .or_default()
        .extend(keys);
    Ok(json!({}))
}
