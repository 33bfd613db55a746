//! flotilla's worker: consumes jobs from RabbitMQ, assumes roles, calls SSM, polls
//! commands and reports results.
//!
//! Not built yet (issue "Worker: consume jobs, assume roles, run SSM commands …").
//! The jobs it will consume and the reports it will publish are in `protocol`.
