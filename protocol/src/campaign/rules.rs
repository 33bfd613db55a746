//! The rules of each part of a spec: steps, accounts, regions, role,
//! targets, rate control and API rate limits. Each reports every problem
//! with its field path and returns the typed value.

use std::collections::{BTreeMap, BTreeSet};

use super::patterns::{
    ACCOUNT_ID, DOCUMENT, DOCUMENT_VERSION, EXTERNAL_ID, INSTANCE_ID, OU_ID, PARAMETER, REGION,
    ROLE_NAME, SECRET_NAME, SSM_REFERENCE, STEP_NAME,
};
use super::values::parse_duration_in;
use super::{
    AccountSelection, ApiRateLimits, DEFAULT_ROLE_NAME, DEFAULT_STEP_TIMEOUT, ExecutionRole,
    MAX_RATE_PER_SECOND, MAX_TAG_KEYS, MAX_TAG_VALUES, PATCH_BASELINE_DOCUMENT, Platform,
    RateControl, SESSION_DURATION_RANGE, STEP_TIMEOUT_RANGE, Step, TargetSelection, TargetSelector,
};
use crate::rate_control::{RateKind, RateValue};
use crate::spec::{CampaignSpec, PlatformSpec, Scalar, StringOrList};
use crate::validation::{FieldPath, Validator};

pub(super) fn validate_steps(
    v: &mut Validator,
    spec: &CampaignSpec,
    path: &FieldPath,
) -> Vec<Step> {
    if spec.steps.is_empty() {
        v.error(path, "must list at least one step");
    }
    let mut names = BTreeSet::new();
    let mut steps = Vec::with_capacity(spec.steps.len());
    for (index, step) in spec.steps.iter().enumerate() {
        let path = path.index(index);
        if !STEP_NAME.is_match(&step.name) {
            v.error(
                &path.at("name"),
                format!(
                    "must be 1-64 letters, digits, '_', '.' or '-', starting with a letter or digit, got {:?}",
                    step.name
                ),
            );
        } else if !names.insert(step.name.as_str()) {
            v.error(
                &path.at("name"),
                format!("{:?} is used by an earlier step", step.name),
            );
        }
        if !DOCUMENT.is_match(&step.document) {
            v.error(
                &path.at("document"),
                format!(
                    "must be an SSM document name or ARN: 3-128 of letters, digits, '_', '-', '.', ':', '/', got {:?}",
                    step.document
                ),
            );
        }
        let mut parameters = BTreeMap::new();
        for (key, values) in &step.parameters {
            let key_path = path.at("parameters").key(key);
            if !PARAMETER.is_match(key) {
                v.error(
                    &key_path,
                    "parameter names must be 1-128 letters, digits or '_'",
                );
            }
            // A secret is referenced (`{{ssm:/path}}`, resolved by SSM on the
            // host), never written into a spec: specs are stored, shown by the
            // API and copied into every run.
            if SECRET_NAME.is_match(key)
                && values
                    .0
                    .iter()
                    .any(|value| !SSM_REFERENCE.is_match(&value.text))
            {
                v.error(
                    &key_path,
                    "looks like a secret: reference it from SSM Parameter Store as {{ssm:/path/to/it}} instead of writing its value",
                );
            }
            parameters.insert(
                key.clone(),
                values.0.iter().map(|s| s.text.clone()).collect(),
            );
        }
        if step.document == PATCH_BASELINE_DOCUMENT {
            check_patch_baseline_parameters(v, &parameters, &path.at("parameters"));
        }
        let timeout = match &step.timeout {
            None => Some(DEFAULT_STEP_TIMEOUT),
            Some(text) => v.check(
                &path.at("timeout"),
                parse_duration_in(text, STEP_TIMEOUT_RANGE),
            ),
        };
        let document_version = step.document_version.as_ref().and_then(|version| {
            if DOCUMENT_VERSION.is_match(&version.text) {
                Some(version.text.clone())
            } else {
                v.error(
                    &path.at("document_version"),
                    format!(
                        "must be $DEFAULT, $LATEST or a version number from 1, got {:?}",
                        version.text
                    ),
                );
                None
            }
        });
        if let Some(timeout) = timeout {
            steps.push(Step {
                name: step.name.clone(),
                document: step.document.clone(),
                parameters,
                timeout,
                document_version,
            });
        }
    }
    steps
}

/// AWS-RunPatchBaseline's own parameter rules, so a typo fails before Patch Tuesday.
pub(super) fn check_patch_baseline_parameters(
    v: &mut Validator,
    parameters: &BTreeMap<String, Vec<String>>,
    path: &FieldPath,
) {
    let one_of = |v: &mut Validator, name: &str, allowed: &[&str], required: bool| match parameters
        .get(name)
        .map(Vec::as_slice)
    {
        None if required => v.error(
            &path.key(name),
            format!(
                "is required by {PATCH_BASELINE_DOCUMENT}: one of {}",
                allowed.join(", ")
            ),
        ),
        None => {}
        Some([value]) if allowed.contains(&value.as_str()) => {}
        Some(other) => v.error(
            &path.key(name),
            format!("must be one of {}, got {other:?}", allowed.join(", ")),
        ),
    };
    one_of(v, "Operation", &["Scan", "Install"], true);
    one_of(v, "RebootOption", &["RebootIfNeeded", "NoReboot"], false);
}

pub(super) fn validate_accounts(
    v: &mut Validator,
    spec: &CampaignSpec,
    path: &FieldPath,
) -> AccountSelection {
    let accounts = &spec.accounts;
    if accounts.ids.is_empty() && accounts.organizational_units.is_empty() {
        v.error(path, "must list account ids, organizational_units, or both");
    }
    let ids = validate_account_ids(v, &accounts.ids, &path.at("ids"));
    let exclude_accounts =
        validate_account_ids(v, &accounts.exclude_accounts, &path.at("exclude_accounts"));
    for (index, ou) in accounts.organizational_units.iter().enumerate() {
        if !OU_ID.is_match(ou) {
            v.error(
                &path.at("organizational_units").index(index),
                format!("must be an OU id like \"ou-ab12-cdef3456\" or a root id like \"r-ab12\", got {ou:?}"),
            );
        }
    }
    if accounts.include_child_ous && accounts.organizational_units.is_empty() {
        v.error(
            &path.at("include_child_ous"),
            "needs organizational_units to apply to",
        );
    }
    if !ids.is_empty() && accounts.organizational_units.is_empty() {
        let excluded: BTreeSet<&String> = exclude_accounts.iter().collect();
        if ids.iter().all(|id| excluded.contains(id)) {
            v.error(
                &path.at("exclude_accounts"),
                "excludes every listed account; nothing would run",
            );
        }
    }
    AccountSelection {
        ids,
        organizational_units: accounts.organizational_units.clone(),
        include_child_ous: accounts.include_child_ous,
        exclude_accounts,
    }
}

pub(super) fn validate_account_ids(
    v: &mut Validator,
    ids: &[Scalar],
    path: &FieldPath,
) -> Vec<String> {
    let mut seen = BTreeSet::new();
    for (index, id) in ids.iter().enumerate() {
        let path = path.index(index);
        if !ACCOUNT_ID.is_match(&id.text) {
            let hint = if id.was_number {
                "; quote account ids in YAML (\"012345678901\") so leading zeros survive"
            } else {
                ""
            };
            v.error(
                &path,
                format!("must be a 12-digit account id, got {:?}{hint}", id.text),
            );
        } else if !seen.insert(id.text.as_str()) {
            v.error(&path, format!("{:?} is listed twice", id.text));
        }
    }
    ids.iter().map(|id| id.text.clone()).collect()
}

pub(super) fn validate_regions(
    v: &mut Validator,
    regions: &[String],
    path: &FieldPath,
) -> Vec<String> {
    if regions.is_empty() {
        v.error(path, "must list at least one region");
    }
    let mut seen = BTreeSet::new();
    for (index, region) in regions.iter().enumerate() {
        if !REGION.is_match(region) {
            v.error(
                &path.index(index),
                format!("must be an AWS region name like \"us-east-1\" or \"us-gov-west-1\", got {region:?}"),
            );
        } else if !seen.insert(region.as_str()) {
            v.error(&path.index(index), format!("{region:?} is listed twice"));
        }
    }
    regions.to_vec()
}

pub(super) fn validate_role(
    v: &mut Validator,
    spec: &CampaignSpec,
    path: &FieldPath,
) -> Option<ExecutionRole> {
    let role = &spec.role;
    let name = role
        .name
        .clone()
        .unwrap_or_else(|| DEFAULT_ROLE_NAME.to_string());
    if !ROLE_NAME.is_match(&name) {
        v.error(
            &path.at("name"),
            format!("must be an IAM role name: 1-64 letters, digits or '+=,.@_-', got {name:?}"),
        );
    }
    if let Some(external_id) = &role.external_id
        && !(EXTERNAL_ID.is_match(external_id) && (2..=1224).contains(&external_id.len()))
    {
        v.error(
            &path.at("external_id"),
            format!(
                "must be 2-1224 letters, digits or '+=,.@:/_-', got {} characters",
                external_id.chars().count()
            ),
        );
    }
    let session_duration = match &role.session_duration {
        None => Some(SESSION_DURATION_RANGE.1),
        Some(text) => v.check(
            &path.at("session_duration"),
            parse_duration_in(text, SESSION_DURATION_RANGE),
        ),
    }?;
    Some(ExecutionRole {
        name,
        external_id: role.external_id.clone(),
        session_duration,
    })
}

pub(super) fn validate_targets(
    v: &mut Validator,
    spec: &CampaignSpec,
    path: &FieldPath,
) -> TargetSelection {
    let targets = &spec.targets;
    let chosen: Vec<&str> = [
        ("all", targets.all),
        ("instance_ids", !targets.instance_ids.is_empty()),
        ("tags", !targets.tags.is_empty()),
    ]
    .into_iter()
    .filter_map(|(name, set)| set.then_some(name))
    .collect();
    if chosen.len() != 1 {
        v.error(
            path,
            format!(
                "must choose exactly one of all: true, instance_ids or tags, got {}",
                if chosen.is_empty() {
                    "none".to_string()
                } else {
                    chosen.join(" and ")
                }
            ),
        );
    }
    let mut seen = BTreeSet::new();
    for (index, id) in targets.instance_ids.iter().enumerate() {
        let path = path.at("instance_ids").index(index);
        if !INSTANCE_ID.is_match(id) {
            v.error(
                &path,
                format!("must be an instance id: \"i-\" and 8 or 17 hex digits, or \"mi-\" and 17, got {id:?}"),
            );
        } else if !seen.insert(id.as_str()) {
            v.error(&path, format!("{id:?} is listed twice"));
        }
    }
    if targets.tags.len() > MAX_TAG_KEYS {
        v.error(
            &path.at("tags"),
            format!(
                "may have at most {MAX_TAG_KEYS} tag keys, got {}",
                targets.tags.len()
            ),
        );
    }
    let tags = validate_tags(v, &targets.tags, &path.at("tags"));
    let selector = if targets.all {
        TargetSelector::All
    } else if !targets.instance_ids.is_empty() {
        TargetSelector::InstanceIds(targets.instance_ids.clone())
    } else {
        TargetSelector::Tags(tags)
    };
    TargetSelection {
        selector,
        platform: targets.platform.map(|platform| match platform {
            PlatformSpec::Linux => Platform::Linux,
            PlatformSpec::Windows => Platform::Windows,
            PlatformSpec::MacOS => Platform::MacOS,
        }),
        online_only: targets.online_only,
    }
}

pub(super) fn validate_tags(
    v: &mut Validator,
    tags: &BTreeMap<String, StringOrList>,
    path: &FieldPath,
) -> BTreeMap<String, Vec<String>> {
    let mut result = BTreeMap::new();
    for (key, values) in tags {
        let path = path.key(key);
        let key_length = key.chars().count();
        if key_length == 0 || key_length > 128 {
            v.error(&path, "tag keys must be 1-128 characters");
        } else if let Some(bare) = key.strip_prefix("tag:") {
            v.error(
                &path,
                format!("write the tag key without the \"tag:\" prefix: {bare:?}"),
            );
        }
        if values.0.is_empty() || values.0.len() > MAX_TAG_VALUES {
            v.error(
                &path,
                format!(
                    "must list 1-{MAX_TAG_VALUES} values, got {}",
                    values.0.len()
                ),
            );
        }
        for (index, value) in values.0.iter().enumerate() {
            if value.text.chars().count() > 256 {
                v.error(
                    &path.index(index),
                    "tag values must be at most 256 characters",
                );
            }
        }
        result.insert(
            key.clone(),
            values.0.iter().map(|s| s.text.clone()).collect(),
        );
    }
    result
}

pub(super) fn validate_rate_control(
    v: &mut Validator,
    spec: &CampaignSpec,
    path: &FieldPath,
) -> Option<RateControl> {
    let rate = &spec.rate_control;
    // Defaults are AWS's: SendCommand's MaxConcurrency 50 and MaxErrors 0, and
    // Automation's one target location at a time with no location failures.
    let mut field =
        |name: &str, value: &Option<Scalar>, kind: RateKind, default: RateValue| match value {
            None => Some(default),
            Some(text) => v.check(&path.at(name), RateValue::parse(&text.text, kind)),
        };
    let location_concurrency = field(
        "location_concurrency",
        &rate.location_concurrency,
        RateKind::Concurrency,
        RateValue::Count(1),
    );
    let location_max_errors = field(
        "location_max_errors",
        &rate.location_max_errors,
        RateKind::Errors,
        RateValue::Count(0),
    );
    let max_concurrency = field(
        "max_concurrency",
        &rate.max_concurrency,
        RateKind::Concurrency,
        RateValue::Count(50),
    );
    let max_errors = field(
        "max_errors",
        &rate.max_errors,
        RateKind::Errors,
        RateValue::Count(0),
    );
    Some(RateControl {
        location_concurrency: location_concurrency?,
        location_max_errors: location_max_errors?,
        max_concurrency: max_concurrency?,
        max_errors: max_errors?,
    })
}

pub(super) fn validate_api_rate_limits(
    v: &mut Validator,
    spec: &CampaignSpec,
    path: &FieldPath,
) -> ApiRateLimits {
    let limits = &spec.api_rate_limits;
    let defaults = ApiRateLimits::default();
    let mut field = |name: &str, value: Option<f64>, default: f64| match value {
        None => default,
        Some(rate) if rate.is_finite() && rate > 0.0 && rate <= MAX_RATE_PER_SECOND => rate,
        Some(rate) => {
            v.error(
                &path.at(name),
                format!("must be requests per second above 0 and at most {MAX_RATE_PER_SECOND}, got {rate}"),
            );
            default
        }
    };
    ApiRateLimits {
        send_command: field("send_command", limits.send_command, defaults.send_command),
        list_command_invocations: field(
            "list_command_invocations",
            limits.list_command_invocations,
            defaults.list_command_invocations,
        ),
        describe_instance_information: field(
            "describe_instance_information",
            limits.describe_instance_information,
            defaults.describe_instance_information,
        ),
        describe_instance_patch_states: field(
            "describe_instance_patch_states",
            limits.describe_instance_patch_states,
            defaults.describe_instance_patch_states,
        ),
        assume_role: field("assume_role", limits.assume_role, defaults.assume_role),
    }
}
