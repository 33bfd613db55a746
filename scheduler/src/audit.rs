//! The audit trail: one append-only record per act that changes something or
//! bears on security — every mutating API request (allowed or not), every
//! refused credential, tokens made and revoked, runs started by schedules,
//! events and alerts, alert-driven pauses.
//!
//! Records go to a Redis stream (`<prefix>:audit`, trimmed to 30 days, read by
//! `GET /audit`), and from it, in batches, to durable files in the results
//! layout (`audit/date=YYYY-MM-DD/part-<first id>-<last id>.jsonl.gz`:
//! temporary file, fsync, rename; or S3), so they outlive Redis. The
//! scheduler's tick exports them ([`AuditLog::export`]): a flood of records
//! is a few files, not one each.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::sink::ResultsStore;
use crate::{SchedulerError, now_ms};

/// How long the Redis stream keeps records; the files keep them for good.
pub const AUDIT_RETENTION_MS: u64 = 30 * 24 * 3600 * 1000;

/// Refusals of one kind (bad credentials at the API, reports refused off the
/// queue) that become audit records in one second, per process; the rest
/// are counted in metrics and folded into the next record.
pub const MAX_REFUSAL_RECORDS_PER_SECOND: u32 = 100;

/// The longest a refusal's detail is kept in its record: it may carry an
/// attacker's text.
pub const MAX_REFUSAL_DETAIL_CHARS: usize = 200;

/// How many refusals of one kind are recorded one by one each second: a
/// flood of bad tokens or forged reports must not become a flood of records.
#[derive(Debug, Default)]
pub struct RefusalBudget {
    /// (Unix second, records in it, refusals not recorded since the last
    /// record).
    window: std::sync::Mutex<(u64, u32, u64)>,
}

impl RefusalBudget {
    /// `Some(n)` while this second's records stay within
    /// [`MAX_REFUSAL_RECORDS_PER_SECOND`]: record this refusal, saying that
    /// `n` before it were not recorded; `None` past the budget (count it only).
    pub fn admit(&self) -> Option<u64> {
        let second = now_ms() / 1000;
        let mut window = self
            .window
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if window.0 != second {
            window.0 = second;
            window.1 = 0;
        }
        window.1 = window.1.saturating_add(1);
        if window.1 > MAX_REFUSAL_RECORDS_PER_SECOND {
            window.2 = window.2.saturating_add(1);
            return None;
        }
        Some(std::mem::take(&mut window.2))
    }

    /// `reason`, bounded, with the refusals left unrecorded before it.
    pub fn reason(reason: &str, unrecorded: u64) -> String {
        let mut bounded: String = reason.chars().take(MAX_REFUSAL_DETAIL_CHARS).collect();
        if bounded.len() < reason.len() {
            bounded.push('…');
        }
        if unrecorded > 0 {
            bounded.push_str(&format!(
                " (and {unrecorded} more refused before it, counted in the metrics but past the audit budget of {MAX_REFUSAL_RECORDS_PER_SECOND} a second)"
            ));
        }
        bounded
    }
}

/// Records one audit file holds at most.
pub const MAX_AUDIT_FILE_RECORDS: usize = 10_000;

/// How long one replica may hold the audit export (it releases it when
/// done); the others skip it meanwhile.
pub const AUDIT_EXPORT_LEASE_MS: u64 = 60_000;

/// KEYS mark; ARGV the mark read ('' for none), the new one: moves the mark
/// only if it is still where the batch began. 1 if moved.
static MOVE_MARK: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        "if (redis.call('GET', KEYS[1]) or '') ~= ARGV[1] then return 0 end \
         redis.call('SET', KEYS[1], ARGV[2]) return 1",
    )
});

/// KEYS lease; ARGV holder: deletes the lease if this holder has it.
static RELEASE_LEASE: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0",
    )
});

/// `YYYY-MM-DD` of a Unix time in ms (UTC).
fn date_of(time_ms: u64) -> String {
    chrono::DateTime::from_timestamp_millis(i64::try_from(time_ms).unwrap_or(i64::MAX))
        .map(|time| time.format("%Y-%m-%d").to_string())
        .unwrap_or_else(|| "unknown".into())
}

/// Records `GET /audit` returns at most.
pub const MAX_AUDIT_QUERY: usize = 1_000;

/// Who did what, from where, to what, why, and how it ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    pub time_ms: u64,
    /// The token's principal, `anonymous`, `schedule:<campaign>`,
    /// `event:<instance>`, `alert:<alertname>`, or `unknown` for a refused
    /// credential.
    pub principal: String,
    pub role: String,
    /// The caller's address (`scheduler` for the scheduler's own acts).
    pub source: String,
    /// The permission exercised (`runs:start`) or the event (`auth:refused`).
    pub action: String,
    /// What it was done to: the request path, a campaign, a run.
    pub object: String,
    #[serde(default)]
    pub reason: String,
    pub request_id: String,
    /// `ok`, `denied`, `unauthenticated` or `error: <status>`.
    pub outcome: String,
}

impl AuditRecord {
    /// A record of the scheduler's own act (no HTTP request behind it).
    pub fn internal(principal: String, action: &str, object: String, reason: String) -> Self {
        Self {
            time_ms: now_ms(),
            principal,
            role: "system".into(),
            source: "scheduler".into(),
            action: action.into(),
            object,
            reason,
            request_id: uuid::Uuid::new_v4().to_string(),
            outcome: "ok".into(),
        }
    }
}

/// Filters of `GET /audit`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    /// Unix ms; records at or after it.
    pub since: Option<u64>,
    pub principal: Option<String>,
    pub action: Option<String>,
    pub limit: Option<usize>,
}

impl AuditQuery {
    fn matches(&self, record: &AuditRecord) -> bool {
        self.principal
            .as_ref()
            .is_none_or(|principal| *principal == record.principal)
            && self
                .action
                .as_ref()
                .is_none_or(|action| *action == record.action)
    }
}

/// Appends records and reads them back.
#[derive(Clone)]
pub struct AuditLog {
    connection: store::Connection,
    stream_key: String,
    files: Option<ResultsStore>,
}

impl AuditLog {
    pub fn new(
        connection: store::Connection,
        stream_key: String,
        files: Option<ResultsStore>,
    ) -> Self {
        Self {
            connection,
            stream_key,
            files,
        }
    }

    /// Appends a record to the stream (replicated before it returns); the
    /// stream's new records go to files in batches ([`AuditLog::export`]).
    /// A failure is logged and returned; the act it records has happened
    /// either way.
    pub async fn append(&self, record: &AuditRecord) -> Result<(), SchedulerError> {
        let json = serde_json::to_string(record)?;
        tracing::info!(
            principal = record.principal.as_str(),
            action = record.action.as_str(),
            object = record.object.as_str(),
            outcome = record.outcome.as_str(),
            source = record.source.as_str(),
            "audit"
        );
        let oldest_kept = record.time_ms.saturating_sub(AUDIT_RETENTION_MS);
        {
            let mut connection = self.connection.clone();
            let _: String = redis::cmd("XADD")
                .arg(&self.stream_key)
                .arg("MINID")
                .arg("~")
                .arg(oldest_kept)
                .arg("*")
                .arg("record")
                .arg(&json)
                .query_async(&mut connection)
                .await?;
            // An auditor must find what was answered.
            connection.replicated(&self.stream_key).await?;
        }
        Ok(())
    }

    /// Writes the records appended since the last export to files, a batch
    /// (at most [`MAX_AUDIT_FILE_RECORDS`]) per file and date, then moves the
    /// export mark (`mark_key`) past them; how many it wrote. One replica at
    /// a time exports (a lease of [`AUDIT_EXPORT_LEASE_MS`] under
    /// `lease_key`). The mark moves only after the file is written, so a
    /// crash loses nothing: the next export writes that batch again (a
    /// record may then be in two files, under the same request id).
    pub async fn export(
        &self,
        mark_key: &str,
        lease_key: &str,
        holder: &str,
    ) -> Result<usize, SchedulerError> {
        let Some(files) = &self.files else {
            return Ok(0);
        };
        let mut connection = self.connection.clone();
        let leased: Option<String> = redis::cmd("SET")
            .arg(lease_key)
            .arg(holder)
            .arg("NX")
            .arg("PX")
            .arg(AUDIT_EXPORT_LEASE_MS)
            .query_async(&mut connection)
            .await?;
        if leased.is_none() {
            return Ok(0);
        }
        let exported = self.export_batches(files, mark_key).await;
        // Released for whoever comes next, if still ours.
        let _: i64 = RELEASE_LEASE
            .key(lease_key)
            .arg(holder)
            .invoke_async(&mut connection)
            .await?;
        exported
    }

    async fn export_batches(
        &self,
        files: &ResultsStore,
        mark_key: &str,
    ) -> Result<usize, SchedulerError> {
        let mut connection = self.connection.clone();
        let mut exported = 0;
        // A bounded amount per call: the tick comes back for the rest.
        for _ in 0..10 {
            let mark: Option<String> = redis::cmd("GET")
                .arg(mark_key)
                .query_async(&mut connection)
                .await?;
            let start = mark
                .as_ref()
                .map_or_else(|| "-".to_string(), |mark| format!("({mark}"));
            let Some(page) = self.page(&start, MAX_AUDIT_FILE_RECORDS).await? else {
                break;
            };
            let (first, last) = (&page.first, &page.last);
            let mut by_date: BTreeMap<String, Vec<AuditRecord>> = BTreeMap::new();
            for record in page.records {
                by_date
                    .entry(date_of(record.time_ms))
                    .or_default()
                    .push(record);
            }
            for (date, records) in &by_date {
                let relative = format!("audit/date={date}/part-{first}-{last}.jsonl.gz");
                files.put_lines(&relative, records).await?;
                exported += records.len();
            }
            // Only from where this batch began: a mark never goes back, even
            // if another replica exported meanwhile (its lease ran out).
            let moved: i64 = MOVE_MARK
                .key(mark_key)
                .arg(mark.as_deref().unwrap_or_default())
                .arg(last)
                .invoke_async(&mut connection)
                .await?;
            connection.replicated(mark_key).await?;
            if moved == 0 || !page.full {
                break;
            }
        }
        Ok(exported)
    }

    /// Records from `query.since` on, oldest first, filtered, at most
    /// [`MAX_AUDIT_QUERY`].
    pub async fn query(&self, query: &AuditQuery) -> Result<Vec<AuditRecord>, SchedulerError> {
        let limit = query.limit.unwrap_or(MAX_AUDIT_QUERY).min(MAX_AUDIT_QUERY);
        let since = query.since.unwrap_or(0);
        let mut found = Vec::new();
        let mut cursor = since.to_string();
        // Read in pages until `limit` records pass the filters or the stream ends.
        loop {
            let Some(page) = self.page(&cursor, MAX_AUDIT_QUERY).await? else {
                break;
            };
            for record in page.records {
                if query.matches(&record) {
                    found.push(record);
                    if found.len() >= limit {
                        return Ok(found);
                    }
                }
            }
            if !page.full {
                break;
            }
            cursor = format!("({}", page.last);
        }
        Ok(found)
    }

    /// The stream's entries from `start` (an XRANGE bound), at most `count`;
    /// `None` when there are none. A record flotilla did not write is left
    /// out, not fatal.
    async fn page(&self, start: &str, count: usize) -> Result<Option<Page>, SchedulerError> {
        let mut connection = self.connection.clone();
        let entries: Vec<(String, Vec<String>)> = redis::cmd("XRANGE")
            .arg(&self.stream_key)
            .arg(start)
            .arg("+")
            .arg("COUNT")
            .arg(count)
            .query_async(&mut connection)
            .await?;
        let (Some((first, _)), Some((last, _))) = (entries.first(), entries.last()) else {
            return Ok(None);
        };
        Ok(Some(Page {
            first: first.clone(),
            last: last.clone(),
            full: entries.len() >= count,
            records: entries
                .iter()
                .filter_map(|(_, fields)| serde_json::from_str(fields.get(1)?).ok())
                .collect(),
        }))
    }
}

/// A page of the audit stream.
struct Page {
    /// The ids of its first and last entries.
    first: String,
    last: String,
    /// As many entries as asked for: there may be more after it.
    full: bool,
    records: Vec<AuditRecord>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_audited_up_to_a_budget_a_second_and_the_rest_folded_in() {
        // Retried if a second boundary falls inside the loop.
        for _ in 0..3 {
            let budget = RefusalBudget::default();
            let second = now_ms() / 1000;
            let admitted = (0..MAX_REFUSAL_RECORDS_PER_SECOND + 50)
                .filter(|_| budget.admit().is_some())
                .count();
            if now_ms() / 1000 != second {
                continue;
            }
            assert_eq!(admitted, MAX_REFUSAL_RECORDS_PER_SECOND as usize);
            // The next second's first record says how many were not recorded.
            while now_ms() / 1000 == second {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            assert_eq!(budget.admit(), Some(50));
            assert_eq!(budget.admit(), Some(0));
            return;
        }
        panic!("three second boundaries in a row");
    }

    #[test]
    fn a_refusals_reason_is_bounded_and_says_what_was_left_out() {
        let long = "x".repeat(5_000);
        let reason = RefusalBudget::reason(&long, 0);
        assert!(
            reason.chars().count() <= MAX_REFUSAL_DETAIL_CHARS + 1,
            "{reason}"
        );
        let folded = RefusalBudget::reason("bad signature", 7);
        assert!(
            folded.starts_with("bad signature (and 7 more refused"),
            "{folded}"
        );
    }
}
