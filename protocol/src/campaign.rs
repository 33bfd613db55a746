//! A validated campaign: what to run, where, how fast and safely, and when.
//!
//! Raw text → [`CampaignSpec`] (shape only) → [`Campaign::build_and_validate`]
//! (every rule, every problem reported with its field path) → typed [`Campaign`].

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::LazyLock;
use std::time::Duration;

use regex::Regex;
use serde::{Deserialize, Serialize};

use crate::rate_control::{RateKind, RateValue};
use crate::schedule::{Schedule, ScheduleExpression, parse_timezone};
use crate::spec::{
    CampaignSpec, MissedOccurrence, PlatformSpec, Scalar, StringOrList, TriggerEvent,
};
use crate::validation::{FieldError, FieldErrors, FieldPath, Validator};

pub const DEFAULT_ROLE_NAME: &str = "FlotillaExecutionRole";
pub const DEFAULT_OUTPUT_DIRECTORY: &str = "flotilla-results";
/// The SSM document whose steps report patch compliance.
pub const PATCH_BASELINE_DOCUMENT: &str = "AWS-RunPatchBaseline";

/// SendCommand's TimeoutSeconds range.
const STEP_TIMEOUT_RANGE: (Duration, Duration) =
    (Duration::from_secs(30), Duration::from_secs(30 * 86_400));
const DEFAULT_STEP_TIMEOUT: Duration = Duration::from_secs(3600);
/// AssumeRole's DurationSeconds with role chaining: 15 minutes to 1 hour.
const SESSION_DURATION_RANGE: (Duration, Duration) =
    (Duration::from_secs(900), Duration::from_secs(3600));
const TRIGGER_DELAY_RANGE: (Duration, Duration) = (Duration::ZERO, Duration::from_secs(3600));
/// SSM's limit on tag keys in SendCommand's Targets.
const MAX_TAG_KEYS: usize = 5;
/// SSM's limit on values of one tag key in Targets.
const MAX_TAG_VALUES: usize = 50;
const MAX_RATE_PER_SECOND: f64 = 10_000.0;

#[derive(Debug, Clone)]
pub struct Campaign {
    pub name: String,
    pub description: String,
    pub version: u32,
    pub steps: Vec<Step>,
    pub accounts: AccountSelection,
    pub regions: Vec<String>,
    pub role: ExecutionRole,
    pub targets: TargetSelection,
    pub rate_control: RateControl,
    pub api_rate_limits: ApiRateLimits,
    pub schedule: Option<CampaignSchedule>,
    pub triggers: Vec<Trigger>,
    pub output: OutputLocation,
    /// The spec this was built from, for storing and showing back.
    pub spec: CampaignSpec,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    pub name: String,
    pub document: String,
    /// SSM's shape: every parameter is a list of strings.
    pub parameters: BTreeMap<String, Vec<String>>,
    pub timeout: Duration,
}

impl Step {
    /// True for AWS-RunPatchBaseline steps, whose results carry compliance counts.
    pub fn is_patch_baseline(&self) -> bool {
        self.document == PATCH_BASELINE_DOCUMENT
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountSelection {
    pub ids: Vec<String>,
    pub organizational_units: Vec<String>,
    pub include_child_ous: bool,
    pub exclude_accounts: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecutionRole {
    pub name: String,
    pub external_id: Option<String>,
    pub session_duration: Duration,
}

impl ExecutionRole {
    pub fn arn(&self, account_id: &str) -> String {
        format!("arn:aws:iam::{account_id}:role/{}", self.name)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetSelection {
    pub selector: TargetSelector,
    pub platform: Option<Platform>,
    pub online_only: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TargetSelector {
    All,
    InstanceIds(Vec<String>),
    /// Tag key → accepted values; keys ANDed, values ORed.
    Tags(BTreeMap<String, Vec<String>>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Platform {
    Linux,
    Windows,
    MacOS,
}

impl Platform {
    /// SSM's PlatformType name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Linux => "Linux",
            Self::Windows => "Windows",
            Self::MacOS => "MacOS",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateControl {
    pub location_concurrency: RateValue,
    pub location_max_errors: RateValue,
    pub max_concurrency: RateValue,
    pub max_errors: RateValue,
}

/// Requests per second shared by all workers: per account-region for the SSM calls,
/// per account for AssumeRole.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ApiRateLimits {
    pub send_command: f64,
    pub list_command_invocations: f64,
    pub describe_instance_information: f64,
    pub describe_instance_patch_states: f64,
    pub assume_role: f64,
}

impl Default for ApiRateLimits {
    /// Well under the SSM and STS limits of one account-region, leaving room for
    /// the account's other automation.
    fn default() -> Self {
        Self {
            send_command: 5.0,
            list_command_invocations: 10.0,
            describe_instance_information: 5.0,
            describe_instance_patch_states: 5.0,
            assume_role: 5.0,
        }
    }
}

#[derive(Debug, Clone)]
pub struct CampaignSchedule {
    pub schedule: Schedule,
    pub on_missed: MissedOccurrence,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trigger {
    pub event: TriggerEvent,
    pub delay: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum OutputLocation {
    Local(PathBuf),
    S3 { bucket: String, prefix: String },
}

/// The format a spec is written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpecFormat {
    Yaml,
    Json,
}

impl SpecFormat {
    /// `.json` files are JSON; everything else is read as YAML.
    pub fn from_path(path: &Path) -> Self {
        match path.extension().and_then(|e| e.to_str()) {
            Some(ext) if ext.eq_ignore_ascii_case("json") => Self::Json,
            _ => Self::Yaml,
        }
    }
}

impl Campaign {
    /// Parses and validates a spec; every problem comes back with its field path.
    pub fn parse(text: &str, format: SpecFormat) -> Result<Self, FieldErrors> {
        Self::parse_within(text, format, DEFAULT_MAX_LOCATIONS)
    }

    /// [`Campaign::parse`], allowing at most `max_locations` account-region
    /// pairs (accounts listed by id × regions; accounts of OUs are counted when
    /// a run resolves them).
    pub fn parse_within(
        text: &str,
        format: SpecFormat,
        max_locations: u64,
    ) -> Result<Self, FieldErrors> {
        let spec = parse_spec(text, format)?;
        Self::build_and_validate_within(spec, max_locations)
    }

    /// Checks every rule of `spec` and builds the typed campaign.
    pub fn build_and_validate(spec: CampaignSpec) -> Result<Self, FieldErrors> {
        Self::build_and_validate_within(spec, DEFAULT_MAX_LOCATIONS)
    }

    fn build_and_validate_within(
        spec: CampaignSpec,
        max_locations: u64,
    ) -> Result<Self, FieldErrors> {
        let mut v = Validator::new();
        let root = FieldPath::root();
        // First, and alone: a spec that expands past the cap is refused
        // before its (many) items are validated one by one.
        let (account_count, region_count) = (spec.accounts.ids.len(), spec.regions.len());
        let location_count = (account_count as u64).saturating_mul(region_count as u64);
        if location_count > max_locations {
            let mut early = Validator::new();
            early.error(
                &root.at("accounts").at("ids"),
                format!(
                    "{account_count} accounts × {region_count} regions are {location_count} locations; a run may have at most {max_locations} (the scheduler's --max-locations)"
                ),
            );
            return Err(early.finish().err().unwrap_or_else(internal_error));
        }

        if spec.name.is_empty() {
            v.error(&root.at("name"), "is required");
        } else {
            v.check(&root.at("name"), check_name(&spec.name));
        }
        if spec.description.chars().count() > 1024 {
            v.error(&root.at("description"), "must be at most 1024 characters");
        }
        if spec.version == 0 {
            v.error(&root.at("version"), "must be at least 1");
        }
        let steps = validate_steps(&mut v, &spec, &root.at("steps"));
        let accounts = validate_accounts(&mut v, &spec, &root.at("accounts"));
        let regions = validate_regions(&mut v, &spec.regions, &root.at("regions"));
        let role = validate_role(&mut v, &spec, &root.at("role"));
        let targets = validate_targets(&mut v, &spec, &root.at("targets"));
        let rate_control = validate_rate_control(&mut v, &spec, &root.at("rate_control"));
        let api_rate_limits = validate_api_rate_limits(&mut v, &spec, &root.at("api_rate_limits"));
        let schedule = spec.schedule.as_ref().and_then(|schedule| {
            let path = root.at("schedule");
            let expression = v.check(
                &path.at("expression"),
                schedule.expression.parse::<ScheduleExpression>(),
            );
            let timezone = v.check(
                &path.at("timezone"),
                parse_timezone(schedule.timezone.as_deref()),
            );
            Some(CampaignSchedule {
                schedule: Schedule {
                    expression: expression?,
                    timezone: timezone?,
                },
                on_missed: schedule.on_missed,
            })
        });
        let triggers = spec
            .triggers
            .iter()
            .enumerate()
            .filter_map(|(index, trigger)| {
                let path = root.at("triggers").index(index).at("delay");
                let delay = match &trigger.delay {
                    None => Some(Duration::ZERO),
                    Some(text) => v.check(&path, parse_duration_in(text, TRIGGER_DELAY_RANGE)),
                }?;
                Some(Trigger {
                    event: trigger.event,
                    delay,
                })
            })
            .collect::<Vec<_>>();
        let mut seen_events = BTreeSet::new();
        for (index, trigger) in spec.triggers.iter().enumerate() {
            if !seen_events.insert(trigger.event) {
                v.error(
                    &root.at("triggers").index(index).at("event"),
                    "is listed twice; a campaign reacts to each event kind once",
                );
            }
        }
        let output = v.check(&root.at("output"), parse_output(spec.output.as_deref()));
        for (index, entry) in spec.run_by.iter().enumerate() {
            if !RUN_BY.is_match(entry) {
                v.error(
                    &root.at("run_by").index(index),
                    format!(
                        "must be a principal name (1-128 of letters, digits, '_', '.', '-', '@') or role:<role>, got {entry:?}"
                    ),
                );
            }
        }
        if spec.run_by.len() > 100 {
            v.error(
                &root.at("run_by"),
                "may list at most 100 principals and roles",
            );
        }

        v.finish()?;
        // Every piece validated above is Some once `finish` reported no error.
        let (Some(role), Some(rate_control), Some(output)) = (role, rate_control, output) else {
            return Err(internal_error());
        };
        Ok(Self {
            name: spec.name.clone(),
            description: spec.description.clone(),
            version: spec.version,
            steps,
            accounts,
            regions,
            role,
            targets,
            rate_control,
            api_rate_limits,
            schedule,
            triggers,
            output,
            spec,
        })
    }
}

fn internal_error() -> FieldErrors {
    FieldErrors(vec![FieldError {
        path: String::new(),
        message: "internal error: a field failed validation without an error message".into(),
    }])
}

/// The largest campaign spec accepted, in bytes of YAML or JSON text.
pub const MAX_SPEC_BYTES: usize = 512 * 1024;
/// The most account-region pairs a run may have unless configured otherwise.
pub const DEFAULT_MAX_LOCATIONS: u64 = 200_000;
/// The deepest nesting of mappings and sequences in a spec; a real one needs 5.
pub const MAX_SPEC_DEPTH: usize = 16;
/// The most YAML nodes (scalars, mappings, sequences) in a spec.
pub const MAX_SPEC_NODES: usize = 100_000;

fn spec_error(message: String) -> FieldErrors {
    FieldErrors(vec![FieldError {
        path: String::new(),
        message,
    }])
}

/// Refuses YAML that could cost more to load than its size suggests, before
/// it is deserialized: any alias (`*name`: a 100 KB anchored string aliased
/// 2,000 times is 200 MB once expanded), nesting deeper than
/// [`MAX_SPEC_DEPTH`], more than [`MAX_SPEC_NODES`] nodes. One pass over the
/// event stream, nothing expanded.
fn check_yaml_bounds(text: &str) -> Result<(), FieldErrors> {
    use yaml_rust2::parser::{Event, Parser};
    let mut parser = Parser::new_from_str(text);
    let (mut depth, mut nodes) = (0usize, 0usize);
    loop {
        let (event, marker) = parser
            .next_token()
            .map_err(|error| spec_error(format!("is not valid YAML: {error}")))?;
        let at = format!("line {}, column {}", marker.line(), marker.col() + 1);
        match event {
            Event::StreamEnd => return Ok(()),
            Event::Alias(_) => {
                return Err(spec_error(format!(
                    "YAML aliases (`*name`) are not allowed in a campaign spec ({at}); write the value out"
                )));
            }
            Event::SequenceStart(..) | Event::MappingStart(..) => {
                depth += 1;
                nodes += 1;
                if depth > MAX_SPEC_DEPTH {
                    return Err(spec_error(format!(
                        "is nested deeper than {MAX_SPEC_DEPTH} levels ({at})"
                    )));
                }
            }
            Event::SequenceEnd | Event::MappingEnd => depth = depth.saturating_sub(1),
            Event::Scalar(..) => nodes += 1,
            Event::Nothing | Event::StreamStart | Event::DocumentStart | Event::DocumentEnd => {}
        }
        if nodes > MAX_SPEC_NODES {
            return Err(spec_error(format!(
                "has more than {MAX_SPEC_NODES} values ({at})"
            )));
        }
    }
}

/// Parses the document's shape; a shape error names its path (and line, for YAML).
/// The text is bounded before it is parsed: at most [`MAX_SPEC_BYTES`], and for
/// YAML no aliases and bounded nesting (see `check_yaml_bounds`).
pub fn parse_spec(text: &str, format: SpecFormat) -> Result<CampaignSpec, FieldErrors> {
    if text.len() > MAX_SPEC_BYTES {
        return Err(spec_error(format!(
            "is {} bytes; a campaign spec may have at most {MAX_SPEC_BYTES}",
            text.len()
        )));
    }
    let located = |path: String, message: String| {
        let path = if path == "." { String::new() } else { path };
        // serde_norway starts some messages with the parent's path; we print our own.
        let message = match message.split_once(": ") {
            Some((prefix, rest)) if !prefix.is_empty() && path.starts_with(prefix) => {
                rest.to_string()
            }
            _ => message,
        };
        FieldErrors(vec![FieldError { path, message }])
    };
    match format {
        SpecFormat::Yaml => {
            check_yaml_bounds(text)?;
            let deserializer = serde_norway::Deserializer::from_str(text);
            serde_path_to_error::deserialize(deserializer)
                .map_err(|error| located(error.path().to_string(), error.inner().to_string()))
        }
        SpecFormat::Json => {
            let mut deserializer = serde_json::Deserializer::from_str(text);
            let spec: CampaignSpec = serde_path_to_error::deserialize(&mut deserializer)
                .map_err(|error| located(error.path().to_string(), error.inner().to_string()))?;
            deserializer
                .end()
                .map_err(|error| located(String::new(), error.to_string()))?;
            Ok(spec)
        }
    }
}

fn regex(pattern: &str) -> Regex {
    // Patterns are literals of this file, covered by its tests.
    #[allow(clippy::unwrap_used)]
    Regex::new(pattern).unwrap()
}

static NAME: LazyLock<Regex> = LazyLock::new(|| regex(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"));
static SECRET_NAME: LazyLock<Regex> =
    LazyLock::new(|| regex(r"(?i)(password|passwd|secret|token|api_?key|private_?key|credential)"));
static SSM_REFERENCE: LazyLock<Regex> =
    LazyLock::new(|| regex(r"^\{\{\s*ssm(-secure)?:[A-Za-z0-9_.\-/]+\s*\}\}$"));
static RUN_BY: LazyLock<Regex> =
    LazyLock::new(|| regex(r"^(role:[a-z]{1,32}|[A-Za-z0-9_.@-]{1,128})$"));
static STEP_NAME: LazyLock<Regex> = LazyLock::new(|| regex(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"));
static DOCUMENT: LazyLock<Regex> = LazyLock::new(|| regex(r"^[A-Za-z0-9_\-.:/]{3,128}$"));
static PARAMETER: LazyLock<Regex> = LazyLock::new(|| regex(r"^[A-Za-z0-9_]{1,128}$"));
static ACCOUNT_ID: LazyLock<Regex> = LazyLock::new(|| regex(r"^[0-9]{12}$"));
static OU_ID: LazyLock<Regex> =
    LazyLock::new(|| regex(r"^(ou-[0-9a-z]{4,32}-[a-z0-9]{8,32}|r-[0-9a-z]{4,32})$"));
static REGION: LazyLock<Regex> =
    LazyLock::new(|| regex(r"^[a-z]{2}(-gov|-iso[a-z]?)?-[a-z]+-[0-9]{1,2}$"));
/// A 12-digit AWS account id.
pub fn is_account_id(text: &str) -> bool {
    ACCOUNT_ID.is_match(text)
}

/// An AWS region name (`us-east-1`, `us-gov-west-1`, …).
pub fn is_region(text: &str) -> bool {
    REGION.is_match(text)
}

/// A managed instance id (`i-…`, `mi-…`).
pub fn is_instance_id(text: &str) -> bool {
    INSTANCE_ID.is_match(text)
}

static ROLE_NAME: LazyLock<Regex> = LazyLock::new(|| regex(r"^[A-Za-z0-9_+=,.@-]{1,64}$"));
/// IAM's `[\w+=,.@:/-]` with ASCII word characters; the 2-1224 length is checked
/// apart (a bounded repetition that large compiles to a huge automaton).
static EXTERNAL_ID: LazyLock<Regex> = LazyLock::new(|| regex(r"^[A-Za-z0-9_+=,.@:/-]+$"));
static INSTANCE_ID: LazyLock<Regex> =
    LazyLock::new(|| regex(r"^(i-([0-9a-f]{8}|[0-9a-f]{17})|mi-[0-9a-f]{17})$"));
static S3_BUCKET: LazyLock<Regex> = LazyLock::new(|| regex(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$"));

fn check_name(name: &str) -> Result<(), String> {
    if NAME.is_match(name) {
        Ok(())
    } else {
        Err(format!(
            "must be 1-128 letters, digits, '_', '.' or '-', starting with a letter or digit, got {name:?}"
        ))
    }
}

fn validate_steps(v: &mut Validator, spec: &CampaignSpec, path: &FieldPath) -> Vec<Step> {
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
        if let Some(timeout) = timeout {
            steps.push(Step {
                name: step.name.clone(),
                document: step.document.clone(),
                parameters,
                timeout,
            });
        }
    }
    steps
}

/// AWS-RunPatchBaseline's own parameter rules, so a typo fails before Patch Tuesday.
fn check_patch_baseline_parameters(
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

fn validate_accounts(v: &mut Validator, spec: &CampaignSpec, path: &FieldPath) -> AccountSelection {
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

fn validate_account_ids(v: &mut Validator, ids: &[Scalar], path: &FieldPath) -> Vec<String> {
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

fn validate_regions(v: &mut Validator, regions: &[String], path: &FieldPath) -> Vec<String> {
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

fn validate_role(
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

fn validate_targets(v: &mut Validator, spec: &CampaignSpec, path: &FieldPath) -> TargetSelection {
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

fn validate_tags(
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

fn validate_rate_control(
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

fn validate_api_rate_limits(
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

/// `90`, `"90s"`, `"30m"`, `"2h"`, `"1d"`, `"1h 30m"`: a whole number of seconds
/// within `range`.
pub fn parse_duration_in(value: &Scalar, range: (Duration, Duration)) -> Result<Duration, String> {
    let (low, high) = range;
    let bounds = || {
        format!(
            "must be between {} and {}",
            short_duration(low),
            short_duration(high)
        )
    };
    let duration = if value.was_number {
        value
            .text
            .parse::<u64>()
            .map(Duration::from_secs)
            .map_err(|_| {
                format!(
                    "{} (a whole number of seconds or like \"30m\"), got {}",
                    bounds(),
                    value.text
                )
            })?
    } else {
        humantime::parse_duration(value.text.trim()).map_err(|_| {
            format!(
                "{} (a whole number of seconds or like \"30m\"), got {:?}",
                bounds(),
                value.text
            )
        })?
    };
    if duration.subsec_nanos() != 0 {
        return Err(format!(
            "must be a whole number of seconds, got {:?}",
            value.text
        ));
    }
    if duration < low || duration > high {
        return Err(bounds());
    }
    Ok(duration)
}

/// `30s`, `15m`, `1h`, `30d`: the largest whole unit, as people write limits.
pub fn short_duration(duration: Duration) -> String {
    let seconds = duration.as_secs();
    match seconds {
        0 => "0s".to_string(),
        s if s % 86_400 == 0 => format!("{}d", s / 86_400),
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

pub fn parse_output(output: Option<&str>) -> Result<OutputLocation, String> {
    let Some(output) = output else {
        return Ok(OutputLocation::Local(PathBuf::from(
            DEFAULT_OUTPUT_DIRECTORY,
        )));
    };
    if let Some(rest) = output.strip_prefix("s3://") {
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if !S3_BUCKET.is_match(bucket) || bucket.contains("..") {
            return Err(format!(
                "S3 bucket must be 3-63 lowercase letters, digits, '.' or '-', starting and ending with a letter or digit, got {bucket:?}"
            ));
        }
        return Ok(OutputLocation::S3 {
            bucket: bucket.to_string(),
            prefix: prefix.trim_end_matches('/').to_string(),
        });
    }
    if output.contains("://") {
        return Err(format!(
            "must be a local directory or s3://bucket/prefix, got {output:?}"
        ));
    }
    if output.trim().is_empty() {
        return Err("must be a local directory or s3://bucket/prefix, got an empty string".into());
    }
    Ok(OutputLocation::Local(PathBuf::from(output)))
}
