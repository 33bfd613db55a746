//! What commands did on each instance: ListCommandInvocations and
//! GetCommandInvocation, and the shapes they answer with.

use serde::Serialize;
use serde_json::{Value, json};

use super::{Scope, json_object, to_json};
use crate::state::{Command, Invocation, SimState};
use crate::wire::{AwsError, max_results, page_start, page_token, required_str, str_field};

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct CommandOut<'a> {
    command_id: &'a str,
    document_name: &'a str,
    document_version: &'a str,
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

pub(super) fn command_out<'a>(state: &SimState, command: &'a Command, now: f64) -> CommandOut<'a> {
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
        document_version: &command.document_version,
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
pub(super) fn own_command<'a>(
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
pub(super) fn selected_commands<'a>(
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

pub(super) fn plugin_name(document: &str) -> &'static str {
    match document {
        "AWS-RunPatchBaseline" => "PatchLinux",
        "AWS-RunPowerShellScript" => "aws:runPowerShellScript",
        "AWS-ConfigureAWSPackage" => "configurePackage",
        _ => "aws:runShellScript",
    }
}

pub(super) fn output_text(command: &Command, invocation: &Invocation, details: &str) -> String {
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
pub(super) struct InvocationOut<'a> {
    command_id: &'a str,
    instance_id: &'a str,
    instance_name: &'static str,
    comment: &'a str,
    document_name: &'a str,
    document_version: &'a str,
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
pub(super) struct PluginOut {
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

pub(super) fn invocation_out<'a>(
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
        document_version: &command.document_version,
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

pub(super) fn list_command_invocations(
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

pub(super) fn get_command_invocation(
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
        "DocumentVersion": command.document_version,
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
