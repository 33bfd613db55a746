//! The `flotilla` command line.
//!
//! - [`cli`]: argument definitions and the offline subcommands (validate,
//!   schedule, sim).
//! - [`services`]: the subcommands that run against RabbitMQ and Redis
//!   (worker, scheduler, run start).

pub mod cli;
pub mod services;
