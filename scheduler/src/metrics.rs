//! The scheduler's Prometheus metrics, one helper per fact. Labels are enums
//! and campaign names, never run, account or instance ids. Gauges that describe
//! runs and queues are refreshed when `/metrics` is scraped.

use prometheus::{Encoder, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder};

#[derive(Clone)]
pub struct SchedulerMetrics {
    registry: Registry,
    reports: IntCounterVec,
    report_messages: prometheus::IntCounter,
    results: IntCounterVec,
    runs_started: IntCounterVec,
    jobs_published: IntCounterVec,
    runs: IntGaugeVec,
    budget_remaining: IntGaugeVec,
    budget_allowed: IntGaugeVec,
    discovery: IntGaugeVec,
    queue_messages: IntGaugeVec,
    schedule_fires: IntCounterVec,
    leader: prometheus::IntGauge,
    results_unwritable: IntCounterVec,
    reports_rejected: IntCounterVec,
    connected: IntGaugeVec,
    clock_offset: prometheus::Gauge,
    insecure: prometheus::IntGauge,
    auth_refused: prometheus::IntCounter,
    gate_checks: IntCounterVec,
    waves_ended: IntCounterVec,
    notifications: IntCounterVec,
    tick_failures: IntCounterVec,
    starts_refused: IntCounterVec,
    unreadable_runs: prometheus::IntCounter,
}

impl SchedulerMetrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let reports = IntCounterVec::new(
            Opts::new(
                "flotilla_scheduler_reports_total",
                "Reports handled, by kind and outcome (applied, duplicate, failed)",
            ),
            &["kind", "outcome"],
        )?;
        let report_messages = prometheus::IntCounter::new(
            "flotilla_scheduler_report_messages_total",
            "Messages taken from the reports queue (each one report or a worker's bundle of them)",
        )?;
        let results = IntCounterVec::new(
            Opts::new(
                "flotilla_scheduler_target_results_total",
                "Target results written, by campaign and status detail",
            ),
            &["campaign", "status"],
        )?;
        let runs_started = IntCounterVec::new(
            Opts::new(
                "flotilla_scheduler_runs_started_total",
                "Runs started, by campaign and what started them",
            ),
            &["campaign", "started_by"],
        )?;
        let jobs_published = IntCounterVec::new(
            Opts::new(
                "flotilla_scheduler_jobs_published_total",
                "Jobs published, by kind",
            ),
            &["kind"],
        )?;
        let runs = IntGaugeVec::new(
            Opts::new(
                "flotilla_scheduler_runs",
                "Runs by state: every live run, and the finished among the newest 1,000",
            ),
            &["state"],
        )?;
        let budget_remaining = IntGaugeVec::new(
            Opts::new(
                "flotilla_scheduler_error_budget_remaining",
                "Failures a live run may still have before it halts (lowest over the campaign's live runs)",
            ),
            &["campaign"],
        )?;
        let budget_allowed = IntGaugeVec::new(
            Opts::new(
                "flotilla_scheduler_error_budget_allowed",
                "Failures a live run may have in all (its max_errors resolved against its targets)",
            ),
            &["campaign"],
        )?;
        let discovery = IntGaugeVec::new(
            Opts::new(
                "flotilla_scheduler_discovery_locations",
                "Locations of live runs, by discovery progress (discovered, total)",
            ),
            &["campaign", "progress"],
        )?;
        let queue_messages = IntGaugeVec::new(
            Opts::new(
                "flotilla_queue_messages",
                "Messages ready in each flotilla queue",
            ),
            &["queue"],
        )?;
        let schedule_fires = IntCounterVec::new(
            Opts::new(
                "flotilla_scheduler_schedule_fires_total",
                "Schedule occurrences this replica fired, by campaign",
            ),
            &["campaign"],
        )?;
        let results_unwritable = IntCounterVec::new(
            Opts::new(
                "flotilla_scheduler_results_write_failures_total",
                "Batches of results that could not be written and paused their run, by cause (permanent: refused; transient: an outage past its retries)",
            ),
            &["cause"],
        )?;
        let reports_rejected = IntCounterVec::new(
            Opts::new(
                "flotilla_scheduler_reports_rejected_total",
                "Reports refused and dead-lettered without being acted on, by reason (bad_signature, unknown_key, expired, signer_not_allowed, unknown_run, bad_location, foreign_location, unknown_batch, foreign_targets, bad_target, malformed, …)",
            ),
            &["reason"],
        )?;
        let connected = IntGaugeVec::new(
            Opts::new(
                "flotilla_scheduler_connected",
                "1 while the scheduler is connected to the service (rabbitmq, redis)",
            ),
            &["service"],
        )?;
        let clock_offset = prometheus::Gauge::new(
            "flotilla_scheduler_clock_offset_seconds",
            "How far Redis's clock, the one flotilla keeps, is ahead of this host's (negative: behind), in seconds; 0 until measured",
        )?;
        let gate_checks = IntCounterVec::new(
            Opts::new(
                "flotilla_scheduler_rollout_gate_checks_total",
                "Health gates checked after a rollout's wave, by campaign, gate (wave_errors, prometheus, alertmanager) and result (passed, failed)",
            ),
            &["campaign", "gate", "result"],
        )?;
        let waves_ended = IntCounterVec::new(
            Opts::new(
                "flotilla_scheduler_rollout_waves_total",
                "Rollout waves moved on from, by campaign and outcome (next, approval, approved, resumed, pause, halt)",
            ),
            &["campaign", "outcome"],
        )?;
        let notifications = IntCounterVec::new(
            Opts::new(
                "flotilla_scheduler_notifications_total",
                "Webhook notifications, by event and outcome (delivered; retried: an attempt failed; failed: every attempt did)",
            ),
            &["event", "outcome"],
        )?;
        let tick_failures = IntCounterVec::new(
            Opts::new(
                "flotilla_scheduler_tick_failures_total",
                "Ticks in which one duty failed (due_runs, rollouts, freezes, windows, schedules, audit_files); the other duties still ran",
            ),
            &["duty"],
        )?;
        let starts_refused = IntCounterVec::new(
            Opts::new(
                "flotilla_scheduler_starts_refused_total",
                "Starts the start gate refused, by door (api, console, schedule, event) and reason (forbidden, needs_approval, frozen, already_running, out_of_scope, invalid, unknown_campaign)",
            ),
            &["door", "reason"],
        )?;
        let unreadable_runs = prometheus::IntCounter::new(
            "flotilla_scheduler_unreadable_runs_total",
            "Reads that found a run record unreadable (a garbled field, a deleted hash): the run is skipped and listed as unreadable, never a reason to stop",
        )?;
        let auth_refused = prometheus::IntCounter::new(
            "flotilla_scheduler_auth_refused_total",
            "API requests refused for a missing, unknown or expired credential",
        )?;
        let insecure = prometheus::IntGauge::new(
            "flotilla_scheduler_insecure",
            "1 while the API runs without authentication (no tokens file)",
        )?;
        let leader = prometheus::IntGauge::new(
            "flotilla_scheduler_schedule_leader",
            "1 while this replica holds the schedule leader lease",
        )?;
        for collector in [
            Box::new(schedule_fires.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(leader.clone()),
            Box::new(reports.clone()),
            Box::new(report_messages.clone()),
            Box::new(results.clone()),
            Box::new(runs_started.clone()),
            Box::new(jobs_published.clone()),
            Box::new(runs.clone()),
            Box::new(budget_remaining.clone()),
            Box::new(budget_allowed.clone()),
            Box::new(discovery.clone()),
            Box::new(queue_messages.clone()),
            Box::new(results_unwritable.clone()),
            Box::new(reports_rejected.clone()),
            Box::new(connected.clone()),
            Box::new(clock_offset.clone()),
            Box::new(insecure.clone()),
            Box::new(auth_refused.clone()),
            Box::new(gate_checks.clone()),
            Box::new(waves_ended.clone()),
            Box::new(notifications.clone()),
            Box::new(tick_failures.clone()),
            Box::new(starts_refused.clone()),
            Box::new(unreadable_runs.clone()),
        ] {
            registry.register(collector)?;
        }
        Ok(Self {
            registry,
            reports,
            report_messages,
            results,
            runs_started,
            jobs_published,
            runs,
            budget_remaining,
            budget_allowed,
            discovery,
            queue_messages,
            schedule_fires,
            leader,
            results_unwritable,
            reports_rejected,
            connected,
            clock_offset,
            insecure,
            auth_refused,
            gate_checks,
            waves_ended,
            notifications,
            tick_failures,
            starts_refused,
            unreadable_runs,
        })
    }

    pub fn tick_failed(&self, duty: &str) {
        self.tick_failures.with_label_values(&[duty]).inc();
    }

    pub fn unreadable_run(&self) {
        self.unreadable_runs.inc();
    }

    pub fn start_refused(&self, door: &str, reason: &str) {
        self.starts_refused.with_label_values(&[door, reason]).inc();
    }

    pub fn gate_checked(&self, campaign: &str, gate: &str, result: &str) {
        self.gate_checks
            .with_label_values(&[campaign, gate, result])
            .inc();
    }

    pub fn notification(&self, event: &str, outcome: &str) {
        self.notifications
            .with_label_values(&[event, outcome])
            .inc();
    }

    pub fn wave_ended(&self, campaign: &str, outcome: &str) {
        self.waves_ended
            .with_label_values(&[campaign, outcome])
            .inc();
    }

    pub fn auth_refused(&self) {
        self.auth_refused.inc();
    }

    pub fn set_insecure(&self, insecure: bool) {
        self.insecure.set(i64::from(insecure));
    }

    pub fn results_unwritable(&self, permanent: bool) {
        let cause = if permanent { "permanent" } else { "transient" };
        self.results_unwritable.with_label_values(&[cause]).inc();
    }

    pub fn report_message(&self) {
        self.report_messages.inc();
    }

    pub fn report_rejected(&self, reason: &str) {
        self.reports_rejected.with_label_values(&[reason]).inc();
    }

    pub fn connection(&self, service: &str, connected: bool) {
        self.connected
            .with_label_values(&[service])
            .set(i64::from(connected));
    }

    pub fn report(&self, kind: &str, outcome: &str) {
        self.reports.with_label_values(&[kind, outcome]).inc();
    }

    pub fn result(&self, campaign: &str, status: &str) {
        self.results.with_label_values(&[campaign, status]).inc();
    }

    pub fn run_started(&self, campaign: &str, started_by: &str) {
        // Event and schedule starts say so (`schedule:<campaign>`,
        // `event:<instance>`: the label keeps only the kind); anything else is
        // an operator, whose name is never a label.
        let started_by = match started_by.split_once(':') {
            Some(("schedule", _)) => "schedule",
            Some(("event", _)) => "event",
            _ => "operator",
        };
        self.runs_started
            .with_label_values(&[campaign, started_by])
            .inc();
    }

    pub fn jobs_published(&self, kind: &str, count: usize) {
        self.jobs_published
            .with_label_values(&[kind])
            .inc_by(u64::try_from(count).unwrap_or(u64::MAX));
    }

    pub fn set_runs(&self, counts: &std::collections::BTreeMap<&'static str, i64>) {
        self.runs.reset();
        for (state, count) in counts {
            self.runs.with_label_values(&[state]).set(*count);
        }
    }

    pub fn set_budget(&self, campaign: &str, allowed: i64, remaining: i64) {
        self.budget_allowed
            .with_label_values(&[campaign])
            .set(allowed);
        self.budget_remaining
            .with_label_values(&[campaign])
            .set(remaining);
    }

    pub fn set_discovery(&self, campaign: &str, discovered: i64, total: i64) {
        self.discovery
            .with_label_values(&[campaign, "discovered"])
            .set(discovered);
        self.discovery
            .with_label_values(&[campaign, "total"])
            .set(total);
    }

    pub fn reset_run_gauges(&self) {
        self.budget_remaining.reset();
        self.budget_allowed.reset();
        self.discovery.reset();
    }

    pub fn set_queue_messages(&self, queue: &str, messages: i64) {
        self.queue_messages
            .with_label_values(&[queue])
            .set(messages);
    }

    pub fn schedule_fired(&self, campaign: &str) {
        self.schedule_fires.with_label_values(&[campaign]).inc();
    }

    pub fn set_leader(&self, leader: bool) {
        self.leader.set(i64::from(leader));
    }

    pub fn render(&self) -> String {
        self.clock_offset
            .set(protocol::clock::offset_ms() as f64 / 1_000.0);
        let mut buffer = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buffer);
        String::from_utf8_lossy(&buffer).into_owned()
    }
}
