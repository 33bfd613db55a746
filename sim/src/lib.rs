//! An AWS-compatible fleet simulator (STS, SSM, Organizations wire protocols) for
//! the demo, the tests and the benchmarks.
//!
//! Not built yet (issue "Fleet simulator: an AWS-compatible STS + SSM +
//! Organizations endpoint on loopback").
