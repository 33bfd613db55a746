//! EventBridge schedule expressions: `cron(…)` and `rate(…)`, with a timezone.
//!
//! `cron(minutes hours day-of-month month day-of-week year)` follows EventBridge:
//! six fields; day-of-week is 1–7 or SUN–SAT with 1 = Sunday; exactly one of
//! day-of-month and day-of-week is `?`; `L` (last day of month, or `6L` last Friday),
//! `W` (nearest weekday, `15W`), `#` (`TUE#2`, second Tuesday), years 1970–2199.
//! `cron(0 2 ? * TUE#2 *)` is Patch Tuesday at 02:00.
//!
//! Evaluation is delegated to the `croner` crate, which implements L, W, #, the year
//! field and Quartz-style weekday numbers. This module only checks EventBridge's
//! stricter syntax (croner accepts more) and translates the two spellings croner
//! reads differently: a lone `L` in day-of-week (EventBridge: Saturday, the last day
//! of the week) and `6L` (croner spells the last Friday `6#L`).
//!
//! `rate(5 minutes)` fires every interval on the interval's grid counted from the Unix
//! epoch (UTC). EventBridge anchors a rate at the rule's creation time; an epoch
//! anchor gives every scheduler replica the same occurrence times without sharing
//! state, which is what lets the leader lease fire each occurrence exactly once.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};

/// The earliest and latest years EventBridge accepts in the year field.
const YEAR_RANGE: std::ops::RangeInclusive<u32> = 1970..=2199;

/// A validated schedule: when a campaign fires, and in which timezone cron fields
/// are read.
#[derive(Debug, Clone)]
pub struct Schedule {
    pub expression: ScheduleExpression,
    /// Cron fields are wall-clock times in this zone; UTC when not given.
    pub timezone: Tz,
}

#[derive(Debug, Clone)]
pub enum ScheduleExpression {
    /// The original text and its compiled form.
    Cron {
        text: String,
        cron: Box<Cron>,
    },
    Rate {
        text: String,
        every: Duration,
    },
}

impl Schedule {
    /// Parses an expression and an optional IANA timezone name.
    pub fn parse(expression: &str, timezone: Option<&str>) -> Result<Self, String> {
        Ok(Self {
            expression: ScheduleExpression::from_str(expression)?,
            timezone: parse_timezone(timezone)?,
        })
    }

    /// The next `count` fire times strictly after `after`, in UTC. Fewer when the
    /// expression has no more occurrences (a past year range).
    pub fn next_fire_times(&self, after: DateTime<Utc>, count: usize) -> Vec<DateTime<Utc>> {
        let mut times = Vec::with_capacity(count);
        let mut cursor = after;
        while times.len() < count {
            let Some(next) = self.next_fire_time(cursor) else {
                break;
            };
            times.push(next);
            cursor = next;
        }
        times
    }

    /// The first fire time strictly after `after`.
    pub fn next_fire_time(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match &self.expression {
            ScheduleExpression::Cron { cron, .. } => {
                let local = after.with_timezone(&self.timezone);
                let next = cron.find_next_occurrence(&local, false).ok()?;
                Some(next.with_timezone(&Utc))
            }
            ScheduleExpression::Rate { every, .. } => {
                let every_seconds = i64::try_from(every.as_secs()).ok()?;
                let periods = after.timestamp().div_euclid(every_seconds) + 1;
                Utc.timestamp_opt(periods.checked_mul(every_seconds)?, 0)
                    .single()
            }
        }
    }
}

impl Schedule {
    /// The last fire time at or before `at`, in UTC (None: none that early).
    pub fn latest_fire_time(&self, at: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match &self.expression {
            ScheduleExpression::Cron { cron, .. } => {
                let local = at.with_timezone(&self.timezone);
                let latest = cron.find_previous_occurrence(&local, true).ok()?;
                Some(latest.with_timezone(&Utc))
            }
            ScheduleExpression::Rate { every, .. } => {
                let every_seconds = i64::try_from(every.as_secs()).ok()?;
                let periods = at.timestamp().div_euclid(every_seconds);
                Utc.timestamp_opt(periods.checked_mul(every_seconds)?, 0)
                    .single()
            }
        }
    }
}

/// An IANA timezone name; UTC when absent.
pub fn parse_timezone(name: Option<&str>) -> Result<Tz, String> {
    match name {
        None => Ok(Tz::UTC),
        Some(name) => Tz::from_str(name).map_err(|_| {
            format!(
                "unknown timezone {name:?}; use an IANA name such as \"UTC\" or \"Europe/Berlin\""
            )
        }),
    }
}

impl ScheduleExpression {
    pub fn as_str(&self) -> &str {
        match self {
            Self::Cron { text, .. } | Self::Rate { text, .. } => text,
        }
    }
}

impl fmt::Display for ScheduleExpression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ScheduleExpression {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        if let Some(body) = text.strip_prefix("cron(").and_then(|t| t.strip_suffix(')')) {
            let cron = parse_eventbridge_cron(body)?;
            return Ok(Self::Cron {
                text: text.to_string(),
                cron: Box::new(cron),
            });
        }
        if let Some(body) = text.strip_prefix("rate(").and_then(|t| t.strip_suffix(')')) {
            let every = parse_rate(body)?;
            return Ok(Self::Rate {
                text: text.to_string(),
                every,
            });
        }
        Err(format!(
            "must be cron(minutes hours day-of-month month day-of-week year) or rate(value unit), got {text:?}"
        ))
    }
}

/// `rate(value unit)`: value a positive integer; unit minute(s), hour(s) or day(s),
/// singular exactly when value is 1 (as EventBridge requires).
fn parse_rate(body: &str) -> Result<Duration, String> {
    let usage = "rate must be \"rate(value unit)\" with a positive whole value and unit minute(s), hour(s) or day(s), singular for 1";
    let mut words = body.split_whitespace();
    let (Some(value), Some(unit), None) = (words.next(), words.next(), words.next()) else {
        return Err(format!("{usage}, got rate({body})"));
    };
    let value: u64 = value
        .parse()
        .ok()
        .filter(|v| *v > 0)
        .ok_or_else(|| format!("{usage}, got value {value:?}"))?;
    let (seconds_per_unit, singular) = match unit {
        "minute" | "minutes" => (60, unit == "minute"),
        "hour" | "hours" => (3600, unit == "hour"),
        "day" | "days" => (86_400, unit == "day"),
        _ => return Err(format!("{usage}, got unit {unit:?}")),
    };
    if singular != (value == 1) {
        return Err(format!("{usage}, got \"{value} {unit}\""));
    }
    let seconds = value
        .checked_mul(seconds_per_unit)
        .filter(|s| *s <= 3650 * 86_400)
        .ok_or_else(|| format!("rate must be at most 3650 days, got {value} {unit}"))?;
    Ok(Duration::from_secs(seconds))
}

const MONTH_NAMES: [&str; 12] = [
    "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
];
const WEEKDAY_NAMES: [&str; 7] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];

/// Checks EventBridge's cron syntax field by field, then compiles it with croner.
fn parse_eventbridge_cron(body: &str) -> Result<Cron, String> {
    let fields: Vec<&str> = body.split_whitespace().collect();
    let [minutes, hours, day_of_month, month, day_of_week, year] = fields[..] else {
        return Err(format!(
            "cron needs 6 fields (minutes hours day-of-month month day-of-week year), got {} in cron({body})",
            fields.len()
        ));
    };
    check_field("minutes", minutes, 0..=59, "*,-/", &[])?;
    check_field("hours", hours, 0..=23, "*,-/", &[])?;
    check_field("day-of-month", day_of_month, 1..=31, "*,-/?LW", &[])?;
    check_field("month", month, 1..=12, "*,-/", &MONTH_NAMES)?;
    check_field("day-of-week", day_of_week, 1..=7, "*,-?L#", &WEEKDAY_NAMES)?;
    check_field("year", year, YEAR_RANGE, "*,-/", &[])?;
    if (day_of_month == "?") == (day_of_week == "?") {
        return Err(format!(
            "cron needs \"?\" in exactly one of day-of-month and day-of-week, got {day_of_month:?} and {day_of_week:?}"
        ));
    }
    let croner_pattern = format!(
        "0 {minutes} {hours} {day_of_month} {month} {} {year}",
        translate_day_of_week(day_of_week)
    );
    CronParser::builder()
        .seconds(Seconds::Required)
        .year(Year::Required)
        .alternative_weekdays(true)
        .sloppy_ranges(true)
        .build()
        .parse(&croner_pattern)
        .map_err(|error| format!("invalid cron({body}): {error}"))
}

/// EventBridge's `L` alone means Saturday; `nL` means the last weekday n.
fn translate_day_of_week(field: &str) -> String {
    field
        .split(',')
        .map(|item| match item {
            "L" => "7".to_string(),
            _ => match item.strip_suffix('L') {
                Some(day) if !day.is_empty() => format!("{day}#L"),
                _ => item.to_string(),
            },
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Rejects characters and numbers a field does not allow, naming the field.
fn check_field(
    name: &str,
    field: &str,
    range: std::ops::RangeInclusive<u32>,
    special: &str,
    names: &[&str],
) -> Result<(), String> {
    let allowed = || {
        let mut text = format!("{}-{}", range.start(), range.end());
        if !names.is_empty() {
            text.push_str(&format!(" or {}-{}", names[0], names[names.len() - 1]));
        }
        let specials: Vec<String> = special.chars().map(|c| c.to_string()).collect();
        format!("{text} with {}", specials.join(" "))
    };
    let mut rest = field.to_ascii_uppercase();
    for name in names {
        rest = rest.replace(name, "");
    }
    if let Some(bad) = rest
        .chars()
        .find(|c| !c.is_ascii_digit() && !special.contains(*c))
    {
        return Err(format!(
            "cron {name} field {field:?} has {bad:?}; allowed: {}",
            allowed()
        ));
    }
    // Numbers after '/' are steps and after '#' are occurrences: not field values.
    for item in field.split(',') {
        let values = item.split(['/', '#']).next().unwrap_or_default();
        for number in values
            .split('-')
            .filter_map(|v| v.trim_end_matches(['L', 'W']).parse::<u32>().ok())
        {
            if !range.contains(&number) {
                return Err(format!(
                    "cron {name} field {field:?} has {number}; allowed: {}",
                    allowed()
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use chrono::{Datelike, NaiveDate, Weekday};

    use super::*;

    fn utc(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc)
    }

    fn fire_times(expression: &str, timezone: Option<&str>, after: &str, n: usize) -> Vec<String> {
        Schedule::parse(expression, timezone)
            .unwrap()
            .next_fire_times(utc(after), n)
            .iter()
            .map(|t| t.to_rfc3339())
            .collect()
    }

    /// Every second Tuesday of the year, computed from the calendar, not from cron.
    fn second_tuesdays(year: i32) -> Vec<String> {
        (1..=12)
            .map(|month| {
                let first = NaiveDate::from_ymd_opt(year, month, 1).unwrap();
                let offset = (7 + Weekday::Tue.num_days_from_monday()
                    - first.weekday().num_days_from_monday())
                    % 7;
                let day = first + chrono::Days::new(u64::from(offset) + 7);
                format!("{day}T02:00:00+00:00")
            })
            .collect()
    }

    #[test]
    fn patch_tuesday_fires_on_every_second_tuesday_of_2026_and_2027() {
        let got = fire_times("cron(0 2 ? * TUE#2 *)", None, "2025-12-31T23:59:59Z", 24);
        let mut want = second_tuesdays(2026);
        want.extend(second_tuesdays(2027));
        assert_eq!(got, want);
        // Spot-check the calendar itself: Patch Tuesdays of 2026 as published.
        assert_eq!(got[0], "2026-01-13T02:00:00+00:00");
        assert_eq!(got[10], "2026-11-10T02:00:00+00:00");
        assert_eq!(got[12], "2027-01-12T02:00:00+00:00");
    }

    #[test]
    fn numeric_weekday_three_is_tuesday() {
        assert_eq!(
            fire_times("cron(0 2 ? * 3#2 *)", None, "2025-12-31T23:59:59Z", 24),
            fire_times("cron(0 2 ? * TUE#2 *)", None, "2025-12-31T23:59:59Z", 24)
        );
    }

    #[test]
    fn last_day_of_month() {
        assert_eq!(
            fire_times("cron(0 18 L * ? *)", None, "2026-01-01T00:00:00Z", 4),
            [
                "2026-01-31T18:00:00+00:00",
                "2026-02-28T18:00:00+00:00",
                "2026-03-31T18:00:00+00:00",
                "2026-04-30T18:00:00+00:00"
            ]
        );
        // 2028 is a leap year.
        assert_eq!(
            fire_times("cron(0 0 L 2 ? *)", None, "2027-03-01T00:00:00Z", 2),
            ["2028-02-29T00:00:00+00:00", "2029-02-28T00:00:00+00:00"]
        );
    }

    #[test]
    fn last_friday_and_lone_l_in_day_of_week() {
        // 6L: the last Friday of the month.
        assert_eq!(
            fire_times(
                "cron(15 10 ? * 6L 2026-2027)",
                None,
                "2026-01-01T00:00:00Z",
                3
            ),
            [
                "2026-01-30T10:15:00+00:00",
                "2026-02-27T10:15:00+00:00",
                "2026-03-27T10:15:00+00:00"
            ]
        );
        // A lone L in day-of-week is the last day of the week: Saturday.
        assert_eq!(
            fire_times("cron(0 0 ? * L *)", None, "2026-11-22T00:00:00Z", 2),
            ["2026-11-28T00:00:00+00:00", "2026-12-05T00:00:00+00:00"]
        );
    }

    #[test]
    fn nearest_weekday() {
        // 2026-02-15 is a Sunday: the nearest weekday is Monday the 16th.
        // 2026-08-15 is a Saturday: Friday the 14th. 2026-04-15 is a Wednesday.
        let got = fire_times("cron(0 9 15W * ? 2026)", None, "2026-01-20T00:00:00Z", 12);
        assert_eq!(got[0], "2026-02-16T09:00:00+00:00");
        assert_eq!(got[2], "2026-04-15T09:00:00+00:00");
        assert_eq!(got[6], "2026-08-14T09:00:00+00:00");
    }

    #[test]
    fn year_field_limits_occurrences() {
        assert_eq!(
            fire_times("cron(0 0 1 1 ? 2027,2029)", None, "2026-06-01T00:00:00Z", 5),
            ["2027-01-01T00:00:00+00:00", "2029-01-01T00:00:00+00:00"]
        );
        assert!(fire_times("cron(0 0 1 1 ? 1999)", None, "2026-06-01T00:00:00Z", 5).is_empty());
    }

    #[test]
    fn steps_ranges_and_names() {
        assert_eq!(
            fire_times(
                "cron(0/15 8-9 ? * MON-FRI *)",
                None,
                "2026-11-20T09:40:00Z",
                3
            ),
            [
                "2026-11-20T09:45:00+00:00",
                "2026-11-23T08:00:00+00:00",
                "2026-11-23T08:15:00+00:00"
            ]
        );
        assert_eq!(
            fire_times("cron(30 1 1 JAN,JUL ? *)", None, "2026-03-01T00:00:00Z", 2),
            ["2026-07-01T01:30:00+00:00", "2027-01-01T01:30:00+00:00"]
        );
    }

    #[test]
    fn timezone_reads_cron_fields_as_wall_clock_time() {
        // 02:00 in Berlin is 01:00 UTC in winter and 00:00 UTC in summer.
        assert_eq!(
            fire_times(
                "cron(0 2 ? * TUE#2 *)",
                Some("Europe/Berlin"),
                "2026-01-01T00:00:00Z",
                1
            ),
            ["2026-01-13T01:00:00+00:00"]
        );
        assert_eq!(
            fire_times(
                "cron(0 2 ? * TUE#2 *)",
                Some("Europe/Berlin"),
                "2026-06-01T00:00:00Z",
                1
            ),
            ["2026-06-09T00:00:00+00:00"]
        );
    }

    #[test]
    fn fire_times_are_strictly_after_the_start() {
        assert_eq!(
            fire_times("cron(0 2 ? * TUE#2 *)", None, "2026-01-13T02:00:00Z", 1),
            ["2026-02-10T02:00:00+00:00"]
        );
    }

    #[test]
    fn rate_fires_on_the_epoch_grid() {
        assert_eq!(
            fire_times("rate(5 minutes)", None, "2026-11-22T10:03:10Z", 3),
            [
                "2026-11-22T10:05:00+00:00",
                "2026-11-22T10:10:00+00:00",
                "2026-11-22T10:15:00+00:00"
            ]
        );
        assert_eq!(
            fire_times("rate(1 day)", None, "2026-11-22T00:00:00Z", 2),
            ["2026-11-23T00:00:00+00:00", "2026-11-24T00:00:00+00:00"]
        );
        assert_eq!(
            fire_times("rate(1 hour)", None, "2026-11-22T10:00:00Z", 1),
            ["2026-11-22T11:00:00+00:00"]
        );
    }

    #[test]
    fn bad_expressions_say_what_is_allowed() {
        let cases = [
            (
                "cron(0 2 * * TUE#2 *)",
                "exactly one of day-of-month and day-of-week",
            ),
            (
                "cron(0 2 ? * ? *)",
                "exactly one of day-of-month and day-of-week",
            ),
            ("cron(0 2 ? * TUE#2)", "needs 6 fields"),
            ("cron(0 2 * * ? * *)", "needs 6 fields"),
            ("cron(60 2 * * ? *)", "minutes field \"60\""),
            ("cron(0 24 * * ? *)", "hours field"),
            ("cron(0 2 32 * ? *)", "day-of-month field"),
            ("cron(0 2 ? * 8 *)", "day-of-week field \"8\""),
            ("cron(0 2 ? * 0 *)", "day-of-week field \"0\""),
            ("cron(0 2 * 13 ? *)", "month field"),
            ("cron(0 2 * * ? 1969)", "year field"),
            ("cron(0 2 * * ? 2200)", "year field"),
            ("cron(0 2W * * ? *)", "hours field"),
            ("cron(0 2 * * ? *", "must be cron("),
            ("rate(0 minutes)", "positive whole value"),
            ("rate(1 minutes)", "singular for 1"),
            ("rate(5 minute)", "singular for 1"),
            ("rate(5 seconds)", "unit \"seconds\""),
            ("rate(5)", "rate(value unit)"),
            ("every day", "must be cron("),
        ];
        for (expression, want) in cases {
            let error = Schedule::parse(expression, None).unwrap_err();
            assert!(
                error.contains(want),
                "{expression}: expected an error mentioning {want:?}, got {error:?}"
            );
        }
    }

    #[test]
    fn unknown_timezone_is_rejected() {
        let error = Schedule::parse("rate(1 day)", Some("Mars/Olympus")).unwrap_err();
        assert!(
            error.contains("unknown timezone \"Mars/Olympus\""),
            "{error}"
        );
    }
}
