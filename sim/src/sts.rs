//! STS over the query protocol: AssumeRole and GetCallerIdentity.

use std::collections::HashMap;

use axum::http::StatusCode;

use crate::fleet::hash;
use crate::state::{Api, Session, SimState};
use crate::wire::{AwsError, Signer, caller_account, xml_escape};

const NAMESPACE: &str = "https://sts.amazonaws.com/doc/2011-06-15/";

pub fn handle(
    state: &SimState,
    signer: Option<&Signer>,
    form: &HashMap<String, String>,
) -> Result<String, AwsError> {
    let action = form.get("Action").map(String::as_str).unwrap_or_default();
    let caller = caller_account(state, signer, "InvalidClientTokenId")?;
    match action {
        "AssumeRole" => assume_role(state, caller, form),
        "GetCallerIdentity" => Ok(get_caller_identity(state, caller)),
        other => Err(AwsError::bad_request(
            "InvalidAction",
            format!("Could not find operation {other} for version 2011-06-15"),
        )),
    }
}

fn valid_name(text: &str, extra: &str) -> bool {
    text.chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_' || extra.contains(c))
}

fn assume_role(
    state: &SimState,
    caller: u32,
    form: &HashMap<String, String>,
) -> Result<String, AwsError> {
    let field = |name: &str| form.get(name).map(String::as_str);
    let validation = |message: String| AwsError::bad_request("ValidationError", message);
    let role_arn = field("RoleArn").ok_or_else(|| validation("RoleArn is required".into()))?;
    let session_name =
        field("RoleSessionName").ok_or_else(|| validation("RoleSessionName is required".into()))?;
    if !(2..=64).contains(&session_name.len()) || !valid_name(session_name, "+=,.@-") {
        return Err(validation(format!(
            "1 validation error detected: Value '{session_name}' at 'roleSessionName' failed to satisfy constraint: Member must satisfy regular expression pattern: [\\w+=,.@-]* and length 2-64"
        )));
    }
    let duration: u32 = match field("DurationSeconds") {
        None => 3600,
        Some(text) => text
            .parse()
            .ok()
            .filter(|d| (900..=43_200).contains(d))
            .ok_or_else(|| {
                validation(format!(
                    "DurationSeconds must be between 900 and 43200, got {text}"
                ))
            })?,
    };
    let external_id = field("ExternalId");
    if let Some(id) = external_id
        && (!(2..=1224).contains(&id.len()) || !valid_name(id, "+=,.@:/-"))
    {
        return Err(validation(
            "ExternalId must be 2-1224 characters of [\\w+=,.@:/-]".into(),
        ));
    }
    let denied = || {
        AwsError::new(
            StatusCode::FORBIDDEN,
            "AccessDenied",
            format!(
                "User: arn:aws:iam::{}:user/flotilla is not authorized to perform: sts:AssumeRole on resource: {role_arn}",
                state.fleet.account_id(caller)
            ),
        )
    };
    let (account_id, role_name) = role_arn
        .strip_prefix("arn:aws:iam::")
        .and_then(|rest| rest.split_once(":role/"))
        .ok_or_else(|| validation(format!("{role_arn} is not a valid role ARN")))?;
    let account = state.fleet.account_index(account_id).ok_or_else(denied)?;
    let expected_external_id = state.fleet.profile.external_id.as_deref();
    let mut inner = state.lock();
    if !inner.take_token(
        (account, 0, Api::AssumeRole),
        state.bucket_config(Api::AssumeRole),
    ) {
        *inner
            .stats
            .throttles
            .entry("AssumeRole".into())
            .or_default() += 1;
        return Err(AwsError::bad_request("Throttling", "Rate exceeded"));
    }
    if !state.fleet.has_role(account, role_name)
        || inner.removed_roles.contains(&account)
        || (expected_external_id.is_some() && expected_external_id != external_id)
    {
        return Err(denied());
    }
    inner.next_session += 1;
    let serial = inner.next_session;
    let key_hash = hash(&[state.fleet.profile.seed, 20, serial]);
    let access_key_id = format!("ASIASIM{serial:08X}{:05X}", key_hash & 0xF_FFFF);
    let expires = state.clock.epoch(state.clock.now()) + f64::from(duration);
    inner.sessions.insert(
        access_key_id.clone(),
        Session {
            account,
            expires_epoch_seconds: expires,
        },
    );
    drop(inner);
    let secret = format!(
        "simsecret{:016x}{:016x}",
        hash(&[key_hash, 1]),
        hash(&[key_hash, 2])
    );
    let token = format!(
        "simtoken{:016x}{:016x}",
        hash(&[key_hash, 3]),
        hash(&[key_hash, 4])
    );
    let expiration = chrono::DateTime::from_timestamp(expires as i64, 0)
        .unwrap_or_default()
        .format("%Y-%m-%dT%H:%M:%SZ");
    Ok(format!(
        "<AssumeRoleResponse xmlns=\"{NAMESPACE}\"><AssumeRoleResult><Credentials><AccessKeyId>{access_key_id}</AccessKeyId><SecretAccessKey>{secret}</SecretAccessKey><SessionToken>{token}</SessionToken><Expiration>{expiration}</Expiration></Credentials><AssumedRoleUser><AssumedRoleId>AROASIM{account:012}:{session}</AssumedRoleId><Arn>arn:aws:sts::{account_id}:assumed-role/{role}/{session}</Arn></AssumedRoleUser></AssumeRoleResult><ResponseMetadata><RequestId>{request}</RequestId></ResponseMetadata></AssumeRoleResponse>",
        session = xml_escape(session_name),
        role = xml_escape(role_name),
        request = uuid::Uuid::new_v4(),
    ))
}

fn get_caller_identity(state: &SimState, caller: u32) -> String {
    let account_id = state.fleet.account_id(caller);
    let arn = if caller == 0 {
        format!("arn:aws:iam::{account_id}:user/flotilla")
    } else {
        format!(
            "arn:aws:sts::{account_id}:assumed-role/{}/session",
            state.fleet.profile.role_name
        )
    };
    format!(
        "<GetCallerIdentityResponse xmlns=\"{NAMESPACE}\"><GetCallerIdentityResult><Arn>{arn}</Arn><UserId>AIDASIM{caller:012}</UserId><Account>{account_id}</Account></GetCallerIdentityResult><ResponseMetadata><RequestId>{}</RequestId></ResponseMetadata></GetCallerIdentityResponse>",
        uuid::Uuid::new_v4()
    )
}
