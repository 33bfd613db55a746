//! AWS wire details shared by the services: errors in each protocol's shape, the
//! caller's identity from the SigV4 Authorization header, JSON field access.
//!
//! Signatures are not verified: the simulator trusts the access key id in the
//! credential scope and uses it to find the caller's account. That is enough for
//! account isolation, which is what flotilla's correctness depends on.

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use crate::state::SimState;

#[derive(Debug, Clone, PartialEq)]
pub struct AwsError {
    pub status: StatusCode,
    pub code: String,
    pub message: String,
}

impl AwsError {
    pub fn new(status: StatusCode, code: &str, message: impl Into<String>) -> Self {
        Self {
            status,
            code: code.to_string(),
            message: message.into(),
        }
    }

    pub fn bad_request(code: &str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn validation(message: impl Into<String>) -> Self {
        Self::bad_request("ValidationException", message)
    }
}

fn request_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// The JSON 1.1 protocol (SSM, Organizations): `{"__type": code, "message": …}`.
pub fn json_response(result: Result<String, AwsError>) -> Response {
    let (status, body) = match result {
        Ok(body) => (StatusCode::OK, body),
        Err(error) => (
            error.status,
            serde_json::json!({ "__type": error.code, "message": error.message }).to_string(),
        ),
    };
    let mut response = (status, body).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-amz-json-1.1"),
    );
    if let Ok(id) = HeaderValue::from_str(&request_id()) {
        headers.insert("x-amzn-requestid", id);
    }
    response
}

/// The query protocol (STS): XML bodies, `<ErrorResponse>` for errors.
pub fn xml_response(result: Result<String, AwsError>) -> Response {
    let id = request_id();
    let (status, body) = match result {
        Ok(body) => (StatusCode::OK, body),
        Err(error) => (
            error.status,
            format!(
                "<ErrorResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\"><Error><Type>Sender</Type><Code>{}</Code><Message>{}</Message></Error><RequestId>{id}</RequestId></ErrorResponse>",
                xml_escape(&error.code),
                xml_escape(&error.message)
            ),
        ),
    };
    let mut response = (status, body).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/xml"));
    response
}

pub fn xml_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

/// Access key id and region from `Credential=AKID/date/region/service/aws4_request`.
pub struct Signer {
    pub access_key_id: String,
    pub region: String,
}

pub fn signer(headers: &HeaderMap) -> Option<Signer> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let credential = value
        .split("Credential=")
        .nth(1)?
        .split([',', ' '])
        .next()?;
    let mut parts = credential.split('/');
    let access_key_id = parts.next()?.to_string();
    let _date = parts.next()?;
    let region = parts.next()?.to_string();
    Some(Signer {
        access_key_id,
        region,
    })
}

/// The calling account: the caller's own key is the management account (0);
/// keys AssumeRole issued map to their role's account.
pub fn caller_account(
    state: &SimState,
    signer: Option<&Signer>,
    unknown_code: &str,
) -> Result<u32, AwsError> {
    let Some(signer) = signer else {
        return Err(AwsError::bad_request(
            "MissingAuthenticationTokenException",
            "Request is missing Authentication Token",
        ));
    };
    if signer.access_key_id == state.fleet.profile.caller_access_key_id {
        return Ok(0);
    }
    let session = state.lock().sessions.get(&signer.access_key_id).cloned();
    match session {
        Some(session) if session.expires_epoch_seconds > state.clock.epoch(state.clock.now()) => {
            Ok(session.account)
        }
        Some(_) => Err(AwsError::bad_request(
            "ExpiredTokenException",
            "The security token included in the request is expired",
        )),
        None => Err(AwsError::bad_request(
            unknown_code,
            "The security token included in the request is invalid.",
        )),
    }
}

pub fn str_field<'a>(body: &'a Value, name: &str) -> Result<Option<&'a str>, AwsError> {
    match body.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => Ok(Some(text)),
        Some(_) => Err(AwsError::validation(format!("{name} must be a string"))),
    }
}

pub fn required_str<'a>(body: &'a Value, name: &str) -> Result<&'a str, AwsError> {
    str_field(body, name)?.ok_or_else(|| {
        AwsError::validation(format!("1 validation error detected: Value null at '{name}' failed to satisfy constraint: Member must not be null"))
    })
}

pub fn string_list(body: &Value, name: &str) -> Result<Option<Vec<String>>, AwsError> {
    match body.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| {
                item.as_str().map(str::to_string).ok_or_else(|| {
                    AwsError::validation(format!("{name} must be a list of strings"))
                })
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some),
        Some(_) => Err(AwsError::validation(format!(
            "{name} must be a list of strings"
        ))),
    }
}

/// `MaxResults` within `range`, or `default` when absent.
pub fn max_results(
    body: &Value,
    range: std::ops::RangeInclusive<u64>,
    default: u64,
) -> Result<usize, AwsError> {
    let value = match body.get("MaxResults") {
        None | Some(Value::Null) => default,
        Some(value) => value.as_u64().filter(|n| range.contains(n)).ok_or_else(|| {
            AwsError::validation(format!(
                "1 validation error detected: Value '{value}' at 'maxResults' failed to satisfy constraint: Member must have value between {} and {}",
                range.start(),
                range.end()
            ))
        })?,
    };
    usize::try_from(value).map_err(|_| AwsError::validation("MaxResults is too large"))
}

/// Paging tokens are offsets into a deterministic listing.
pub fn page_start(body: &Value) -> Result<usize, AwsError> {
    match str_field(body, "NextToken")? {
        None => Ok(0),
        Some(token) => token
            .strip_prefix("sim-")
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| {
                AwsError::bad_request("InvalidNextToken", "The specified token is not valid.")
            }),
    }
}

pub fn page_token(next: usize) -> String {
    format!("sim-{next}")
}
