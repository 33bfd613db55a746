//! The `flotilla` command line.
//!
//! - [`cli`]: argument definitions and the offline subcommands (validate,
//!   schedule, sim).
//! - [`services`]: the long-running services (worker, scheduler).
//! - [`commands`]: the operator's subcommands (campaign, run, kill, report),
//!   through [`client`], the scheduler API's client.
//! - [`watch`]: a run's live progress (`run watch`, the demo).
//! - [`report`]: `flotilla report`'s model and formats (table, CSV, JSON,
//!   self-contained HTML).
//! - [`admin`]: `flotilla admin purge`, removing a deployment's queues and keys.
//! - [`access`]: `flotilla token` and `flotilla audit`.
//! - [`keys`]: `flotilla keys`, and how services load their signing keys.
//! - [`demo`]: `flotilla demo`, the whole system in one process.
//! - [`bench`]: `flotilla bench`, the benchmark suite.
//! - [`reference`]: the book's CLI and configuration pages, from the code.

pub mod access;
pub mod admin;
pub mod bench;
pub mod cli;
pub mod client;
pub mod commands;
pub mod demo;
pub mod keys;
pub mod reference;
pub mod report;
pub mod services;
pub mod watch;
