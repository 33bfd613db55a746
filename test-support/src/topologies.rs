//! Where the test suites find the Redis Cluster and the Sentinel-watched
//! Redis that `scripts/redis-topologies` starts on loopback (the test command
//! runs it), and what to say when they are not there.

/// The test cluster's URL (`FLOTILLA_TEST_REDIS_CLUSTER_URL` overrides).
/// Writes that must survive a failover wait for one replica, as the book (docs/src/how-to/clusters.md)
/// advises for every deployment with replicas.
pub fn cluster_url() -> String {
    std::env::var("FLOTILLA_TEST_REDIS_CLUSTER_URL").unwrap_or_else(|_| {
        "redis+cluster://127.0.0.1:7101,127.0.0.1:7102,127.0.0.1:7103?wait_replicas=1".into()
    })
}

/// The test Sentinel's URL (`FLOTILLA_TEST_REDIS_SENTINEL_URL` overrides),
/// waiting for its one replica as [`cluster_url`] does.
pub fn sentinel_url() -> String {
    std::env::var("FLOTILLA_TEST_REDIS_SENTINEL_URL").unwrap_or_else(|_| {
        "redis+sentinel://127.0.0.1:26401,127.0.0.1:26402,127.0.0.1:26403/flotilla?wait_replicas=1"
            .into()
    })
}

/// The failure message of a test whose Redis is not there.
pub fn needs(url: &str, error: &dyn std::fmt::Display) -> String {
    if url.contains("+cluster") || url.contains("+sentinel") {
        format!(
            "this test needs the Redis Cluster and Sentinel of scripts/redis-topologies ({url}): {error}; \
             run the tests with scripts/test, or start them with `scripts/redis-topologies start`"
        )
    } else {
        format!("this test needs Redis at {url}: {error}")
    }
}
