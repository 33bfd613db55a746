//! The settings of one scheduler process, as `flotilla scheduler` builds
//! them from its flags (and tests and the demo in code). `Debug` redacts the
//! passwords of the URLs and the S3 secret.

use protocol::names::Names;

/// Settings of one scheduler process. `Debug` redacts the passwords of the
/// URLs and the S3 secret.
#[derive(Clone)]
pub struct SchedulerConfig {
    pub amqp_url: String,
    pub redis_url: String,
    pub names: Names,
    /// Where S3 is, for campaigns whose `output` is `s3://…`.
    pub s3: crate::sink::S3Settings,
    /// Reports received ahead of handling; raising it smooths bursts and costs
    /// redelivery work when the scheduler dies.
    pub report_prefetch: u16,
    pub name: String,
    /// For campaigns that name organizational units.
    pub organizations: crate::organizations::OrganizationsSettings,
    /// How long the schedule leader lease lasts without renewal: how long a
    /// dead leader's schedules wait for another replica. Renewed every second.
    pub lease_ttl: std::time::Duration,
    pub clock: crate::schedules::SchedulerClock,
    /// Principals are authenticated (tokens, SSO or client certificates):
    /// the two-person rule binds. Without authentication every caller is
    /// `anonymous`, and the rule cannot tell people apart.
    pub authenticated: bool,
    /// Where audit files go besides the Redis stream (a directory or
    /// `s3://bucket/prefix`); `None` keeps only the stream.
    pub audit_output: Option<protocol::campaign::OutputLocation>,
    /// Documents that only read (`AWS-RunPatchBaseline` with `Operation:
    /// Scan` by default); campaigns with any other step need a second
    /// principal's approval before they run.
    pub read_only_documents: Vec<crate::approvals::ReadOnlyDocument>,
    /// A CA for `rediss://` Redis URLs.
    pub redis_tls: store::RedisTls,
    /// A CA for `amqps://` broker URLs.
    pub amqp_tls: broker::BrokerTls,
    /// The scheduler's signing key (for jobs) and the keys it trusts
    /// (workers', for reports). The default signs nothing: connect refuses it.
    pub keys: protocol::signing::Keyring,
    /// The most account-region pairs one run may have.
    pub max_locations: u64,
    /// How many of a run's locations are being discovered at once
    /// (`runs::DISCOVERY_WINDOW` by default; at least 1).
    pub discovery_window: std::num::NonZeroUsize,
    /// Webhooks told about every campaign's runs and the kill switch.
    pub notify: crate::notify::NotifySettings,
    /// The hosts gates and webhooks may reach; empty: none.
    pub egress: crate::egress::EgressPolicy,
    /// Where campaigns may put results (under the working directory, no
    /// bucket, by default).
    pub output_roots: crate::sink::OutputRoots,
}

impl std::fmt::Debug for SchedulerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SchedulerConfig")
            .field("amqp_url", &protocol::redact_password(&self.amqp_url))
            .field("redis_url", &protocol::redact_password(&self.redis_url))
            .field("names", &self.names)
            .field("s3", &self.s3)
            .field("report_prefetch", &self.report_prefetch)
            .field("name", &self.name)
            .field("organizations", &self.organizations)
            .field("lease_ttl", &self.lease_ttl)
            .field("authenticated", &self.authenticated)
            .field("audit_output", &self.audit_output)
            .field("read_only_documents", &self.read_only_documents)
            .field("redis_tls", &self.redis_tls)
            .field("amqp_tls", &self.amqp_tls)
            .field("keys", &self.keys.trusted_ids())
            .field("notify", &self.notify)
            .field("egress", &self.egress)
            .field("output_roots", &self.output_roots)
            .finish_non_exhaustive()
    }
}

impl SchedulerConfig {
    pub fn new(amqp_url: impl Into<String>, redis_url: impl Into<String>, names: Names) -> Self {
        Self {
            amqp_url: amqp_url.into(),
            redis_url: redis_url.into(),
            names,
            s3: Default::default(),
            report_prefetch: 64,
            name: "flotilla-scheduler".into(),
            organizations: Default::default(),
            lease_ttl: std::time::Duration::from_secs(10),
            clock: crate::schedules::SchedulerClock::system(),
            // Fail closed: `api::run` turns it off only for an API without
            // authentication.
            authenticated: true,
            audit_output: None,
            read_only_documents: crate::approvals::default_read_only_documents(),
            redis_tls: store::RedisTls::default(),
            amqp_tls: broker::BrokerTls::default(),
            keys: protocol::signing::Keyring::default(),
            max_locations: protocol::campaign::DEFAULT_MAX_LOCATIONS,
            discovery_window: crate::runs::DISCOVERY_WINDOW,
            notify: crate::notify::NotifySettings::default(),
            egress: crate::egress::EgressPolicy::default(),
            output_roots: crate::sink::OutputRoots::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_config_shown_for_debugging_shows_no_secret() {
        let mut config = SchedulerConfig::new(
            "amqp://flotilla:amqp-secret@rabbitmq:5672/%2f",
            "redis://:redis-secret@redis:6379/",
            Names::default(),
        );
        config.s3.credentials = Some(("AKIAEXAMPLE".into(), "s3-secret".into()));
        let shown = format!("{config:?}");
        for secret in ["amqp-secret", "redis-secret", "s3-secret"] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        assert!(shown.contains("AKIAEXAMPLE") && shown.contains("rabbitmq:5672"));
    }
}
