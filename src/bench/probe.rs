//! What the bench reads from outside flotilla: `/proc`, Prometheus text,
//! Redis' INFO, the machine.

use std::net::TcpListener;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::Value;

/// Ticks of `/proc/<pid>/stat` per second (Linux's USER_HZ, 100 everywhere it runs).
pub(super) const CLOCK_TICKS: f64 = 100.0;

pub(super) fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces; fields after it are fixed.
    let after_name = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / CLOCK_TICKS)
}

pub(super) fn peak_rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|line| line.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// The oldest process whose command line matches, e.g. RabbitMQ's `beam.smp`.
pub(super) fn pid_of(pattern: &str) -> Option<u32> {
    let output = Command::new("pgrep")
        .args(["-o", "-f", pattern])
        .output()
        .ok()?;
    String::from_utf8_lossy(&output.stdout).trim().parse().ok()
}

pub(super) fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Sums a Prometheus text exposition's samples of `name` whose labels pass `keep`.
pub(super) fn metric_sum(text: &str, name: &str, keep: impl Fn(&str) -> bool) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric, labels) = match series.split_once('{') {
                Some((metric, labels)) => (metric, labels),
                None => (series, ""),
            };
            (metric == name && keep(labels)).then(|| value.parse::<f64>().ok())?
        })
        .sum()
}

pub(super) fn http_text(url: &str) -> anyhow::Result<String> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .tls_config(scheduler::ureq_tls().build())
        .build()
        .into();
    let mut response = agent
        .get(url)
        .call()
        .with_context(|| format!("GET {url}"))?;
    Ok(response.body_mut().read_to_string()?)
}

pub(super) fn http_json(url: &str) -> anyhow::Result<Value> {
    Ok(serde_json::from_str(&http_text(url)?)?)
}

pub(super) fn wait_for(url: &str, what: &str, within: Duration) -> anyhow::Result<()> {
    let began = Instant::now();
    while http_text(url).is_err() {
        if began.elapsed() > within {
            bail!("{what} did not answer at {url} within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// Commands the Redis at `redis_url` has processed since it started: in
/// all (`total_commands_processed`, which counts the commands scripts and
/// functions make too) and by command (`INFO commandstats`, lower-case names
/// such as `evalsha`, `hincrby`).
pub(super) fn redis_commands(redis_url: &str) -> anyhow::Result<RedisCommands> {
    let client = redis::Client::open(redis_url)?;
    let mut connection = client.get_connection()?;
    let stats: String = redis::cmd("INFO").arg("stats").query(&mut connection)?;
    let total = stats
        .lines()
        .find_map(|line| line.strip_prefix("total_commands_processed:"))
        .and_then(|value| value.trim().parse().ok())
        .context("INFO stats without total_commands_processed")?;
    let commandstats: String = redis::cmd("INFO")
        .arg("commandstats")
        .query(&mut connection)?;
    Ok(RedisCommands {
        total,
        by_command: parse_commandstats(&commandstats),
    })
}

/// What [`redis_commands`] read.
#[derive(Debug, Clone, Default)]
pub(super) struct RedisCommands {
    pub(super) total: u64,
    pub(super) by_command: std::collections::BTreeMap<String, u64>,
}

impl RedisCommands {
    /// The commands processed between `before` and `self`, by command.
    pub(super) fn since(&self, before: &RedisCommands) -> std::collections::BTreeMap<String, u64> {
        self.by_command
            .iter()
            .map(|(name, calls)| {
                let earlier = before.by_command.get(name).copied().unwrap_or(0);
                (name.clone(), calls.saturating_sub(earlier))
            })
            .filter(|(_, calls)| *calls > 0)
            .collect()
    }
}

/// `cmdstat_hincrby:calls=12,usec=…` lines → calls by command name
/// (sub-commands as Redis names them, e.g. `client|setname`).
fn parse_commandstats(text: &str) -> std::collections::BTreeMap<String, u64> {
    text.lines()
        .filter_map(|line| {
            let (name, fields) = line.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = fields
                .split(',')
                .find_map(|field| field.strip_prefix("calls="))?
                .parse()
                .ok()?;
            Some((name.to_string(), calls))
        })
        .collect()
}

pub(super) fn unix_ms() -> u64 {
    protocol::job::UnixMillis::now().0
}

/// The nearest-rank percentile `p` (0–1) of `sorted`; NaN when empty.
pub(super) fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (p * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// CPU model and core count, for the report.
pub(super) fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|line| line.strip_prefix("model name"))
        .map(|rest| rest.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    format!("{cores} cores, {model}")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const EXPOSITION: &str = r#"# HELP flotilla_worker_jobs_total Jobs handled, by kind and outcome
# TYPE flotilla_worker_jobs_total counter
flotilla_worker_jobs_total{kind="discover",outcome="done"} 198
flotilla_worker_jobs_total{kind="execute",outcome="continued"} 200
flotilla_worker_jobs_total{kind="poll",outcome="continued"} 1028
flotilla_worker_jobs_total_other{kind="poll",outcome="continued"} 5
flotilla_worker_in_flight_jobs 3
"#;

    #[test]
    fn metric_sums_add_the_matching_series_only() {
        let continued = metric_sum(EXPOSITION, "flotilla_worker_jobs_total", |labels| {
            labels.contains("outcome=\"continued\"")
        });
        assert_eq!(continued, 1228.0);
        assert_eq!(
            metric_sum(EXPOSITION, "flotilla_worker_jobs_total", |_| true),
            1426.0
        );
        assert_eq!(
            metric_sum(EXPOSITION, "flotilla_worker_in_flight_jobs", |_| true),
            3.0
        );
        assert_eq!(metric_sum(EXPOSITION, "absent", |_| true), 0.0);
    }

    #[test]
    fn commandstats_give_calls_by_command() {
        let text = "# Commandstats\r\ncmdstat_evalsha:calls=120,usec=900,usec_per_call=7.50,rejected_calls=0,failed_calls=1\r\ncmdstat_client|setname:calls=3,usec=1,usec_per_call=0.33,rejected_calls=0,failed_calls=0\r\nnot a stat\r\n";
        let calls = parse_commandstats(text);
        assert_eq!(calls.get("evalsha"), Some(&120));
        assert_eq!(calls.get("client|setname"), Some(&3));
        assert_eq!(calls.len(), 2);
        let before = RedisCommands {
            total: 0,
            by_command: [("evalsha".to_string(), 100)].into(),
        };
        let after = RedisCommands {
            total: 0,
            by_command: calls,
        };
        let since = after.since(&before);
        assert_eq!(since.get("evalsha"), Some(&20));
        assert_eq!(since.get("client|setname"), Some(&3));
    }

    #[test]
    fn percentiles_pick_the_nearest_rank() {
        let delays: Vec<f64> = (1..=20).map(f64::from).collect();
        assert_eq!(percentile(&delays, 0.5), 11.0);
        assert_eq!(percentile(&delays, 0.99), 20.0);
        assert_eq!(percentile(&delays, 0.0), 1.0);
        assert!(percentile(&[], 0.5).is_nan());
    }

    #[test]
    fn this_process_has_cpu_time_and_a_peak_rss() {
        let own = std::process::id();
        assert!(cpu_seconds(own).is_some());
        assert!(peak_rss_mib(own).is_some_and(|mib| mib > 1.0));
        assert!(cpu_seconds(u32::MAX).is_none());
    }
}
