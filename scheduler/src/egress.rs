//! The egress policy: which hosts the scheduler may reach on a campaign's or
//! the deployment's behalf (rollout gates, notification webhooks, the OIDC
//! key set). A URL passes only if its host is on the deployment's allow list,
//! it is `https` (plain `http` only to a host explicitly allowed so, for
//! tests), and it carries no user or password. Checked when a campaign is
//! applied and again right before every request; redirects are never
//! followed and answers are reported by status, never by body.

use ureq::http::Uri;

/// The deployment's outbound allow lists (`--egress-allow-host`,
/// `--egress-allow-plain-http`). Empty: nothing may be reached.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EgressPolicy {
    /// Hosts (`alerts.example.com`) or domains (`*.example.com`: its
    /// subdomains) that may be reached over https.
    pub allowed_hosts: Vec<String>,
    /// Hosts that may be reached over plain http too (exact names: tests,
    /// a sidecar on loopback). Each is also allowed over https.
    pub plain_http_hosts: Vec<String>,
}

impl EgressPolicy {
    /// A policy allowing `hosts` over https and plain http (tests).
    pub fn plain_http_to(hosts: &[&str]) -> Self {
        Self {
            allowed_hosts: Vec::new(),
            plain_http_hosts: hosts.iter().map(|host| host.to_string()).collect(),
        }
    }

    /// Ok when `url` may be requested; else why not, naming `what` (e.g.
    /// "the gate URL"), the host and the flag that would allow it.
    pub fn check(&self, what: &str, url: &str) -> Result<(), String> {
        let uri: Uri = url
            .parse()
            .map_err(|_| format!("{what} {} is not a URL", redacted_url(url)))?;
        let Some(authority) = uri.authority() else {
            return Err(format!("{what} {} names no host", redacted_url(url)));
        };
        if authority.as_str().contains('@') {
            return Err(format!(
                "{what} {} carries a user or password: put credentials elsewhere",
                redacted_url(url)
            ));
        }
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_ascii_lowercase();
        let plain_allowed = self
            .plain_http_hosts
            .iter()
            .any(|allowed| allowed.eq_ignore_ascii_case(&host));
        match uri.scheme_str() {
            Some("https") => {}
            Some("http") if plain_allowed => {}
            Some("http") => {
                return Err(format!(
                    "{what} {} is plain http: only https, or plain http to a host the deployment allows so (--egress-allow-plain-http {host})",
                    redacted_url(url)
                ));
            }
            _ => {
                return Err(format!("{what} {} is not an https URL", redacted_url(url)));
            }
        }
        let allowed = plain_allowed
            || self.allowed_hosts.iter().any(|allowed| {
                let allowed = allowed.to_ascii_lowercase();
                match allowed.strip_prefix("*.") {
                    Some(domain) => host.ends_with(&format!(".{domain}")),
                    None => allowed == host,
                }
            });
        if !allowed {
            return Err(format!(
                "{what} {}: host {host} is not on the deployment's outbound allow list (--egress-allow-host {host} allows it{})",
                redacted_url(url),
                if self.allowed_hosts.is_empty() && self.plain_http_hosts.is_empty() {
                    "; the list is empty, so nothing may be reached".to_string()
                } else {
                    String::new()
                }
            ));
        }
        Ok(())
    }
}

/// Every outbound URL a campaign names, and what each is: its rollout's
/// gates and its webhooks.
pub fn campaign_urls(campaign: &protocol::Campaign) -> Vec<(&'static str, &str)> {
    let mut urls = Vec::new();
    for gate in campaign.rollout.iter().flat_map(|rollout| &rollout.gates) {
        urls.push(("the rollout gate URL", gate.url()));
    }
    for notify in &campaign.notify {
        urls.push(("the webhook", notify.webhook.as_str()));
    }
    urls
}

impl EgressPolicy {
    /// Ok when every outbound URL of `campaign` may be reached; else each
    /// refusal, one per line.
    pub fn check_campaign(&self, campaign: &protocol::Campaign) -> Result<(), String> {
        let refusals: Vec<String> = campaign_urls(campaign)
            .into_iter()
            .filter_map(|(what, url)| self.check(what, url).err())
            .collect();
        if refusals.is_empty() {
            Ok(())
        } else {
            Err(refusals.join("\n"))
        }
    }
}

/// A URL as logs and errors show it: scheme, host and port; no path, query
/// or user (a Slack webhook's path is its secret).
pub fn redacted_url(url: &str) -> String {
    match url.parse::<Uri>() {
        Ok(uri) => match (uri.scheme_str(), uri.authority()) {
            (Some(scheme), Some(authority)) => {
                let host = authority.as_str().rsplit('@').next().unwrap_or_default();
                let rest = if uri.path().len() > 1 || uri.query().is_some() {
                    "/…"
                } else {
                    ""
                };
                format!("{scheme}://{host}{rest}")
            }
            _ => "<a URL>".to_string(),
        },
        Err(_) => "<not a URL>".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> EgressPolicy {
        EgressPolicy {
            allowed_hosts: vec!["alerts.example.com".into(), "*.hooks.example.org".into()],
            plain_http_hosts: vec!["127.0.0.1".into()],
        }
    }

    #[test]
    fn only_allowed_hosts_over_https_pass() {
        let policy = policy();
        for good in [
            "https://alerts.example.com/api",
            "https://ALERTS.example.com:8443/x?y=1",
            "https://a.hooks.example.org/T0/B0/secret",
            "http://127.0.0.1:9090/api/v1/query",
            "https://127.0.0.1:9093",
        ] {
            assert!(policy.check("the gate URL", good).is_ok(), "{good}");
        }
        for (bad, why) in [
            ("http://alerts.example.com/", "plain http"),
            (
                "https://evil.example.com/",
                "not on the deployment's outbound allow list",
            ),
            (
                "https://hooks.example.org/",
                "not on the deployment's outbound allow list",
            ),
            (
                "https://alerts.example.com.evil.net/",
                "not on the deployment's outbound allow list",
            ),
            ("https://user:pw@alerts.example.com/", "user or password"),
            ("http://localhost:6379/", "plain http"),
            ("http://[::1]:6379/", "plain http"),
            ("http://2130706433/", "plain http"),
            ("http://0x7f.0.0.1/", "plain http"),
            ("file:///etc/passwd", "not a"),
            ("gopher://127.0.0.1:6379/_FLUSHALL", "not an https URL"),
            ("not a url", "not a URL"),
        ] {
            let error = policy.check("the gate URL", bad).unwrap_err();
            assert!(error.contains(why), "{bad}: {error}");
        }
        let empty = EgressPolicy::default()
            .check("the webhook", "https://a.example.com")
            .unwrap_err();
        assert!(empty.contains("the list is empty"), "{empty}");
    }

    #[test]
    fn redacted_urls_keep_only_scheme_and_host() {
        assert_eq!(
            redacted_url("https://hooks.slack.com/services/T0/B0/XXXX"),
            "https://hooks.slack.com/…"
        );
        assert_eq!(
            redacted_url("https://user:pw@example.com:8443/?token=1"),
            "https://example.com:8443/…"
        );
        assert_eq!(redacted_url("https://example.com"), "https://example.com");
        assert_eq!(redacted_url("::::"), "<not a URL>");
    }
}
