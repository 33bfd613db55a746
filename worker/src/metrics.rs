//! The worker's Prometheus metrics, one helper per fact. Labels come from enums
//! and campaign/region names only — never instance or account ids, which would
//! make one series per host.

use std::time::Duration;

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};
use protocol::status::StatusDetail;

/// Registered on a registry of its own, so several workers in one process (tests,
/// the demo) keep separate counts.
#[derive(Clone)]
pub struct WorkerMetrics {
    registry: Registry,
    jobs: IntCounterVec,
    target_results: IntCounterVec,
    aws_calls: IntCounterVec,
    aws_call_seconds: HistogramVec,
    role_assumptions: IntCounterVec,
    in_flight_jobs: IntGauge,
    kill_switch_engaged: IntGauge,
    mutations_blocked: IntCounterVec,
    messages_rejected: IntCounterVec,
    connected: IntGaugeVec,
    clock_offset: prometheus::Gauge,
    sends_skipped: IntCounter,
    targets_dropped: IntCounterVec,
}

impl WorkerMetrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let jobs = IntCounterVec::new(
            Opts::new(
                "flotilla_worker_jobs_total",
                "Jobs handled, by kind and outcome",
            ),
            &["kind", "outcome"],
        )?;
        let target_results = IntCounterVec::new(
            Opts::new(
                "flotilla_worker_target_results_total",
                "Target results reported, by campaign and status detail",
            ),
            &["campaign", "status"],
        )?;
        let aws_calls = IntCounterVec::new(
            Opts::new(
                "flotilla_worker_aws_calls_total",
                "AWS API calls, by operation and outcome (ok, throttled, access_denied, transient, failed)",
            ),
            &["operation", "outcome"],
        )?;
        let aws_call_seconds = HistogramVec::new(
            HistogramOpts::new("flotilla_worker_aws_call_seconds", "AWS API call latency").buckets(
                vec![
                    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                ],
            ),
            &["operation"],
        )?;
        let role_assumptions = IntCounterVec::new(
            Opts::new(
                "flotilla_worker_role_assumptions_total",
                "STS AssumeRole calls, by outcome",
            ),
            &["outcome"],
        )?;
        let in_flight_jobs =
            IntGauge::new("flotilla_worker_in_flight_jobs", "Jobs being handled now")?;
        let kill_switch_engaged = IntGauge::new(
            "flotilla_worker_kill_switch_engaged",
            "1 while the global kill switch is engaged or Redis cannot be read (fail closed)",
        )?;
        let mutations_blocked = IntCounterVec::new(
            Opts::new(
                "flotilla_worker_mutations_blocked_total",
                "SendCommand calls held back, by reason (kill_switch_global, kill_switch_campaign, run_paused, run_unknown, store_unreachable)",
            ),
            &["reason"],
        )?;
        let messages_rejected = IntCounterVec::new(
            Opts::new(
                "flotilla_worker_messages_rejected_total",
                "Jobs refused and dead-lettered without being acted on, by reason (bad_signature, unknown_key, expired, signer_not_allowed, unknown_run, run_mismatch, malformed, …)",
            ),
            &["reason"],
        )?;
        let connected = IntGaugeVec::new(
            Opts::new(
                "flotilla_worker_connected",
                "1 while the worker is connected to the service (rabbitmq, redis)",
            ),
            &["service"],
        )?;
        let clock_offset = prometheus::Gauge::new(
            "flotilla_worker_clock_offset_seconds",
            "How far Redis's clock, the one flotilla keeps, is ahead of this host's (negative: behind), in seconds; 0 until measured",
        )?;
        let sends_skipped = IntCounter::new(
            "flotilla_worker_duplicate_sends_avoided_total",
            "Redelivered Execute jobs that resumed an earlier command instead of sending again",
        )?;
        let targets_dropped = IntCounterVec::new(
            Opts::new(
                "flotilla_worker_targets_dropped_total",
                "Targets of a step that changes hosts not sent because, at send time, they no longer matched the campaign's targets",
            ),
            &["campaign"],
        )?;
        registry.register(Box::new(targets_dropped.clone()))?;
        registry.register(Box::new(jobs.clone()))?;
        registry.register(Box::new(target_results.clone()))?;
        registry.register(Box::new(aws_calls.clone()))?;
        registry.register(Box::new(aws_call_seconds.clone()))?;
        registry.register(Box::new(role_assumptions.clone()))?;
        registry.register(Box::new(in_flight_jobs.clone()))?;
        registry.register(Box::new(kill_switch_engaged.clone()))?;
        registry.register(Box::new(mutations_blocked.clone()))?;
        registry.register(Box::new(messages_rejected.clone()))?;
        registry.register(Box::new(connected.clone()))?;
        registry.register(Box::new(clock_offset.clone()))?;
        registry.register(Box::new(sends_skipped.clone()))?;
        Ok(Self {
            registry,
            jobs,
            target_results,
            aws_calls,
            aws_call_seconds,
            role_assumptions,
            in_flight_jobs,
            kill_switch_engaged,
            mutations_blocked,
            messages_rejected,
            connected,
            clock_offset,
            sends_skipped,
            targets_dropped,
        })
    }

    pub fn job_handled(&self, kind: &str, outcome: &str) {
        self.jobs.with_label_values(&[kind, outcome]).inc();
    }

    pub fn target_result(&self, campaign: &str, status: StatusDetail) {
        self.target_results
            .with_label_values(&[campaign, status.as_ssm_str()])
            .inc();
    }

    pub fn targets_dropped(&self, campaign: &str, count: usize) {
        self.targets_dropped
            .with_label_values(&[campaign])
            .inc_by(u64::try_from(count).unwrap_or(u64::MAX));
    }

    pub fn aws_call(&self, operation: &str, outcome: &str, latency: Duration) {
        self.aws_calls
            .with_label_values(&[operation, outcome])
            .inc();
        self.aws_call_seconds
            .with_label_values(&[operation])
            .observe(latency.as_secs_f64());
    }

    pub fn role_assumed(&self, outcome: &str) {
        self.role_assumptions.with_label_values(&[outcome]).inc();
    }

    pub fn job_started(&self) {
        self.in_flight_jobs.inc();
    }

    pub fn job_finished(&self) {
        self.in_flight_jobs.dec();
    }

    pub fn kill_switch(&self, engaged: bool) {
        self.kill_switch_engaged.set(i64::from(engaged));
    }

    pub fn mutation_blocked(&self, reason: &str) {
        self.mutations_blocked.with_label_values(&[reason]).inc();
    }

    pub fn message_rejected(&self, reason: &str) {
        self.messages_rejected.with_label_values(&[reason]).inc();
    }

    pub fn connection(&self, service: &str, connected: bool) {
        self.connected
            .with_label_values(&[service])
            .set(i64::from(connected));
    }

    pub fn duplicate_send_avoided(&self) {
        self.sends_skipped.inc();
    }

    /// The text exposition format, for `/metrics`.
    pub fn render(&self) -> String {
        self.clock_offset
            .set(protocol::clock::offset_ms() as f64 / 1_000.0);
        let mut buffer = Vec::new();
        // Encoding our own well-formed families into a Vec cannot fail.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buffer);
        String::from_utf8_lossy(&buffer).into_owned()
    }
}

/// Serves `/metrics` (and `/healthz`) on `listener` until `stop`.
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    metrics: WorkerMetrics,
    stop: tokio_util::sync::CancellationToken,
) {
    use axum::routing::get;
    let router = axum::Router::new()
        .route(
            "/metrics",
            get(move || std::future::ready(metrics.render())),
        )
        .route("/healthz", get(|| std::future::ready("ok")));
    let served = axum::serve(listener, router)
        .with_graceful_shutdown(stop.cancelled_owned())
        .await;
    if let Err(error) = served {
        tracing::error!(error = %error, "metrics server failed");
    }
}
