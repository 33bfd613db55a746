//! The admin surface under `/_sim/`, a path no AWS operation uses: fault
//! injection and counters for tests and benchmarks.
//!
//! - `GET  /_sim/stats`: calls and throttles per operation, injected failures,
//!   commands, invocations, and the wall-clock time of the latest mutating call.
//! - `POST /_sim/faults`: `{"kind": "fail_next", "operation": "SendCommand",
//!   "code": "InternalServerError", "count": 3}`, `{"kind": "remove_role",
//!   "account_id": "…"}`, `{"kind": "dark_region", "region": "…"}` or
//!   `{"kind": "delay_next", "operation": "SendCommand", "millis": 2000, "count": 1}`.
//! - `GET  /_sim/executions`: how often any (instance, document) ran, at most.
//! - `GET  /_sim/executions/{instance_id}`: per document, how often it ran there.
//! - `GET  /_sim/commands`: every command sent, oldest first: where, which
//!   document, its comment, when it arrived and when its last target finished.
//! - `GET  /_sim/fleet`: account ids, regions and the instance count.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde_json::{Value, json};

use crate::state::{Fault, SimState};

pub async fn stats(State(state): State<Arc<SimState>>) -> Json<Value> {
    let stats = state.lock().stats.clone();
    Json(serde_json::to_value(stats).unwrap_or_default())
}

pub async fn inject(
    State(state): State<Arc<SimState>>,
    Json(fault): Json<Fault>,
) -> Result<StatusCode, (StatusCode, String)> {
    let mut inner = state.lock();
    match fault {
        Fault::FailNext {
            operation,
            code,
            count,
        } => inner.fail_next.push((operation, code, count)),
        Fault::RemoveRole { account_id } => {
            let account = state.fleet.account_index(&account_id).ok_or_else(|| {
                (
                    StatusCode::BAD_REQUEST,
                    format!("account {account_id} is not in the fleet"),
                )
            })?;
            inner.removed_roles.insert(account);
        }
        Fault::DarkRegion { region } => {
            inner.dark_regions.insert(region);
        }
        Fault::DelayNext {
            operation,
            millis,
            count,
        } => inner.delay_next.push((operation, millis, count)),
    }
    Ok(StatusCode::NO_CONTENT)
}

pub async fn executions(State(state): State<Arc<SimState>>) -> Json<Value> {
    let inner = state.lock();
    let max = inner.executions.values().copied().max().unwrap_or(0);
    let total: u64 = inner.executions.values().map(|n| u64::from(*n)).sum();
    Json(
        json!({ "max_per_instance_document": max, "total": total, "distinct": inner.executions.len() }),
    )
}

pub async fn instance_executions(
    State(state): State<Arc<SimState>>,
    Path(instance_id): Path<String>,
) -> Result<Json<BTreeMap<String, u32>>, StatusCode> {
    let key = state
        .fleet
        .parse_instance_id(&instance_id)
        .ok_or(StatusCode::NOT_FOUND)?;
    let inner = state.lock();
    let runs = inner
        .executions
        .iter()
        .filter(|((instance, _), _)| *instance == key)
        .map(|((_, document), count)| (inner.documents[*document as usize].clone(), *count))
        .collect();
    Ok(Json(runs))
}

pub async fn fleet(State(state): State<Arc<SimState>>) -> Json<Value> {
    let fleet = &state.fleet;
    let regions = fleet.profile.regions.len() as u8;
    let instances: u64 = (0..fleet.profile.accounts)
        .flat_map(|a| (0..regions).map(move |r| (a, r)))
        .map(|(a, r)| u64::from(fleet.instance_count(a, r)))
        .sum();
    let accounts: Vec<String> = (0..fleet.profile.accounts)
        .map(|a| fleet.account_id(a))
        .collect();
    Json(json!({ "accounts": accounts, "regions": fleet.profile.regions, "instances": instances }))
}

/// One sent command as tests and benchmarks see it; times in simulated seconds
/// unless named.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CommandRecord {
    pub command_id: String,
    pub account_id: String,
    pub region: String,
    pub document: String,
    pub comment: String,
    pub targets: usize,
    /// The instances it was sent to.
    pub instance_ids: Vec<String>,
    pub received_unix_ms: u64,
    pub requested_at: f64,
    /// When the last of its invocations is (or will be) terminal.
    pub finished_at: f64,
    /// OutputS3BucketName and OutputS3KeyPrefix, as sent.
    pub output_s3: Option<(String, String)>,
    /// CloudWatchOutputConfig's log group, as sent (enabled).
    pub cloudwatch_log_group: Option<String>,
    /// The Parameters, as sent.
    pub parameters: Value,
    /// The DocumentVersion, as sent (`$DEFAULT` when none was).
    pub document_version: String,
}

/// Every command sent so far, oldest first.
pub fn command_records(state: &SimState) -> Vec<CommandRecord> {
    let inner = state.lock();
    let mut records: Vec<CommandRecord> = inner
        .commands
        .values()
        .map(|command| CommandRecord {
            command_id: command.id.clone(),
            account_id: state.fleet.account_id(command.account),
            region: state
                .fleet
                .profile
                .regions
                .get(usize::from(command.region))
                .cloned()
                .unwrap_or_default(),
            document: command.document.clone(),
            comment: command.comment.clone(),
            targets: command.invocations.len(),
            instance_ids: command
                .invocations
                .iter()
                .map(|invocation| invocation.instance_id.clone())
                .collect(),
            received_unix_ms: command.received_unix_ms,
            requested_at: command.requested_at,
            finished_at: command
                .invocations
                .iter()
                .map(|invocation| {
                    let finish = command.finish_time(invocation);
                    command.cancelled_at.map_or(finish, |at| finish.min(at))
                })
                .fold(command.requested_at, f64::max),
            output_s3: command.output_s3.clone(),
            cloudwatch_log_group: command.cloudwatch_log_group.clone(),
            parameters: command.parameters.clone(),
            document_version: command.document_version.clone(),
        })
        .collect();
    records.sort_by(|a, b| a.requested_at.total_cmp(&b.requested_at));
    records
}

pub async fn commands(State(state): State<Arc<SimState>>) -> Json<Value> {
    let now = state.clock.now();
    Json(json!({ "now": now, "commands": command_records(&state) }))
}
