//! Organizations over JSON 1.1: the OU tree and its accounts, for the management
//! account only.

use serde_json::{Value, json};

use crate::state::SimState;
use crate::wire::{
    AwsError, Signer, caller_account, max_results, page_start, page_token, required_str,
};

pub fn handle(
    state: &SimState,
    signer: Option<&Signer>,
    operation: &str,
    body: &Value,
) -> Result<Value, AwsError> {
    let caller = caller_account(state, signer, "UnrecognizedClientException")?;
    if caller != 0 {
        return Err(AwsError::bad_request(
            "AccessDeniedException",
            "You don't have permissions to access this resource: only the management account may call Organizations.",
        ));
    }
    let limit = max_results(body, 1..=20, 20)?;
    let start = page_start(body)?;
    let (key, items): (&str, Vec<Value>) = match operation {
        "ListAccounts" => (
            "Accounts",
            (0..state.fleet.profile.accounts)
                .map(|a| account_json(state, a))
                .collect(),
        ),
        "ListAccountsForParent" => {
            let (_, accounts) = children(state, required_str(body, "ParentId")?)?;
            (
                "Accounts",
                accounts
                    .into_iter()
                    .map(|a| account_json(state, a))
                    .collect(),
            )
        }
        "ListChildren" => {
            let parent = required_str(body, "ParentId")?;
            let (ous, accounts) = children(state, parent)?;
            let items = match required_str(body, "ChildType")? {
                "ORGANIZATIONAL_UNIT" => ous
                    .into_iter()
                    .map(|id| json!({ "Id": id, "Type": "ORGANIZATIONAL_UNIT" }))
                    .collect(),
                "ACCOUNT" => accounts
                    .into_iter()
                    .map(|a| json!({ "Id": state.fleet.account_id(a), "Type": "ACCOUNT" }))
                    .collect(),
                other => {
                    return Err(AwsError::validation(format!(
                        "ChildType must be ACCOUNT or ORGANIZATIONAL_UNIT, got {other}"
                    )));
                }
            };
            ("Children", items)
        }
        other => {
            return Err(AwsError::bad_request(
                "UnknownOperationException",
                format!("unknown operation {other}"),
            ));
        }
    };
    let total = items.len();
    let page: Vec<Value> = items.into_iter().skip(start).take(limit).collect();
    let mut response = json!({ key: page });
    if start + limit < total {
        response["NextToken"] = json!(page_token(start + limit));
    }
    Ok(response)
}

fn children(state: &SimState, parent: &str) -> Result<(Vec<String>, Vec<u32>), AwsError> {
    state.fleet.children(parent).ok_or_else(|| {
        AwsError::bad_request(
            "ParentNotFoundException",
            format!("We can't find a root or OU with the ParentId {parent}."),
        )
    })
}

fn account_json(state: &SimState, account: u32) -> Value {
    let id = state.fleet.account_id(account);
    json!({
        "Id": id,
        "Arn": format!("arn:aws:organizations::{}:account/o-sim0/{id}", state.fleet.account_id(0)),
        "Email": format!("aws+{id}@example.com"),
        "Name": format!("sim-account-{account}"),
        "Status": "ACTIVE",
        "JoinedMethod": if account == 0 { "CREATED" } else { "INVITED" },
        "JoinedTimestamp": state.clock.epoch(0.0) - 86_400.0 * 365.0,
    })
}
