//! The typed campaign that validation builds: every value checked, every
//! default applied, durations and schedules parsed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{PATCH_BASELINE_DOCUMENT, Rollout};
use crate::rate_control::RateValue;
use crate::schedule::Schedule;
use crate::spec::{CampaignSpec, MissedOccurrence, TriggerEvent};

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
    /// Waves, bake time and health gates; every target at once when absent.
    pub rollout: Option<Rollout>,
    /// Where SSM keeps every command's full output; nowhere when absent.
    pub output_logging: Option<OutputLogging>,
    /// Webhooks told about the campaign's runs.
    pub notify: Vec<crate::spec::NotifySpec>,
    /// Commands are sent only inside one of these; any time when empty.
    pub windows: Vec<MaintenanceWindow>,
    /// Per-target windows: the tag whose value names each instance's window
    /// (every window is then named); the campaign's windows for every
    /// instance when absent.
    pub window_tag: Option<String>,
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
    /// `$DEFAULT`, `$LATEST` or a version number, passed to SendCommand as
    /// DocumentVersion; `None`: the document's default version.
    pub document_version: Option<String>,
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
    /// Those of these instances that carry the tags: a tag selection
    /// narrowed by an event ([`TargetSelection::narrowed_to`]), never written
    /// in a spec.
    TaggedInstances {
        tags: BTreeMap<String, Vec<String>>,
        instance_ids: Vec<String>,
    },
}

impl TargetSelection {
    /// The selection narrowed to one instance, keeping every other filter
    /// (tags, platform, online): an event may narrow a campaign, never widen
    /// it. `None` when the instance is certainly outside the selection (an
    /// id list without it); whether it carries the tags, runs that platform
    /// and is online is SSM's to say when the run discovers.
    pub fn narrowed_to(&self, instance_id: &str) -> Option<Self> {
        let only = vec![instance_id.to_string()];
        let selector = match &self.selector {
            TargetSelector::All => TargetSelector::InstanceIds(only),
            TargetSelector::InstanceIds(ids) if ids.iter().any(|id| id == instance_id) => {
                TargetSelector::InstanceIds(only)
            }
            TargetSelector::InstanceIds(_) => return None,
            TargetSelector::Tags(tags) => TargetSelector::TaggedInstances {
                tags: tags.clone(),
                instance_ids: only,
            },
            TargetSelector::TaggedInstances { tags, instance_ids } => {
                if !instance_ids.iter().any(|id| id == instance_id) {
                    return None;
                }
                TargetSelector::TaggedInstances {
                    tags: tags.clone(),
                    instance_ids: only,
                }
            }
        };
        Some(Self {
            selector,
            platform: self.platform,
            online_only: self.online_only,
        })
    }

    /// The selection narrowed to `ids`, keeping every other filter: a run
    /// limited at start (`--limit-instances`) narrows, never widens. `Err`
    /// names the first id certainly outside the selection (an id list
    /// without it).
    pub fn narrowed_to_instances(&self, ids: &[String]) -> Result<Self, String> {
        let only = ids.to_vec();
        let outside = |listed: &[String]| ids.iter().find(|id| !listed.contains(id)).cloned();
        let selector = match &self.selector {
            TargetSelector::All => TargetSelector::InstanceIds(only),
            TargetSelector::InstanceIds(listed) => match outside(listed) {
                Some(id) => return Err(id),
                None => TargetSelector::InstanceIds(only),
            },
            TargetSelector::Tags(tags) => TargetSelector::TaggedInstances {
                tags: tags.clone(),
                instance_ids: only,
            },
            TargetSelector::TaggedInstances { tags, instance_ids } => match outside(instance_ids) {
                Some(id) => return Err(id),
                None => TargetSelector::TaggedInstances {
                    tags: tags.clone(),
                    instance_ids: only,
                },
            },
        };
        Ok(Self {
            selector,
            platform: self.platform,
            online_only: self.online_only,
        })
    }

    /// The instance ids the selection is limited to, if it is.
    pub fn instance_ids(&self) -> Option<&[String]> {
        match &self.selector {
            TargetSelector::InstanceIds(ids)
            | TargetSelector::TaggedInstances {
                instance_ids: ids, ..
            } => Some(ids),
            TargetSelector::All | TargetSelector::Tags(_) => None,
        }
    }

    /// Whether a discovered target can be in this selection, as far as the
    /// scheduler can tell without SSM (ids, platform, online); the reason
    /// when it cannot.
    pub fn admits(
        &self,
        instance_id: &str,
        platform: Option<Platform>,
        online: bool,
    ) -> Result<(), String> {
        if let Some(ids) = self.instance_ids()
            && !ids.iter().any(|id| id == instance_id)
        {
            return Err(format!("{instance_id} is not one of the run's instances"));
        }
        if let Some(wanted) = self.platform
            && platform != Some(wanted)
        {
            return Err(format!(
                "{instance_id} runs {}, the campaign selects {}",
                platform.map_or("an unknown platform", Platform::as_str),
                wanted.as_str()
            ));
        }
        if self.online_only && !online {
            return Err(format!(
                "{instance_id} is not online and the campaign selects online instances only"
            ));
        }
        Ok(())
    }
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

/// SendCommand's OutputS3BucketName / OutputS3KeyPrefix and
/// CloudWatchOutputConfig: SSM writes every instance's full stdout and
/// stderr there (results keep an excerpt).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct OutputLogging {
    pub s3_bucket: Option<String>,
    pub s3_key_prefix: Option<String>,
    pub cloudwatch_log_group: Option<String>,
}

impl OutputLogging {
    /// Where one instance's output of one command is: `s3://bucket/prefix/command/instance/`.
    pub fn s3_location(&self, command_id: &str, instance_id: &str) -> Option<String> {
        let bucket = self.s3_bucket.as_ref()?;
        let prefix = self.s3_key_prefix.as_deref().unwrap_or_default();
        let prefix = if prefix.is_empty() {
            String::new()
        } else {
            format!("{prefix}/")
        };
        Some(format!("s3://{bucket}/{prefix}{command_id}/{instance_id}/"))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum OutputLocation {
    Local(PathBuf),
    S3 { bucket: String, prefix: String },
}

/// A maintenance window: open from each occurrence of `schedule` for `duration`.
#[derive(Debug, Clone)]
pub struct MaintenanceWindow {
    /// The `window_tag` value that puts an instance in this window.
    pub name: Option<String>,
    pub schedule: Schedule,
    pub duration: Duration,
}

/// Where maintenance windows stand at an instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowState {
    /// Open until then (the latest end of the windows open now).
    Open {
        until: chrono::DateTime<chrono::Utc>,
    },
    /// Closed; the next opens then (None: no occurrence ahead).
    Closed {
        opens: Option<chrono::DateTime<chrono::Utc>>,
    },
}

impl WindowState {
    /// When this changes: the end of an open window, the opening of a closed one.
    pub fn changes_at(self) -> Option<chrono::DateTime<chrono::Utc>> {
        match self {
            Self::Open { until } => Some(until),
            Self::Closed { opens } => opens,
        }
    }
}

impl MaintenanceWindow {
    /// The end of the window that admits no new batch of per-target
    /// windows: a tenth of it, at most a minute.
    pub fn cutoff(&self) -> Duration {
        (self.duration / 10).min(Duration::from_secs(60))
    }

    /// Where this window stands at `now`: open on [occurrence, occurrence +
    /// duration) of each occurrence (overlapping occurrences: until the
    /// latest's end). One look back and one ahead, however many occurrences
    /// a long window spans.
    pub fn state_at(&self, now: chrono::DateTime<chrono::Utc>) -> WindowState {
        let length = chrono::Duration::from_std(self.duration).unwrap_or(chrono::Duration::zero());
        if let Some(latest) = self.schedule.latest_fire_time(now)
            && latest + length > now
        {
            return WindowState::Open {
                until: latest + length,
            };
        }
        WindowState::Closed {
            opens: self.schedule.next_fire_time(now),
        }
    }
}

impl Campaign {
    /// Where the campaign's windows stand at `now`, together: open while
    /// any is (until the latest end of those open), else closed until the
    /// soonest opens. None without windows (it may send any time).
    pub fn window_at(&self, now: chrono::DateTime<chrono::Utc>) -> Option<WindowState> {
        if self.windows.is_empty() {
            return None;
        }
        let mut until: Option<chrono::DateTime<chrono::Utc>> = None;
        let mut opens: Option<chrono::DateTime<chrono::Utc>> = None;
        for window in &self.windows {
            match window.state_at(now) {
                WindowState::Open { until: end } => {
                    until = Some(until.map_or(end, |latest| latest.max(end)));
                }
                WindowState::Closed {
                    opens: Some(occurrence),
                } => opens = Some(opens.map_or(occurrence, |soonest| soonest.min(occurrence))),
                WindowState::Closed { opens: None } => {}
            }
        }
        Some(match until {
            Some(until) => WindowState::Open { until },
            None => WindowState::Closed { opens },
        })
    }

    /// The next time any one window opens or closes (per-target windows:
    /// when the scheduler admits another window's batches or parks them).
    pub fn next_window_change(
        &self,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Option<chrono::DateTime<chrono::Utc>> {
        self.windows
            .iter()
            .filter_map(|window| window.state_at(now).changes_at())
            .min()
    }

    /// Per-target windows: for each window, in order, whether its batches
    /// may be admitted at `now` (empty without `window_tag`): while it is
    /// open and not about to close — the last [`MaintenanceWindow::cutoff`]
    /// of it admits nothing new, as an SSM maintenance window's cutoff, so a
    /// batch rarely reaches its worker after the window closed — and, for a
    /// window that never opens again, at once (its worker reports its
    /// instances not sent, and the run can end).
    pub fn open_target_windows(&self, now: chrono::DateTime<chrono::Utc>) -> Vec<bool> {
        if self.window_tag.is_none() {
            return Vec::new();
        }
        self.windows
            .iter()
            .map(|window| match window.state_at(now) {
                WindowState::Open { until } => {
                    until - now
                        >= chrono::Duration::from_std(window.cutoff())
                            .unwrap_or(chrono::Duration::zero())
                }
                WindowState::Closed { opens } => opens.is_none(),
            })
            .collect()
    }

    /// Per-target windows: the tag and the windows' names, as discovery
    /// needs them; None without `window_tag`.
    pub fn window_tag(&self) -> Option<crate::job::WindowTag> {
        Some(crate::job::WindowTag {
            tag: self.window_tag.clone()?,
            names: self
                .windows
                .iter()
                .map(|window| window.name.clone().unwrap_or_default())
                .collect(),
        })
    }

    /// Per-target windows: what a batch of instances in window `index`
    /// (0-based; None: in none) carries to the worker; None without
    /// `window_tag`.
    pub fn target_window(&self, index: Option<usize>) -> Option<crate::job::TargetWindow> {
        let tag = self.window_tag.clone()?;
        Some(match index.and_then(|index| self.windows.get(index)) {
            Some(window) => crate::job::TargetWindow::Named {
                tag,
                name: window.name.clone().unwrap_or_default(),
                schedule: window.schedule.expression.to_string(),
                timezone: window.schedule.timezone.name().to_string(),
                duration_ms: u64::try_from(window.duration.as_millis()).unwrap_or(u64::MAX),
            },
            None => crate::job::TargetWindow::Untagged {
                tag,
                names: self
                    .windows
                    .iter()
                    .filter_map(|window| window.name.clone())
                    .collect(),
            },
        })
    }

    /// Every window a batch of this campaign may carry (the run's contract).
    pub fn target_windows(&self) -> Vec<crate::job::TargetWindow> {
        if self.window_tag.is_none() {
            return Vec::new();
        }
        (0..self.windows.len())
            .map(Some)
            .chain([None])
            .filter_map(|index| self.target_window(index))
            .collect()
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn selection(selector: TargetSelector) -> TargetSelection {
        TargetSelection {
            selector,
            platform: Some(Platform::Linux),
            online_only: true,
        }
    }

    #[test]
    fn an_event_narrows_a_selection_and_keeps_every_filter() {
        let staging = BTreeMap::from([("Environment".to_string(), vec!["staging".to_string()])]);
        let narrowed = selection(TargetSelector::Tags(staging.clone()))
            .narrowed_to("i-0123456789abcdef0")
            .unwrap();
        assert_eq!(
            narrowed,
            selection(TargetSelector::TaggedInstances {
                tags: staging,
                instance_ids: vec!["i-0123456789abcdef0".into()],
            })
        );
        let all = selection(TargetSelector::All).narrowed_to("i-1").unwrap();
        assert_eq!(
            all,
            selection(TargetSelector::InstanceIds(vec!["i-1".into()]))
        );
        let listed = selection(TargetSelector::InstanceIds(vec![
            "i-1".into(),
            "i-2".into(),
        ]));
        assert_eq!(
            listed.narrowed_to("i-2").unwrap().instance_ids(),
            Some(&["i-2".to_string()][..])
        );
        assert_eq!(listed.narrowed_to("i-3"), None, "never widened");
    }

    #[test]
    fn a_selection_admits_only_what_it_can_select() {
        let listed = selection(TargetSelector::InstanceIds(vec!["i-1".into()]));
        assert!(listed.admits("i-1", Some(Platform::Linux), true).is_ok());
        assert!(listed.admits("i-2", Some(Platform::Linux), true).is_err());
        assert!(listed.admits("i-1", Some(Platform::Windows), true).is_err());
        assert!(listed.admits("i-1", None, true).is_err());
        assert!(listed.admits("i-1", Some(Platform::Linux), false).is_err());
    }

    /// The window's state by walking every occurrence of the last
    /// `duration`: what `state_at` must agree with.
    fn walked(window: &MaintenanceWindow, now: chrono::DateTime<chrono::Utc>) -> WindowState {
        let length = chrono::Duration::from_std(window.duration).unwrap();
        let mut until = None;
        let mut cursor = now - length;
        while let Some(occurrence) = window.schedule.next_fire_time(cursor) {
            if occurrence > now {
                return match until {
                    Some(until) => WindowState::Open { until },
                    None => WindowState::Closed {
                        opens: Some(occurrence),
                    },
                };
            }
            until = Some(occurrence + length);
            cursor = occurrence;
        }
        match until {
            Some(until) => WindowState::Open { until },
            None => WindowState::Closed { opens: None },
        }
    }

    #[test]
    fn a_window_state_looks_back_once_and_agrees_with_every_occurrence_walked() {
        let windows = [
            ("cron(0 22 ? * SAT *)", "Europe/Berlin", 4 * 3600),
            ("cron(*/5 * * * ? *)", "UTC", 24 * 3600),
            ("cron(0 2 ? * TUE#2 *)", "America/New_York", 6 * 3600),
            ("rate(1 hour)", "UTC", 600),
            ("rate(1 minute)", "UTC", 20),
            ("cron(0 0 1 1 ? 2199)", "UTC", 3600),
        ];
        let start = chrono::DateTime::parse_from_rfc3339("2026-12-05T20:00:00Z")
            .unwrap()
            .to_utc();
        for (expression, timezone, seconds) in windows {
            let window = MaintenanceWindow {
                name: None,
                schedule: Schedule::parse(expression, Some(timezone)).unwrap(),
                duration: Duration::from_secs(seconds),
            };
            // Every 57 min 47 s over 12 days, and the instants at the edges.
            for step in 0..300 {
                let now = start + chrono::Duration::seconds(step * 3467);
                assert_eq!(
                    window.state_at(now),
                    walked(&window, now),
                    "{expression} at {now}"
                );
            }
            if let WindowState::Closed { opens: Some(opens) } = window.state_at(start) {
                let length = chrono::Duration::seconds(seconds as i64);
                assert_eq!(
                    window.state_at(opens),
                    WindowState::Open {
                        until: opens + length
                    }
                );
                assert!(matches!(
                    window.state_at(opens - chrono::Duration::milliseconds(1)),
                    WindowState::Closed { .. }
                ));
            }
        }
    }
}
