//! SSM over JSON 1.1: instances, commands, invocations and patch states.
//!
//! Every call is scoped to the caller's account (from its credentials) and the
//! region it signed for: another account's instances and commands do not exist.

use serde::Serialize;
use serde_json::{Value, json};

use crate::fleet::{Instance, InstanceKey};
use crate::state::{Api, Command, Invocation, PatchRecord, SimState};
use crate::wire::{
    AwsError, Signer, caller_account, max_results, page_start, page_token, required_str, str_field,
    string_list,
};

/// Documents every account has, besides those the profile names.
const KNOWN_DOCUMENTS: [&str; 6] = [
    "AWS-RunPatchBaseline",
    "AWS-RunShellScript",
    "AWS-RunPowerShellScript",
    "AWS-ConfigureAWSPackage",
    "AWS-UpdateSSMAgent",
    "AWS-ApplyPatchBaseline",
];

struct Scope {
    account: u32,
    /// None for a region the fleet has nothing in.
    region: Option<u8>,
}

pub fn handle(
    state: &SimState,
    signer: Option<&Signer>,
    operation: &str,
    body: &Value,
) -> Result<String, AwsError> {
    let account = caller_account(state, signer, "UnrecognizedClientException")?;
    let region = signer.and_then(|s| state.fleet.region_index(&s.region));
    let scope = Scope { account, region };
    let api = match operation {
        "SendCommand" => Api::SendCommand,
        "ListCommandInvocations" => Api::ListCommandInvocations,
        "DescribeInstanceInformation" => Api::DescribeInstanceInformation,
        _ => Api::OtherSsm,
    };
    {
        let mut inner = state.lock();
        if !inner.take_token(
            (account, region.unwrap_or(u8::MAX), api),
            state.bucket_config(api),
        ) {
            *inner
                .stats
                .throttles
                .entry(operation.to_string())
                .or_default() += 1;
            return Err(AwsError::bad_request(
                "ThrottlingException",
                "Rate exceeded",
            ));
        }
    }
    // The hot paths serialize typed responses directly; the rest build a Value.
    let value = match operation {
        "SendCommand" => return send_command(state, &scope, body),
        "ListCommandInvocations" => return list_command_invocations(state, &scope, body),
        "ListCommands" => return list_commands(state, &scope, body),
        "DescribeInstanceInformation" => describe_instance_information(state, &scope, body),
        "GetCommandInvocation" => get_command_invocation(state, &scope, body),
        "CancelCommand" => cancel_command(state, &scope, body),
        "DescribeInstancePatchStates" => describe_instance_patch_states(state, &scope, body),
        other => Err(AwsError::bad_request(
            "UnknownOperationException",
            format!("unknown operation {other}"),
        )),
    };
    value.map(|value| value.to_string())
}

/// `{"<key>": items, "NextToken": next}` without building a Value tree.
#[derive(Serialize)]
struct JsonObject<T> {
    #[serde(flatten)]
    items: std::collections::HashMap<&'static str, T>,
    #[serde(rename = "NextToken", skip_serializing_if = "Option::is_none")]
    next_token: Option<String>,
}

fn json_object<T>(key: &'static str, items: T, next_token: Option<String>) -> JsonObject<T> {
    JsonObject {
        items: std::collections::HashMap::from([(key, items)]),
        next_token,
    }
}

fn to_json<T: Serialize>(value: &T) -> Result<String, AwsError> {
    serde_json::to_string(value).map_err(|error| {
        AwsError::new(
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            "InternalServerError",
            error.to_string(),
        )
    })
}

/// The instance an id names, if it is in the caller's account and region.
fn own_instance(state: &SimState, scope: &Scope, id: &str) -> Option<InstanceKey> {
    let key = state.fleet.parse_instance_id(id)?;
    (key.account == scope.account && Some(key.region) == scope.region).then_some(key)
}

#[derive(Default)]
struct InstanceFilter {
    ids: Option<Vec<String>>,
    ping: Option<Vec<String>>,
    platforms: Option<Vec<String>>,
    tags: Vec<(String, Vec<String>)>,
    tag_keys: Option<Vec<String>>,
}

impl InstanceFilter {
    /// DescribeInstanceInformation's `Filters` and `InstanceInformationFilterList`.
    fn parse(body: &Value) -> Result<Self, AwsError> {
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
    fn add_all(
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

    fn matches(&self, instance: &Instance) -> bool {
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

fn instance_information(state: &SimState, instance: &Instance) -> Value {
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

fn describe_instance_information(
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
    while position < keys.len() && list.len() < limit {
        let instance = state.fleet.instance(keys[position]);
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

fn send_command(state: &SimState, scope: &Scope, body: &Value) -> Result<String, AwsError> {
    let document = required_str(body, "DocumentName")?.to_string();
    if !KNOWN_DOCUMENTS.contains(&document.as_str())
        && !state
            .fleet
            .profile
            .document_outcomes
            .contains_key(&document)
    {
        return Err(AwsError::bad_request(
            "InvalidDocument",
            format!("Document with name {document} does not exist."),
        ));
    }
    let instance_ids = string_list(body, "InstanceIds")?;
    let targets = body.get("Targets").and_then(Value::as_array);
    let timeout: u64 = match body.get("TimeoutSeconds") {
        None | Some(Value::Null) => 3600,
        Some(value) => value.as_u64().filter(|t| (30..=2_592_000).contains(t)).ok_or_else(|| {
            AwsError::validation(format!("1 validation error detected: Value '{value}' at 'timeoutSeconds' failed to satisfy constraint: Member must have value between 30 and 2592000"))
        })?,
    };
    let comment = str_field(body, "Comment")?.unwrap_or_default().to_string();
    if comment.chars().count() > 100 {
        return Err(AwsError::validation(
            "Comment must be at most 100 characters",
        ));
    }
    let max_concurrency = str_field(body, "MaxConcurrency")?
        .unwrap_or("50")
        .to_string();
    let max_errors = str_field(body, "MaxErrors")?.unwrap_or("0").to_string();
    let keys: Vec<InstanceKey> = match (instance_ids, targets) {
        (Some(ids), None) => {
            if ids.is_empty() || ids.len() > 50 {
                return Err(AwsError::validation(format!(
                    "InstanceIds must list 1 to 50 ids, got {}",
                    ids.len()
                )));
            }
            ids.iter()
                .map(|id| {
                    own_instance(state, scope, id).ok_or_else(|| {
                        AwsError::bad_request(
                            "InvalidInstanceId",
                            format!(
                                "Instances [[{id}]] not in a valid state for account {}",
                                state.fleet.account_id(scope.account)
                            ),
                        )
                    })
                })
                .collect::<Result<_, _>>()?
        }
        (None, Some(targets)) => {
            if targets.is_empty() || targets.len() > 5 {
                return Err(AwsError::validation("Targets must list 1 to 5 keys"));
            }
            let mut filter = InstanceFilter::default();
            filter.add_all(targets, "Key", "Values")?;
            match scope.region {
                None => Vec::new(),
                Some(region) => state
                    .fleet
                    .location_instances(scope.account, region)
                    .filter(|key| filter.matches(&state.fleet.instance(*key)))
                    .collect(),
            }
        }
        _ => {
            return Err(AwsError::validation(
                "Specify exactly one of InstanceIds and Targets",
            ));
        }
    };
    let Some(region) = scope.region else {
        return Err(AwsError::bad_request(
            "InvalidInstanceId",
            "No instances in this region",
        ));
    };
    let now = state.clock.now();
    let is_patch = document == "AWS-RunPatchBaseline";
    let parameters = body.get("Parameters").cloned().unwrap_or_else(|| json!({}));
    let install = parameters
        .get("Operation")
        .and_then(|v| v.get(0))
        .and_then(Value::as_str)
        == Some("Install");
    let no_reboot = parameters
        .get("RebootOption")
        .and_then(|v| v.get(0))
        .and_then(Value::as_str)
        == Some("NoReboot");

    let mut inner = state.lock();
    let limit = state.fleet.profile.max_pending_invocations_per_account as usize;
    if inner.pending_invocations(scope.account, now) + keys.len() > limit {
        *inner
            .stats
            .throttles
            .entry("SendCommand".into())
            .or_default() += 1;
        return Err(AwsError::bad_request(
            "ThrottlingException",
            "Rate exceeded: too many pending command invocations in this account",
        ));
    }
    let id = uuid::Uuid::new_v4().to_string();
    let mut invocations = Vec::with_capacity(keys.len());
    let document_index = inner.document_index(&document);
    for key in keys {
        let runs = inner.executions.entry((key, document_index)).or_default();
        let nth = *runs;
        *runs += 1;
        let (outcome, seconds) = state.fleet.invocation_plan(key, &document, nth);
        invocations.push(Invocation {
            instance: key,
            instance_id: state.fleet.instance_id(key),
            outcome,
            online: state.fleet.is_online(key),
            seconds,
        });
    }
    let command = Command {
        id: id.clone(),
        account: scope.account,
        region,
        document,
        parameters,
        comment,
        requested_at: now,
        received_unix_ms: unix_ms(),
        timeout_seconds: timeout as f64,
        max_concurrency,
        max_errors,
        cancelled_at: None,
        invocations,
    };
    for invocation in &command.invocations {
        let finish = command.finish_time(invocation);
        inner
            .pending
            .entry(scope.account)
            .or_default()
            .push(std::cmp::Reverse((finish * 1000.0) as u64));
        if is_patch && invocation.online {
            let state_now = command.state(invocation, finish);
            inner
                .patch_records
                .entry(invocation.instance)
                .or_default()
                .push(PatchRecord {
                    at: finish,
                    started: now,
                    install,
                    succeeded: state_now.details == "Success",
                    no_reboot,
                });
        }
    }
    inner.stats.commands += 1;
    inner.stats.invocations += command.invocations.len() as u64;
    inner.stats.last_mutating_call_unix_ms = Some(unix_ms());
    let response = to_json(&json_object(
        "Command",
        command_out(state, &command, now),
        None,
    ))?;
    inner
        .commands_by_account
        .entry(scope.account)
        .or_default()
        .push(id.clone());
    inner.commands.insert(id, command);
    Ok(response)
}

pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct CommandOut<'a> {
    command_id: &'a str,
    document_name: &'a str,
    document_version: &'static str,
    comment: &'a str,
    parameters: &'a Value,
    instance_ids: Vec<&'a str>,
    targets: [u8; 0],
    requested_date_time: f64,
    status: &'static str,
    status_details: &'static str,
    timeout_seconds: u64,
    max_concurrency: &'a str,
    max_errors: &'a str,
    target_count: usize,
    completed_count: usize,
    error_count: usize,
    delivery_timed_out_count: usize,
    service_role: &'static str,
}

fn command_out<'a>(state: &SimState, command: &'a Command, now: f64) -> CommandOut<'a> {
    let states: Vec<_> = command
        .invocations
        .iter()
        .map(|i| command.state(i, now))
        .collect();
    let terminal =
        |s: &&crate::state::InvocationState| !matches!(s.status, "Pending" | "InProgress");
    let completed = states.iter().filter(terminal).count();
    let errors = states
        .iter()
        .filter(|s| matches!(s.status, "Failed" | "TimedOut"))
        .count();
    let delivery_timed_out = states
        .iter()
        .filter(|s| s.details == "DeliveryTimedOut")
        .count();
    let status = if command.cancelled_at.is_some_and(|c| c <= now) {
        "Cancelled"
    } else if completed < states.len() {
        if states.iter().all(|s| s.status == "Pending") {
            "Pending"
        } else {
            "InProgress"
        }
    } else if errors == 0 && states.iter().all(|s| s.status == "Success") {
        "Success"
    } else {
        "Failed"
    };
    CommandOut {
        command_id: &command.id,
        document_name: &command.document,
        document_version: "$DEFAULT",
        comment: &command.comment,
        parameters: &command.parameters,
        instance_ids: command
            .invocations
            .iter()
            .map(|i| i.instance_id.as_str())
            .collect(),
        targets: [],
        requested_date_time: state.clock.epoch(command.requested_at),
        status,
        status_details: status,
        timeout_seconds: command.timeout_seconds as u64,
        max_concurrency: &command.max_concurrency,
        max_errors: &command.max_errors,
        target_count: states.len(),
        completed_count: completed,
        error_count: errors,
        delivery_timed_out_count: delivery_timed_out,
        service_role: "",
    }
}

/// The caller's own command, or InvalidCommandId (another account's does not exist).
fn own_command<'a>(
    inner: &'a crate::state::Inner,
    scope: &Scope,
    id: &str,
    missing: &str,
) -> Result<&'a Command, AwsError> {
    inner
        .commands
        .get(id)
        .filter(|command| command.account == scope.account && Some(command.region) == scope.region)
        .ok_or_else(|| AwsError::bad_request(missing, format!("Command {id} does not exist.")))
}

/// The command `CommandId` names, or every command of the caller's location.
fn selected_commands<'a>(
    inner: &'a crate::state::Inner,
    scope: &Scope,
    body: &Value,
) -> Result<Vec<&'a Command>, AwsError> {
    Ok(match str_field(body, "CommandId")? {
        Some(id) => vec![own_command(inner, scope, id, "InvalidCommandId")?],
        None => inner
            .commands_by_account
            .get(&scope.account)
            .map(|ids| {
                ids.iter()
                    .filter_map(|id| inner.commands.get(id))
                    .filter(|c| Some(c.region) == scope.region)
                    .collect()
            })
            .unwrap_or_default(),
    })
}

fn plugin_name(document: &str) -> &'static str {
    match document {
        "AWS-RunPatchBaseline" => "PatchLinux",
        "AWS-RunPowerShellScript" => "aws:runPowerShellScript",
        "AWS-ConfigureAWSPackage" => "configurePackage",
        _ => "aws:runShellScript",
    }
}

fn output_text(command: &Command, invocation: &Invocation, details: &str) -> String {
    match details {
        "Success" => format!(
            "{} completed on {}",
            command.document, invocation.instance_id
        ),
        "Failed" => format!(
            "{} failed on {}: exit status 1",
            command.document, invocation.instance_id
        ),
        "ExecutionTimedOut" => "Command execution timed out.".to_string(),
        _ => String::new(),
    }
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct InvocationOut<'a> {
    command_id: &'a str,
    instance_id: &'a str,
    instance_name: &'static str,
    comment: &'a str,
    document_name: &'a str,
    document_version: &'static str,
    requested_date_time: f64,
    status: &'static str,
    status_details: &'static str,
    trace_output: &'static str,
    standard_output_url: &'static str,
    standard_error_url: &'static str,
    service_role: &'static str,
    command_plugins: Vec<PluginOut>,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct PluginOut {
    name: &'static str,
    status: &'static str,
    status_details: &'static str,
    response_code: i32,
    output: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    response_start_date_time: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    response_finish_date_time: Option<f64>,
}

fn invocation_out<'a>(
    state: &SimState,
    command: &'a Command,
    invocation: &'a Invocation,
    now: f64,
    details: bool,
) -> InvocationOut<'a> {
    let current = command.state(invocation, now);
    let command_plugins = if details {
        vec![PluginOut {
            name: plugin_name(&command.document),
            status: current.status,
            status_details: current.details,
            response_code: current.response_code,
            output: output_text(command, invocation, current.details),
            response_start_date_time: current.started.map(|t| state.clock.epoch(t)),
            response_finish_date_time: current.finished.map(|t| state.clock.epoch(t)),
        }]
    } else {
        Vec::new()
    };
    InvocationOut {
        command_id: &command.id,
        instance_id: &invocation.instance_id,
        instance_name: "",
        comment: &command.comment,
        document_name: &command.document,
        document_version: "$DEFAULT",
        requested_date_time: state.clock.epoch(command.requested_at),
        status: current.status,
        status_details: current.details,
        trace_output: "",
        standard_output_url: "",
        standard_error_url: "",
        service_role: "",
        command_plugins,
    }
}

fn list_command_invocations(
    state: &SimState,
    scope: &Scope,
    body: &Value,
) -> Result<String, AwsError> {
    let limit = max_results(body, 1..=50, 50)?;
    let start = page_start(body)?;
    let details = body
        .get("Details")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let instance_filter = str_field(body, "InstanceId")?;
    let now = state.clock.now();
    let inner = state.lock();
    let commands = selected_commands(&inner, scope, body)?;
    let all: Vec<(&Command, &Invocation)> = commands
        .into_iter()
        .flat_map(|command| {
            command
                .invocations
                .iter()
                .map(move |invocation| (command, invocation))
        })
        .filter(|(_, invocation)| instance_filter.is_none_or(|id| invocation.instance_id == id))
        .collect();
    let page: Vec<InvocationOut> = all
        .iter()
        .skip(start)
        .take(limit)
        .map(|(command, invocation)| invocation_out(state, command, invocation, now, details))
        .collect();
    let next = (start + limit < all.len()).then(|| page_token(start + limit));
    to_json(&json_object("CommandInvocations", page, next))
}

fn get_command_invocation(
    state: &SimState,
    scope: &Scope,
    body: &Value,
) -> Result<Value, AwsError> {
    let command_id = required_str(body, "CommandId")?;
    let instance_id = required_str(body, "InstanceId")?;
    let now = state.clock.now();
    let inner = state.lock();
    let command = own_command(&inner, scope, command_id, "InvocationDoesNotExist")?;
    let invocation = command
        .invocations
        .iter()
        .find(|i| i.instance_id == instance_id)
        .ok_or_else(|| {
            AwsError::bad_request(
                "InvocationDoesNotExist",
                "The command invocation does not exist.",
            )
        })?;
    let current = command.state(invocation, now);
    let timestamp = |sim: Option<f64>| {
        sim.and_then(|s| {
            chrono::DateTime::from_timestamp_millis((state.clock.epoch(s) * 1000.0) as i64)
        })
        .map(|t| t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
        .unwrap_or_default()
    };
    let elapsed = match (current.started, current.finished) {
        (Some(start), Some(end)) => format!("PT{:.3}S", end - start),
        _ => String::new(),
    };
    Ok(json!({
        "CommandId": command.id,
        "InstanceId": invocation.instance_id,
        "Comment": command.comment,
        "DocumentName": command.document,
        "DocumentVersion": "$DEFAULT",
        "PluginName": plugin_name(&command.document),
        "ResponseCode": current.response_code,
        "ExecutionStartDateTime": timestamp(current.started),
        "ExecutionElapsedTime": elapsed,
        "ExecutionEndDateTime": timestamp(current.finished),
        "Status": current.status,
        "StatusDetails": current.details,
        "StandardOutputContent": output_text(command, invocation, current.details),
        "StandardOutputUrl": "",
        "StandardErrorContent": "",
        "StandardErrorUrl": "",
    }))
}

fn list_commands(state: &SimState, scope: &Scope, body: &Value) -> Result<String, AwsError> {
    let limit = max_results(body, 1..=50, 50)?;
    let start = page_start(body)?;
    let instance_filter = str_field(body, "InstanceId")?;
    let now = state.clock.now();
    let inner = state.lock();
    let commands = selected_commands(&inner, scope, body)?;
    let matching: Vec<&Command> = commands
        .into_iter()
        .filter(|c| {
            instance_filter.is_none_or(|id| c.invocations.iter().any(|i| i.instance_id == id))
        })
        .collect();
    let page: Vec<CommandOut> = matching
        .iter()
        .skip(start)
        .take(limit)
        .map(|c| command_out(state, c, now))
        .collect();
    let next = (start + limit < matching.len()).then(|| page_token(start + limit));
    to_json(&json_object("Commands", page, next))
}

fn cancel_command(state: &SimState, scope: &Scope, body: &Value) -> Result<Value, AwsError> {
    let command_id = required_str(body, "CommandId")?;
    let now = state.clock.now();
    let mut inner = state.lock();
    own_command(&inner, scope, command_id, "InvalidCommandId")?;
    if let Some(command) = inner.commands.get_mut(command_id) {
        command.cancelled_at.get_or_insert(now);
    }
    inner.stats.last_mutating_call_unix_ms = Some(unix_ms());
    Ok(json!({}))
}

fn describe_instance_patch_states(
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
