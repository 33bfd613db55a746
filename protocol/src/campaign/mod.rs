//! A validated campaign: what to run, where, how fast and safely, and when.
//!
//! Raw text → [`CampaignSpec`] (shape only) → [`Campaign::build_and_validate`]
//! (every rule, every problem reported with its field path) → typed [`Campaign`].
//!
//! Here the order of the checks; [`model`] the typed campaign; [`parse`] the bounded
//! parsing of text, [`rules`] each part's rules, [`patterns`] the identifier
//! patterns, [`values`] durations and output locations.

mod model;
mod parse;
mod patterns;
mod rollout;
mod rules;
mod values;

use std::collections::BTreeSet;
use std::time::Duration;

use crate::schedule::{Schedule, ScheduleExpression, parse_timezone};
use crate::spec::CampaignSpec;
use crate::validation::{FieldError, FieldErrors, FieldPath, Validator};

pub use self::model::*;
pub use self::parse::{MAX_SPEC_BYTES, MAX_SPEC_DEPTH, MAX_SPEC_NODES, parse_spec};
use self::patterns::{RUN_BY, check_name};
pub use self::patterns::{is_account_id, is_instance_id, is_region};
pub use self::rollout::{HealthGate, Rollout};
use self::rules::{
    validate_accounts, validate_api_rate_limits, validate_rate_control, validate_regions,
    validate_role, validate_steps, validate_targets,
};
pub use self::values::{parse_duration_in, parse_output, short_duration};

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

const WINDOW_DURATION_RANGE: (Duration, Duration) =
    (Duration::from_secs(10), Duration::from_secs(7 * 86_400));
const MAX_WINDOWS: usize = 20;

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

    /// [`Campaign::build_and_validate`] under a location limit.
    pub fn build_and_validate_within(
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
        for (index, name) in spec.overridable_parameters.iter().enumerate() {
            if !spec
                .steps
                .iter()
                .any(|step| step.parameters.contains_key(name))
            {
                v.error(
                    &root.at("overridable_parameters").index(index),
                    format!("no step has a parameter {name:?} to override"),
                );
            }
        }
        if spec.overridable_parameters.len() > 32 {
            v.error(
                &root.at("overridable_parameters"),
                "may list at most 32 parameters",
            );
        }
        if spec.run_by.len() > 100 {
            v.error(
                &root.at("run_by"),
                "may list at most 100 principals and roles",
            );
        }

        let output_logging = spec.output_logging.as_ref().and_then(|logging| {
            values::validate_output_logging(&mut v, logging, &root.at("output_logging"))
        });
        if spec.windows.len() > MAX_WINDOWS {
            v.error(
                &root.at("windows"),
                format!("may list at most {MAX_WINDOWS} windows"),
            );
        }
        let windows: Vec<MaintenanceWindow> = spec
            .windows
            .iter()
            .enumerate()
            .filter_map(|(index, window)| {
                let path = root.at("windows").index(index);
                let timezone = window
                    .timezone
                    .as_deref()
                    .or_else(|| spec.schedule.as_ref().and_then(|s| s.timezone.as_deref()));
                let schedule = v.check(
                    &path.at("schedule"),
                    Schedule::parse(&window.schedule, None).map(|s| s.expression),
                );
                let timezone = v.check(&path.at("timezone"), parse_timezone(timezone));
                let duration = v.check(
                    &path.at("duration"),
                    parse_duration_in(&window.duration, WINDOW_DURATION_RANGE),
                );
                if let Some(name) = &window.name
                    && (name.is_empty() || name.chars().count() > 256)
                {
                    v.error(
                        &path.at("name"),
                        "a window's name is a tag value: 1-256 characters",
                    );
                }
                Some(MaintenanceWindow {
                    name: window.name.clone(),
                    schedule: Schedule {
                        expression: schedule?,
                        timezone: timezone?,
                    },
                    duration: duration?,
                })
            })
            .collect();
        validate_window_tag(&mut v, &spec, &root);
        if spec.notify.len() > MAX_WEBHOOKS {
            v.error(
                &root.at("notify"),
                format!("may list at most {MAX_WEBHOOKS} webhooks"),
            );
        }
        for (index, notify) in spec.notify.iter().enumerate() {
            let path = root.at("notify").index(index);
            if notify.on.is_empty() {
                v.error(&path.at("on"), "must list at least one event (halted, completed, cancelled, paused, gate_failed, awaiting_approval)");
            }
            if notify.on.contains(&crate::spec::NotifyEvent::KillSwitch) {
                v.error(&path.at("on"), "kill_switch goes to the deployment's default webhooks (the scheduler's --notify-webhook), not a campaign's");
            }
            v.check(&path.at("webhook"), check_webhook(&notify.webhook));
        }
        let rollout = spec.rollout.as_ref().and_then(|rollout| {
            rollout::validate_rollout(
                &mut v,
                rollout,
                rate_control.map(|rate| rate.max_errors),
                &root.at("rollout"),
            )
        });

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
            rollout,
            output_logging,
            notify: spec.notify.clone(),
            windows,
            window_tag: spec.window_tag.clone(),
            spec,
        })
    }
}

/// Per-target windows need few named windows (discovery asks SSM once per
/// window for each page), every targeted location at once and no waves: a
/// location or a wave would otherwise wait for its slowest window.
const MAX_TARGET_WINDOWS: usize = 10;

fn validate_window_tag(v: &mut Validator, spec: &CampaignSpec, root: &FieldPath) {
    let Some(tag) = &spec.window_tag else {
        return;
    };
    let path = root.at("window_tag");
    let length = tag.chars().count();
    if length == 0 || length > 128 {
        v.error(&path, "tag keys must be 1-128 characters");
    } else if tag.starts_with("tag:") {
        v.error(&path, "write the tag key without the \"tag:\" prefix");
    }
    if spec.windows.is_empty() {
        v.error(
            &path,
            "needs windows: each instance is sent in the window its tag names",
        );
    }
    if spec.windows.len() > MAX_TARGET_WINDOWS {
        v.error(
            &root.at("windows"),
            format!("with window_tag, may list at most {MAX_TARGET_WINDOWS} windows"),
        );
    }
    let mut seen = std::collections::BTreeSet::new();
    for (index, window) in spec.windows.iter().enumerate() {
        let name_path = root.at("windows").index(index).at("name");
        match &window.name {
            None => v.error(
                &name_path,
                format!("is required with window_tag: the value of tag {tag:?} that puts an instance in this window"),
            ),
            Some(name) if !seen.insert(name.as_str()) => {
                v.error(&name_path, format!("{name:?} names two windows"));
            }
            Some(_) => {}
        }
    }
    if spec.rollout.is_some() {
        v.error(
            &path,
            "cannot be combined with rollout: a wave would wait for its targets' windows (use the campaign's windows for every target, or run one campaign per window)",
        );
    }
    let concurrency = spec
        .rate_control
        .location_concurrency
        .as_ref()
        .map_or("1 (the default)", |value| value.text.trim());
    if concurrency != "100%" {
        v.error(
            &root.at("rate_control").at("location_concurrency"),
            format!("must be 100% with window_tag, got {concurrency}: every location is worked on at once, as one waiting for its instances' windows would hold its place"),
        );
    }
}

fn internal_error() -> FieldErrors {
    FieldErrors(vec![FieldError {
        path: String::new(),
        message: "internal error: a field failed validation without an error message".into(),
    }])
}

const MAX_WEBHOOKS: usize = 10;

/// A webhook URL: `https://`, or `http://` to loopback only (a test
/// receiver, a local relay), without credentials in it, bounded.
pub fn check_webhook(url: &str) -> Result<(), String> {
    if url.len() > 2048 || url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("must be a URL of at most 2048 characters, without spaces".into());
    }
    let (secure, rest) = match (url.strip_prefix("https://"), url.strip_prefix("http://")) {
        (Some(rest), _) => (true, rest),
        (None, Some(rest)) => (false, rest),
        _ => return Err(format!("must start with https://, got {url:?}")),
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if authority.is_empty() || authority.contains('@') {
        return Err("must name a host, without user:password@".into());
    }
    let host = authority
        .rsplit_once(':')
        .map_or(authority, |(host, _)| host);
    if !secure && !matches!(host, "127.0.0.1" | "localhost" | "[::1]") {
        return Err(format!(
            "must be https:// (plain http only to 127.0.0.1 or localhost), got {url:?}"
        ));
    }
    Ok(())
}

/// Checks a campaign name (as a spec's `name` must be) given elsewhere.
pub fn check_campaign_name(name: &str) -> Result<(), String> {
    check_name(name)
}

/// The most account-region pairs a run may have unless configured otherwise.
pub const DEFAULT_MAX_LOCATIONS: u64 = 200_000;
