//! What flotilla's test suites share, written once: a dev-dependency of
//! every crate's tests, never of a production build. A test that needs a
//! service this crate starts fails with a message saying how to install it.
//!
//! - [`ports`]: free loopback ports, and waiting for one to listen.
//! - [`pki`]: a test CA and the certificates it signs, as PEM files.
//! - [`redis`]: a redis-server of one test's own (plain or TLS), killed on
//!   drop, which the test may freeze and continue.
//! - [`topologies`]: where the test Redis Cluster and Sentinel of
//!   `scripts/redis-topologies` listen, and what to say when they do not.
//! - [`routes`]: the route patterns a router's source registers.
//! - [`proxy`]: a TCP proxy on loopback that adds latency, limits
//!   bandwidth, partitions, strands (half-open) or resets the connections
//!   of one client to a service.

pub mod pki;
pub mod ports;
pub mod proxy;
pub mod redis;
pub mod routes;
pub mod topologies;
