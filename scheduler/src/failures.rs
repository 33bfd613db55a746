//! Failures grouped by cause: the first line of what a command printed, with
//! what varies from host to host masked, so one cause on a thousand hosts is
//! one group. `flotilla report` groups the results files so; the scheduler
//! counts the same groups as reports arrive, for the console's run page.

use std::sync::LazyLock;

use regex::Regex;

/// Distinct failure causes a run keeps (about: with its status counters, a
/// run's counters hash takes new causes up to this + 64 fields): output is
/// the hosts' to choose, so what it fills is bounded. Past it a new cause
/// counts as `other`.
pub const MAX_FAILURE_KINDS: usize = 256;

/// What varies from host to host in a failure message, most specific first.
static VARYING: LazyLock<Vec<(Regex, &'static str)>> = LazyLock::new(|| {
    [
        (
            r"(?i)\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b",
            "<id>",
        ),
        (
            r"\b(?:i-[0-9a-f]{8}(?:[0-9a-f]{9})?|mi-[0-9a-f]{17})\b",
            "<instance>",
        ),
        (
            r"\b(?:ip|ec2)-\d{1,3}-\d{1,3}-\d{1,3}-\d{1,3}(?:\.[A-Za-z0-9-]+)*",
            "<host>",
        ),
        (r"\b\d{1,3}(?:\.\d{1,3}){3}(?::\d+)?\b", "<ip>"),
        (r"(?i)\b[a-z0-9-]+(?:\.[a-z0-9-]+){2,}\b", "<host>"),
        (r"(?i)\b0x[0-9a-f]+\b|\b\d+(?:\.\d+)?\b", "<n>"),
    ]
    .into_iter()
    .filter_map(|(pattern, mask)| Regex::new(pattern).ok().map(|regex| (regex, mask)))
    .collect()
});

/// A failure message with instance ids, uuids, hosts, addresses and numbers
/// masked, so that one cause on a thousand hosts is one group, not a thousand.
pub fn failure_signature(detail: &str) -> String {
    VARYING
        .iter()
        .fold(detail.to_string(), |text, (regex, mask)| {
            regex.replace_all(&text, *mask).into_owned()
        })
}

/// The group of a failed command's output: its first non-empty line, at most
/// 120 characters, masked ([`failure_signature`]).
pub fn failure_kind(output: &str) -> String {
    let line: String = output
        .lines()
        .find(|line| !line.trim().is_empty())
        .unwrap_or("(no output)")
        .trim()
        .chars()
        .take(120)
        .collect();
    failure_signature(&line)
}

/// The failed results of `records` (anything but Success and Not Started)
/// by step, status detail and cause ([`failure_kind`]), with their counts:
/// `flotilla report`'s top failures and the console's location page.
pub fn failed_groups<'a>(
    records: impl IntoIterator<Item = &'a crate::sink::ResultRecord>,
) -> std::collections::BTreeMap<(u16, String, String), u64> {
    use protocol::status::InvocationStatus;
    let mut groups = std::collections::BTreeMap::new();
    for record in records {
        let status = record.status.parse::<InvocationStatus>().ok();
        if matches!(
            status,
            Some(InvocationStatus::Success | InvocationStatus::NotStarted)
        ) {
            continue;
        }
        *groups
            .entry((
                record.step_index,
                record.status_detail.clone(),
                failure_kind(&record.output),
            ))
            .or_default() += 1;
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_varies_from_host_to_host_is_masked() {
        assert_eq!(
            failure_signature(
                "i-0abc1234def567890 on ip-10-0-3-17.ec2.internal: exit 137 after 12.5 s"
            ),
            "<instance> on <host>: exit <n> after <n> s"
        );
        assert_eq!(
            failure_signature(
                "mirror.example.com (203.0.113.9:443) timed out, request 6f1c2d3e-1a2b-4c5d-8e9f-0a1b2c3d4e5f"
            ),
            "<host> (<ip>) timed out, request <id>"
        );
        assert_eq!(failure_signature("yum: lock held"), "yum: lock held");
    }
}
