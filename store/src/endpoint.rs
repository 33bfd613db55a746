//! Where flotilla's Redis is, from the one `--redis-url`:
//!
//! - `redis://host:port/db`, `rediss://…` — one node (TLS with `rediss`);
//! - `redis+cluster://[user:password@]host1:port,host2:port` (`rediss+cluster`
//!   for TLS) — a Redis Cluster, from any of its nodes (seeds; the rest are
//!   found through `CLUSTER SLOTS`), as ElastiCache and MemoryDB in cluster mode;
//! - `redis+sentinel://[user:password@]host1:port,host2:port/master-name`
//!   (`rediss+sentinel`) — the master that Redis Sentinel names, found again
//!   after a failover; the credentials are the master's, the sentinels are
//!   reached without;
//! - `memory://name` — the in-memory Redis of that name.
//!
//! Any of the Redis forms may end in `?wait_replicas=N` (0 to
//! [`MAX_WAIT_REPLICAS`]): the writes that must survive a failover wait until
//! N replicas hold them (`store::Connection::replicated`).

use crate::StoreError;

/// At most this many seed nodes or sentinels in one URL.
pub const MAX_NODES: usize = 64;

/// At most this many replicas are waited for.
pub const MAX_WAIT_REPLICAS: u32 = 16;

/// What a URL's query sets, for every Redis form.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Options {
    /// Replicas that must hold a write the caller must not lose.
    pub wait_replicas: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    Memory(String),
    /// One node's URL, as given.
    Node(String),
    /// The seed nodes as `redis://` (or `rediss://`) URLs with the credentials.
    Cluster {
        seeds: Vec<String>,
    },
    Sentinel {
        /// The sentinels as `redis://` (or `rediss://`) URLs, no credentials.
        sentinels: Vec<String>,
        master: String,
        username: Option<String>,
        password: Option<String>,
        tls: bool,
    },
}

impl Endpoint {
    pub fn parse(url: &str) -> Result<Self, StoreError> {
        Self::parse_with_options(url).map(|(endpoint, _)| endpoint)
    }

    /// What to check when this endpoint does not answer: starting a local
    /// Redis helps only when every node it names is on this machine.
    pub fn unreachable_hint(&self) -> &'static str {
        let local = |nodes: &[String]| {
            nodes.iter().all(|node| {
                redis::parse_redis_url(node).is_some_and(|url| {
                    matches!(url.host_str(), Some("127.0.0.1" | "localhost" | "[::1]"))
                })
            })
        };
        match self {
            Self::Memory(_) => "the in-memory Redis lives in this process",
            Self::Node(node) if local(std::slice::from_ref(node)) => {
                "start it with `redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save \"\" --appendonly no` or `docker compose up -d redis`"
            }
            Self::Node(_) => {
                "check that it runs and is reachable, and that the host, port and credentials in the URL are right"
            }
            Self::Cluster { seeds } if local(seeds) => {
                "are the cluster's nodes up? (the test suite's loopback cluster: `scripts/redis-topologies start`)"
            }
            Self::Cluster { .. } => {
                "are the cluster's seed nodes up and reachable, and the credentials in the URL right?"
            }
            Self::Sentinel { sentinels, .. } if local(sentinels) => {
                "are the sentinels up and do they name the master? (the test suite's: `scripts/redis-topologies start`)"
            }
            Self::Sentinel { .. } => {
                "are the sentinels up and reachable, do they name the master, and are the credentials in the URL right?"
            }
        }
    }

    /// The endpoint, and the options of the URL's query (taken out of it;
    /// a one-node URL keeps the redis crate's own parameters).
    pub fn parse_with_options(url: &str) -> Result<(Self, Options), StoreError> {
        let invalid = |what: String| {
            StoreError::Unexpected(format!(
                "--redis-url {}: {what}",
                protocol::redact_password(url)
            ))
        };
        // The query starts at the first '?' after the credentials.
        let after_credentials = url.rfind('@').map_or(0, |at| at + 1);
        let (base, query) = match url[after_credentials..].find('?') {
            Some(at) => (
                &url[..after_credentials + at],
                &url[after_credentials + at + 1..],
            ),
            None => (url, ""),
        };
        let mut options = Options::default();
        let mut kept = Vec::new();
        for pair in query.split('&').filter(|pair| !pair.is_empty()) {
            match pair.split_once('=') {
                Some(("wait_replicas", value)) => {
                    options.wait_replicas = value
                        .parse()
                        .ok()
                        .filter(|count| *count <= MAX_WAIT_REPLICAS)
                        .ok_or_else(|| {
                            invalid(format!(
                                "wait_replicas={value:?} is not a number from 0 to {MAX_WAIT_REPLICAS}"
                            ))
                        })?;
                }
                _ => kept.push(pair),
            }
        }
        let endpoint = Self::parse_base(base, &invalid)?;
        match &endpoint {
            Self::Memory(_) if options.wait_replicas > 0 => {
                return Err(invalid(
                    "the in-memory Redis has no replicas; remove wait_replicas".into(),
                ));
            }
            Self::Node(node) if !kept.is_empty() => {
                return Ok((Self::Node(format!("{node}?{}", kept.join("&"))), options));
            }
            Self::Memory(_) | Self::Node(_) => {}
            Self::Cluster { .. } | Self::Sentinel { .. } => {
                if let Some(unknown) = kept.first() {
                    return Err(invalid(format!(
                        "unknown parameter {unknown:?}; a cluster or Sentinel URL takes wait_replicas=N only"
                    )));
                }
            }
        }
        Ok((endpoint, options))
    }

    fn parse_base(base: &str, invalid: &dyn Fn(String) -> StoreError) -> Result<Self, StoreError> {
        if let Some(name) = protocol::names::in_memory_name(base) {
            return Ok(Self::Memory(name.to_string()));
        }
        let Some((scheme, rest)) = base.split_once("://") else {
            return Err(invalid(
                "not a URL; use redis://host:port, rediss://…, redis+cluster://host:port,host:port, redis+sentinel://host:port,…/master or memory://name".into(),
            ));
        };
        let (kind, tls) = match scheme {
            "redis" | "rediss" => return Ok(Self::Node(base.to_string())),
            "redis+cluster" => ("cluster", false),
            "rediss+cluster" => ("cluster", true),
            "redis+sentinel" => ("sentinel", false),
            "rediss+sentinel" => ("sentinel", true),
            other => {
                return Err(invalid(format!(
                    "scheme {other:?} is not one of redis, rediss, redis+cluster, rediss+cluster, redis+sentinel, rediss+sentinel, memory"
                )));
            }
        };
        let node_scheme = if tls { "rediss" } else { "redis" };
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        let (userinfo, hosts) = match authority.rsplit_once('@') {
            Some((userinfo, hosts)) => (Some(userinfo), hosts),
            None => (None, authority),
        };
        let default_port = if kind == "cluster" { 6379 } else { 26379 };
        let nodes = parse_hosts(hosts, default_port).map_err(invalid)?;
        if kind == "cluster" {
            if !path.is_empty() {
                return Err(invalid(format!(
                    "a cluster has one database; remove the path {path:?}"
                )));
            }
            let credentials = userinfo.map(|info| format!("{info}@")).unwrap_or_default();
            let seeds = nodes
                .iter()
                .map(|node| format!("{node_scheme}://{credentials}{node}"))
                .collect();
            return Ok(Self::Cluster { seeds });
        }
        let master = path.trim_end_matches('/');
        if master.is_empty()
            || master.len() > 128
            || !master
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            return Err(invalid(format!(
                "the master name {master:?} must be 1 to 128 letters, digits, '-', '_' or '.' (redis+sentinel://host:port,…/master-name)"
            )));
        }
        let (username, password) = match userinfo {
            None => (None, None),
            Some(info) => match info.split_once(':') {
                Some((user, password)) => (
                    (!user.is_empty()).then(|| user.to_string()),
                    Some(password.to_string()),
                ),
                None => (Some(info.to_string()), None),
            },
        };
        Ok(Self::Sentinel {
            sentinels: nodes
                .iter()
                .map(|node| format!("{node_scheme}://{node}"))
                .collect(),
            master: master.to_string(),
            username,
            password,
            tls,
        })
    }
}

/// `host:port,host:port` → each `host:port`, checked.
fn parse_hosts(hosts: &str, default_port: u16) -> Result<Vec<String>, String> {
    let nodes: Vec<&str> = hosts.split(',').collect();
    if nodes.len() > MAX_NODES {
        return Err(format!(
            "{} nodes are listed; at most {MAX_NODES} are allowed",
            nodes.len()
        ));
    }
    nodes
        .into_iter()
        .map(|node| {
            let (host, port) = match node.rsplit_once(':') {
                Some((host, port)) => {
                    let port: u16 = port.parse().map_err(|_| {
                        format!("the port of {node:?} is not a number from 1 to 65535")
                    })?;
                    (host, port)
                }
                None => (node, default_port),
            };
            let valid_host = !host.is_empty()
                && host
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '[' | ']' | ':'));
            if !valid_host || port == 0 {
                return Err(format!(
                    "{node:?} is not host:port (every node of the list, comma-separated)"
                ));
            }
            Ok(format!("{host}:{port}"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unreachable_redis_is_explained_for_the_endpoint_it_was_reached_at() {
        let hint = |url: &str| Endpoint::parse(url).unwrap().unreachable_hint();
        assert!(hint("redis://127.0.0.1:6379/").starts_with("start it with `redis-server"));
        assert!(hint("redis://user:pw@localhost:6379/0").starts_with("start it with"));
        assert!(
            !hint("rediss://flotilla:pw@cache.abc123.use1.cache.amazonaws.com:6379")
                .contains("redis-server"),
            "a remote Redis is not started here"
        );
        assert!(hint("redis+cluster://127.0.0.1:7101,127.0.0.1:7102").contains("redis-topologies"));
        let remote_cluster = hint("rediss+cluster://u:pw@node-1.example:6379,node-2.example:6379");
        assert!(remote_cluster.contains("seed nodes") && !remote_cluster.contains("redis-server"));
        assert!(hint("redis+sentinel://10.0.0.5:26379/mymaster").contains("sentinels"));
    }

    #[test]
    fn one_node_cluster_and_sentinel_urls() {
        assert_eq!(
            Endpoint::parse("redis://127.0.0.1:6379/0").unwrap(),
            Endpoint::Node("redis://127.0.0.1:6379/0".into())
        );
        assert_eq!(
            Endpoint::parse("redis+cluster://app:pw@10.0.0.1:7000,10.0.0.2").unwrap(),
            Endpoint::Cluster {
                seeds: vec![
                    "redis://app:pw@10.0.0.1:7000".into(),
                    "redis://app:pw@10.0.0.2:6379".into()
                ]
            }
        );
        assert_eq!(
            Endpoint::parse("rediss+sentinel://:pw@s1:26379,s2:26380/mymaster").unwrap(),
            Endpoint::Sentinel {
                sentinels: vec!["rediss://s1:26379".into(), "rediss://s2:26380".into()],
                master: "mymaster".into(),
                username: None,
                password: Some("pw".into()),
                tls: true,
            }
        );
        assert_eq!(
            Endpoint::parse("memory://demo").unwrap(),
            Endpoint::Memory("demo".into())
        );
    }

    #[test]
    fn wait_replicas_comes_out_of_every_form_and_other_parameters_stay_where_they_belong() {
        let (endpoint, options) =
            Endpoint::parse_with_options("redis+cluster://u:p?w@h1:7000,h2:7001?wait_replicas=1")
                .unwrap();
        assert_eq!(options.wait_replicas, 1);
        assert_eq!(
            endpoint,
            Endpoint::Cluster {
                seeds: vec![
                    "redis://u:p?w@h1:7000".into(),
                    "redis://u:p?w@h2:7001".into()
                ]
            }
        );
        let (endpoint, options) =
            Endpoint::parse_with_options("redis://h1:6379/2?protocol=resp3&wait_replicas=2")
                .unwrap();
        assert_eq!(options.wait_replicas, 2);
        assert_eq!(
            endpoint,
            Endpoint::Node("redis://h1:6379/2?protocol=resp3".into())
        );
        let (endpoint, options) =
            Endpoint::parse_with_options("redis+sentinel://s1:26379/m?wait_replicas=1").unwrap();
        assert_eq!(options.wait_replicas, 1);
        assert!(matches!(endpoint, Endpoint::Sentinel { master, .. } if master == "m"));
        let (_, options) = Endpoint::parse_with_options("redis://h1:6379").unwrap();
        assert_eq!(options, Options::default());
    }

    #[test]
    fn bad_urls_say_what_is_wrong_without_the_password() {
        for (url, expected) in [
            ("redis+sentinel://s1:26379", "master name"),
            ("redis+cluster://h1:7000,:7001", "is not host:port"),
            ("redis+cluster://h1:99999", "port"),
            ("redis+cluster://u:secret@h1:7000/3", "one database"),
            ("mysql://h1", "scheme \"mysql\""),
            ("h1:6379", "not a URL"),
            ("redis://u:secret@h1?wait_replicas=x", "wait_replicas=\"x\""),
            ("redis://u:secret@h1?wait_replicas=17", "from 0 to 16"),
            (
                "redis+cluster://u:secret@h1?tls=1",
                "unknown parameter \"tls=1\"",
            ),
            ("memory://demo?wait_replicas=1", "no replicas"),
        ] {
            let error = Endpoint::parse(url).unwrap_err().to_string();
            assert!(error.contains(expected), "{url}: {error}");
            assert!(!error.contains("secret"), "{error}");
        }
        let many = vec!["h:1"; MAX_NODES + 1].join(",");
        let error = Endpoint::parse(&format!("redis+cluster://{many}")).unwrap_err();
        assert!(error.to_string().contains("at most 64"), "{error}");
    }
}
