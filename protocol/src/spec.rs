//! The campaign spec as written: YAML or JSON, every field as the operator typed it.
//!
//! These types only give the document its shape (`deny_unknown_fields`, required
//! fields, lists versus maps). Values stay loose (`Scalar`, `String`) so that
//! [`crate::campaign::Campaign::build_and_validate`] can check them all and report
//! every problem with its path, instead of stopping at the first. The spec is also
//! what the scheduler stores, so it serializes back to the same shape.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize, Serializer};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CampaignSpec {
    /// Letters, digits, `_ . -`; names the campaign in the API, keys and reports.
    /// Required fields default to empty here so that validation can report
    /// every problem at once (`is required`), not just the first missing field.
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// The operator's own revision number of this spec (the store keeps its own too).
    #[serde(default = "default_version")]
    pub version: u32,
    /// Run in order; a step runs only on targets that succeeded the previous one.
    #[serde(default)]
    pub steps: Vec<StepSpec>,
    #[serde(default)]
    pub accounts: AccountsSpec,
    #[serde(default)]
    pub regions: Vec<String>,
    #[serde(default)]
    pub role: RoleSpec,
    #[serde(default)]
    pub targets: TargetsSpec,
    #[serde(default)]
    pub rate_control: RateControlSpec,
    #[serde(default)]
    pub api_rate_limits: ApiRateLimitsSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<ScheduleSpec>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub triggers: Vec<TriggerSpec>,
    /// A local directory or `s3://bucket/prefix`; `flotilla-results` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    /// Who may start its runs through the API: principal names and
    /// `role:<role>` entries; anyone allowed to start runs when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub run_by: Vec<String>,
    /// Where SSM keeps every instance's full command output (S3, CloudWatch Logs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_logging: Option<OutputLoggingSpec>,
    /// Go a little at a time: waves, bake time, health gates, approval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutSpec>,
    /// Webhooks told when a run halts, completes, pauses, fails a gate, ….
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notify: Vec<NotifySpec>,
    /// Maintenance windows: commands are sent only while one is open.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub windows: Vec<WindowSpec>,
    /// Per-target windows: the instance tag whose value names the window
    /// (`windows[].name`) each instance is sent in. Every window then needs
    /// a name; an instance without the tag, or naming no window, is not sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_tag: Option<String>,
    /// Step parameters a run may be started with other values of
    /// (`flotilla run start --param KEY=VALUE`); none when empty. A changed
    /// value of a campaign under the two-person rule needs a new approved
    /// version all the same.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub overridable_parameters: Vec<String>,
}

/// A maintenance window: it opens at each occurrence of `schedule` and stays
/// open for `duration`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WindowSpec {
    /// What an instance's `window_tag` tag says to be sent in this window
    /// (a tag value); optional without `window_tag`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `cron(…)` or `rate(…)`, as a campaign's schedule.
    pub schedule: String,
    /// `4h`, `90m`; 10s to 7d.
    pub duration: Scalar,
    /// IANA name the cron fields are read in; the campaign's schedule's
    /// timezone, else UTC, when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
}

/// One webhook and the run events it is told about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifySpec {
    pub on: Vec<NotifyEvent>,
    /// `https://…` (`http://` only to 127.0.0.1 or localhost).
    pub webhook: String,
    #[serde(default)]
    pub format: NotifyFormat,
}

/// What happened to a run (or the deployment) that a webhook may be told.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NotifyEvent {
    Halted,
    Completed,
    Cancelled,
    Paused,
    GateFailed,
    AwaitingApproval,
    /// The kill switch was engaged (the deployment's default webhooks).
    KillSwitch,
}

impl NotifyEvent {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Halted => "halted",
            Self::Completed => "completed",
            Self::Cancelled => "cancelled",
            Self::Paused => "paused",
            Self::GateFailed => "gate_failed",
            Self::AwaitingApproval => "awaiting_approval",
            Self::KillSwitch => "kill_switch",
        }
    }
}

/// A Slack-compatible message (`text`), or a JSON body signed with an HMAC header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NotifyFormat {
    Slack,
    #[default]
    Json,
}

/// SendCommand's output settings, as written.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputLoggingSpec {
    /// `s3://bucket/prefix`: OutputS3BucketName and OutputS3KeyPrefix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3: Option<String>,
    /// CloudWatchOutputConfig's log group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cloudwatch_log_group: Option<String>,
}

/// Waves of a run, as written: cumulative counts or percentages of the run's
/// targets, with a bake time and health gates between them.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutSpec {
    /// Cumulative: `[1, 5, "10%", "100%"]`; a last wave of 100% is implied.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub waves: Vec<Scalar>,
    /// Accounts whose targets are the first wave; the waves then count the rest.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub canary_accounts: Vec<Scalar>,
    /// How long nothing is sent after a wave before its gates are checked; 0s when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bake: Option<Scalar>,
    /// Failed targets a wave may have, a count or a percentage of the wave; 0 when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_wave_errors: Option<Scalar>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gates: Vec<GateSpec>,
    /// Wait for `flotilla run approve` after the gates of every wave pass.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub approve: bool,
    /// What a failed gate does to the run: `halt` (when absent) or `pause`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_gate_failure: Option<GateFailure>,
}

/// One health gate: a PromQL query that must return nothing, or no firing
/// Alertmanager alert matching a label set.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GateSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prometheus_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alertmanager_url: Option<String>,
    /// Label name → exact value; alerts with all of them fail the gate.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub matchers: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum GateFailure {
    #[default]
    Halt,
    Pause,
}

fn default_version() -> u32 {
    1
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepSpec {
    #[serde(default)]
    pub name: String,
    /// An SSM document name or ARN, e.g. `AWS-RunPatchBaseline`.
    #[serde(default)]
    pub document: String,
    #[serde(default)]
    pub parameters: BTreeMap<String, StringOrList>,
    /// `90s`, `30m`, `2h` or seconds; 30s to 30d; 1h when absent (SSM's default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Scalar>,
    /// The document's version SendCommand runs: `$DEFAULT`, `$LATEST` or a
    /// version number; SSM's default version when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub document_version: Option<Scalar>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccountsSpec {
    /// 12-digit account ids. Quote them in YAML so leading zeros survive.
    #[serde(default)]
    pub ids: Vec<Scalar>,
    /// Organizations OU ids (`ou-…`) or a root id (`r-…`), resolved at run start.
    #[serde(default)]
    pub organizational_units: Vec<String>,
    /// Also take accounts of OUs nested below the listed ones.
    #[serde(default)]
    pub include_child_ous: bool,
    #[serde(default)]
    pub exclude_accounts: Vec<Scalar>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleSpec {
    /// The role assumed in every target account; `FlotillaExecutionRole` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_id: Option<String>,
    /// 900s to 3600s; 3600s when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_duration: Option<Scalar>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetsSpec {
    /// Every managed instance of each location.
    #[serde(default)]
    pub all: bool,
    #[serde(default)]
    pub instance_ids: Vec<String>,
    /// Tag key → accepted values; keys are ANDed, values of one key ORed.
    #[serde(default)]
    pub tags: BTreeMap<String, StringOrList>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<PlatformSpec>,
    /// Only instances whose SSM agent is Online; true when absent.
    #[serde(default = "default_true")]
    pub online_only: bool,
}

fn default_true() -> bool {
    true
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum PlatformSpec {
    Linux,
    Windows,
    MacOS,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateControlSpec {
    /// Locations (account-region pairs) worked on at once; 1 when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location_concurrency: Option<Scalar>,
    /// Locations that may fail as a whole before the run halts; 0 when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location_max_errors: Option<Scalar>,
    /// Targets in flight across the run; 50 when absent (SSM's default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrency: Option<Scalar>,
    /// Failed targets tolerated before the run halts; 0 when absent (SSM's default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_errors: Option<Scalar>,
}

/// Requests per second. Per account-region for SSM calls, per account for AssumeRole.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiRateLimitsSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub send_command: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub list_command_invocations: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub describe_instance_information: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub describe_instance_patch_states: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assume_role: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleSpec {
    /// `cron(…)` or `rate(…)` in EventBridge syntax.
    pub expression: String,
    /// IANA name; cron fields are read as wall-clock time there. UTC when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
    /// What a scheduler does on recovery with an occurrence it was down for.
    #[serde(default)]
    pub on_missed: MissedOccurrence,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MissedOccurrence {
    /// Run the latest missed occurrence once (never one per missed occurrence).
    #[default]
    RunOnce,
    Skip,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TriggerSpec {
    pub event: TriggerEvent,
    /// Wait this long after the event before running (e.g. for the SSM agent to
    /// register after boot); 0s to 1h, none when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<Scalar>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TriggerEvent {
    /// EC2 Instance State-change Notification with state `running`.
    Ec2InstanceRunning,
    /// An instance registered with SSM (a new managed instance).
    SsmInstanceRegistered,
}

/// A YAML/JSON scalar kept as text, remembering whether it was written as a number.
///
/// `max_errors: 0` and `max_errors: "10%"` both arrive here; so does an account id
/// that YAML read as a number (and that may have lost its leading zeros).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scalar {
    pub text: String,
    pub was_number: bool,
}

impl Scalar {
    pub fn text(text: impl Into<String>) -> Self {
        Self {
            text: text.into(),
            was_number: false,
        }
    }
}

impl fmt::Display for Scalar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl Serialize for Scalar {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.text.parse::<u64>() {
            Ok(number) if self.was_number => serializer.serialize_u64(number),
            _ => serializer.serialize_str(&self.text),
        }
    }
}

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ScalarVisitor)
    }
}

struct ScalarVisitor;

impl<'de> Visitor<'de> for ScalarVisitor {
    type Value = Scalar;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string or a number")
    }

    fn visit_str<E: de::Error>(self, value: &str) -> Result<Scalar, E> {
        Ok(Scalar::text(value))
    }

    fn visit_bool<E: de::Error>(self, value: bool) -> Result<Scalar, E> {
        Ok(Scalar::text(value.to_string()))
    }

    fn visit_i64<E: de::Error>(self, value: i64) -> Result<Scalar, E> {
        Ok(Scalar {
            text: value.to_string(),
            was_number: true,
        })
    }

    fn visit_u64<E: de::Error>(self, value: u64) -> Result<Scalar, E> {
        Ok(Scalar {
            text: value.to_string(),
            was_number: true,
        })
    }

    fn visit_f64<E: de::Error>(self, value: f64) -> Result<Scalar, E> {
        Ok(Scalar {
            text: value.to_string(),
            was_number: true,
        })
    }
}

/// A document parameter or tag filter: one value or a list of values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StringOrList(pub Vec<Scalar>);

impl Serialize for StringOrList {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.0.as_slice() {
            [single] => single.serialize(serializer),
            many => many.serialize(serializer),
        }
    }
}

impl<'de> Deserialize<'de> for StringOrList {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(StringOrListVisitor)
    }
}

struct StringOrListVisitor;

impl<'de> Visitor<'de> for StringOrListVisitor {
    type Value = StringOrList;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string or a list of strings")
    }

    fn visit_str<E: de::Error>(self, value: &str) -> Result<StringOrList, E> {
        ScalarVisitor
            .visit_str(value)
            .map(|s| StringOrList(vec![s]))
    }

    fn visit_bool<E: de::Error>(self, value: bool) -> Result<StringOrList, E> {
        ScalarVisitor
            .visit_bool(value)
            .map(|s| StringOrList(vec![s]))
    }

    fn visit_i64<E: de::Error>(self, value: i64) -> Result<StringOrList, E> {
        ScalarVisitor
            .visit_i64(value)
            .map(|s| StringOrList(vec![s]))
    }

    fn visit_u64<E: de::Error>(self, value: u64) -> Result<StringOrList, E> {
        ScalarVisitor
            .visit_u64(value)
            .map(|s| StringOrList(vec![s]))
    }

    fn visit_f64<E: de::Error>(self, value: f64) -> Result<StringOrList, E> {
        ScalarVisitor
            .visit_f64(value)
            .map(|s| StringOrList(vec![s]))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<StringOrList, A::Error> {
        let mut values = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
        while let Some(value) = seq.next_element::<Scalar>()? {
            values.push(value);
        }
        Ok(StringOrList(values))
    }
}
