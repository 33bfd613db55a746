//! SSM over JSON 1.1: instances, commands, invocations and patch states.
//!
//! Every call is scoped to the caller's account (from its credentials) and the
//! region it signed for: another account's instances and commands do not exist.
//! Here the dispatch and what the calls share; [`instances`], [`commands`]
//! and [`invocations`] the calls.

mod commands;
mod instances;
mod invocations;

use serde::Serialize;
use serde_json::Value;

use self::commands::{cancel_command, list_commands, send_command};
use self::instances::{
    describe_instance_information, describe_instance_patch_states, remove_tags_from_resource,
};
use self::invocations::{get_command_invocation, list_command_invocations};
use crate::state::{Api, SimState};
use crate::wire::{AwsError, Signer, caller_account};

/// The directory SSM writes a plugin's output objects under: the plugin's
/// name without the `:` (`awsrunShellScript`, `PatchLinux`).
pub(crate) fn plugin_directory(document: &str) -> String {
    invocations::plugin_name(document).replace(':', "")
}

/// An invocation's full standard output, as its output object holds it.
pub(crate) fn output_of(
    command: &crate::state::Command,
    invocation: &crate::state::Invocation,
    details: &str,
) -> String {
    invocations::output_text(command, invocation, details)
}

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
        "DescribeInstanceInformation" => {
            return describe_instance_information(state, &scope, body);
        }
        "GetCommandInvocation" => get_command_invocation(state, &scope, body),
        "CancelCommand" => cancel_command(state, &scope, body),
        "DescribeInstancePatchStates" => {
            return describe_instance_patch_states(state, &scope, body);
        }
        "RemoveTagsFromResource" => remove_tags_from_resource(state, &scope, body),
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

pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
