//! Instances: DescribeInstanceInformation and DescribeInstancePatchStates.

use serde_json::{Value, json};

use super::Scope;
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

pub(super) fn instance_information(state: &SimState, instance: &Instance) -> Value {
    let last_ping =
        state.clock.epoch(state.clock.now()) - if instance.online { 30.0 } else { 86_400.0 };
    let octets = [
        (instance.key.account >> 8) & 0xFF,
        instance.key.account & 0xFF,
        instance.key.index & 0xFF,
    ];
    json!({
        "InstanceId": instance.id,
        "PingStatus": if instance.online { "Online" } else { "ConnectionLost" },
        "LastPingDateTime": last_ping,
        "AgentVersion": "3.3.1142.0",
        "IsLatestVersion": true,
        "PlatformType": if instance.windows { "Windows" } else { "Linux" },
        "PlatformName": if instance.windows { "Microsoft Windows Server 2022 Datacenter" } else { "Amazon Linux" },
        "PlatformVersion": if instance.windows { "10.0.20348" } else { "2023" },
        "ResourceType": "EC2Instance",
        "IPAddress": format!("10.{}.{}.{}", octets[0], octets[1], octets[2]),
        "ComputerName": format!("ip-10-{}-{}-{}", octets[0], octets[1], octets[2]),
        "AssociationStatus": "Success",
        "SourceId": instance.id,
        "SourceType": "AWS::EC2::Instance",
    })
}

pub(super) fn describe_instance_information(
    state: &SimState,
    scope: &Scope,
    body: &Value,
) -> Result<Value, AwsError> {
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
    let mut list = Vec::with_capacity(limit);
    let mut position = start;
    let instance_now = state.instances();
    while position < keys.len() && list.len() < limit {
        let instance = instance_now(keys[position]);
        if filter.matches(&instance) {
            list.push(instance_information(state, &instance));
        }
        position += 1;
    }
    let mut response = json!({ "InstanceInformationList": list });
    if position < keys.len() {
        response["NextToken"] = json!(page_token(position));
    }
    Ok(response)
}

pub(super) fn describe_instance_patch_states(
    state: &SimState,
    scope: &Scope,
    body: &Value,
) -> Result<Value, AwsError> {
    let ids = string_list(body, "InstanceIds")?.unwrap_or_default();
    if ids.is_empty() || ids.len() > 50 {
        return Err(AwsError::validation(format!(
            "InstanceIds must list 1 to 50 ids, got {}",
            ids.len()
        )));
    }
    let now = state.clock.now();
    let inner = state.lock();
    let states: Vec<Value> = ids
        .iter()
        .filter_map(|id| own_instance(state, scope, id))
        .map(|key| {
            let instance = state.fleet.instance(key);
            let (mut critical, mut security, mut other) = (instance.missing_critical, instance.missing_security, instance.missing_other);
            let (mut installed, mut pending_reboot, mut failed) = (40u32, 0u32, 0u32);
            let mut operation = "Scan";
            let mut reboot_option = "RebootIfNeeded";
            let (mut started, mut ended) = (0.0, 0.0);
            let records = inner.patch_records.get(&key).map(Vec::as_slice).unwrap_or_default();
            for record in records.iter().filter(|r| r.at <= now) {
                (started, ended) = (record.started, record.at);
                operation = if record.install { "Install" } else { "Scan" };
                reboot_option = if record.no_reboot { "NoReboot" } else { "RebootIfNeeded" };
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
            let missing = critical + security + other;
            json!({
                "InstanceId": instance.id,
                "PatchGroup": instance.tags.iter().find(|(k, _)| k == "PatchGroup").map(|(_, v)| v.clone()).unwrap_or_default(),
                "BaselineId": "pb-0123456789abcdef0",
                "InstalledCount": installed,
                "InstalledOtherCount": 2,
                "InstalledPendingRebootCount": pending_reboot,
                "InstalledRejectedCount": 0,
                "MissingCount": missing,
                "FailedCount": failed,
                "UnreportedNotApplicableCount": 0,
                "NotApplicableCount": 100,
                "OperationStartTime": state.clock.epoch(started),
                "OperationEndTime": state.clock.epoch(ended),
                "Operation": operation,
                "RebootOption": reboot_option,
                "CriticalNonCompliantCount": critical,
                "SecurityNonCompliantCount": security,
                "OtherNonCompliantCount": other,
            })
        })
        .collect();
    Ok(json!({ "InstancePatchStates": states }))
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
