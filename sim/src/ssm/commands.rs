//! Commands: SendCommand, ListCommands and CancelCommand.

use serde_json::{Value, json};

use super::instances::{InstanceFilter, own_instance};
use super::invocations::{CommandOut, command_out, own_command, selected_commands};
use super::{KNOWN_DOCUMENTS, Scope, json_object, to_json, unix_ms};
use crate::fleet::InstanceKey;
use crate::state::{Command, Invocation, PatchRecord, SimState};
use crate::wire::{
    AwsError, max_results, page_start, page_token, required_str, str_field, string_list,
};

/// The parameters the simulator knows of a document: (required, allowed).
/// Documents not listed take any parameters.
fn document_parameters(
    document: &str,
) -> Option<(&'static [&'static str], &'static [&'static str])> {
    match document {
        "AWS-RunPatchBaseline" => Some((
            &["Operation"],
            &[
                "Operation",
                "SnapshotId",
                "InstallOverrideList",
                "BaselineOverride",
                "RebootOption",
                "AssociationId",
            ],
        )),
        "AWS-RunShellScript" | "AWS-RunPowerShellScript" => Some((
            &["commands"],
            &["commands", "workingDirectory", "executionTimeout"],
        )),
        _ => None,
    }
}

/// Refuses parameters as SSM does before any instance is touched: a
/// required one missing, one the document does not declare, or an
/// Operation other than Scan or Install (InvalidParameters, HTTP 400).
fn check_parameters(document: &str, parameters: Option<&Value>) -> Result<(), AwsError> {
    let Some((required, allowed)) = document_parameters(document) else {
        return Ok(());
    };
    let invalid = |message: String| AwsError::bad_request("InvalidParameters", message);
    let empty = serde_json::Map::new();
    let given = match parameters {
        None | Some(Value::Null) => &empty,
        Some(Value::Object(given)) => given,
        Some(_) => return Err(invalid("Parameters must be a map of lists".into())),
    };
    for name in given.keys() {
        if !allowed.contains(&name.as_str()) {
            return Err(invalid(format!(
                "Parameter \"{name}\" is not declared by document {document}."
            )));
        }
    }
    for name in required {
        if !given.contains_key(*name) {
            return Err(invalid(format!(
                "Parameter \"{name}\" is required by document {document}."
            )));
        }
    }
    if document == "AWS-RunPatchBaseline" {
        let operation = given
            .get("Operation")
            .and_then(|value| value.get(0))
            .and_then(Value::as_str);
        if !matches!(operation, Some("Scan" | "Install")) {
            return Err(invalid(format!(
                "Parameter \"Operation\" of document {document} must be Scan or Install, not {}.",
                operation.unwrap_or("missing")
            )));
        }
    }
    Ok(())
}

/// Every document the simulator knows has one version, 1: `$DEFAULT`,
/// `$LATEST` and `1` name it; another number is InvalidDocumentVersion, as
/// SSM answers for a version that does not exist; anything else fails
/// SendCommand's own pattern (ValidationException).
fn check_document_version(document: &str, version: Option<&str>) -> Result<String, AwsError> {
    let Some(version) = version else {
        return Ok("$DEFAULT".into());
    };
    let number = !version.is_empty()
        && !version.starts_with('0')
        && version.len() <= 9
        && version.bytes().all(|b| b.is_ascii_digit());
    match version {
        "$DEFAULT" | "$LATEST" | "1" => Ok(version.to_string()),
        _ if number => Err(AwsError::bad_request(
            "InvalidDocumentVersion",
            format!("Document {document} has no version {version}."),
        )),
        _ => Err(AwsError::validation(format!(
            "1 validation error detected: Value '{version}' at 'documentVersion' failed to satisfy constraint: Member must satisfy regular expression pattern: ([$]LATEST|[$]DEFAULT|^[1-9][0-9]*$)"
        ))),
    }
}

pub(super) fn send_command(
    state: &SimState,
    scope: &Scope,
    body: &Value,
) -> Result<String, AwsError> {
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
    let document_version = check_document_version(&document, str_field(body, "DocumentVersion")?)?;
    check_parameters(&document, body.get("Parameters"))?;
    let instance_ids = string_list(body, "InstanceIds")?;
    let targets = body.get("Targets").and_then(Value::as_array);
    let timeout: u64 = match body.get("TimeoutSeconds") {
        None | Some(Value::Null) => 3600,
        Some(value) => value.as_u64().filter(|t| (30..=2_592_000).contains(t)).ok_or_else(|| {
            AwsError::validation(format!("1 validation error detected: Value '{value}' at 'timeoutSeconds' failed to satisfy constraint: Member must have value between 30 and 2592000"))
        })?,
    };
    let comment = str_field(body, "Comment")?.unwrap_or_default().to_string();
    let output_s3 = str_field(body, "OutputS3BucketName")?.map(|bucket| {
        Ok::<_, AwsError>((
            bucket.to_string(),
            str_field(body, "OutputS3KeyPrefix")?
                .unwrap_or_default()
                .trim_end_matches('/')
                .to_string(),
        ))
    });
    let output_s3 = output_s3.transpose()?;
    let cloudwatch = body.get("CloudWatchOutputConfig");
    let cloudwatch_log_group = match cloudwatch {
        Some(config) if config.get("CloudWatchOutputEnabled") == Some(&Value::Bool(true)) => Some(
            config
                .get("CloudWatchLogGroupName")
                .and_then(Value::as_str)
                .unwrap_or("/aws/ssm/AWS-RunShellScript")
                .to_string(),
        ),
        _ => None,
    };
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
                Some(region) => {
                    let instance = state.instances();
                    state
                        .fleet
                        .location_instances(scope.account, region)
                        .filter(|key| filter.matches(&instance(*key)))
                        .collect()
                }
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
        document_version,
        parameters,
        comment,
        requested_at: now,
        received_unix_ms: unix_ms(),
        timeout_seconds: timeout as f64,
        max_concurrency,
        max_errors,
        cancelled_at: None,
        outputs_pending: if output_s3.is_some() {
            (0..invocations.len()).collect()
        } else {
            Vec::new()
        },
        invocations,
        output_s3,
        cloudwatch_log_group,
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
    if !command.outputs_pending.is_empty() {
        inner.outputs_due.push(id.clone());
    }
    inner.commands.insert(id, command);
    Ok(response)
}

pub(super) fn list_commands(
    state: &SimState,
    scope: &Scope,
    body: &Value,
) -> Result<String, AwsError> {
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

pub(super) fn cancel_command(
    state: &SimState,
    scope: &Scope,
    body: &Value,
) -> Result<Value, AwsError> {
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
