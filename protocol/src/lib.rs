//! flotilla's contract: everything scheduler and worker must agree on, and no IO.
//!
//! - [`spec`]: the campaign spec as written (YAML or JSON), shape only.
//! - [`campaign`]: validation of a spec into a typed [`campaign::Campaign`], every
//!   problem reported with its field path.
//! - [`validation`]: field paths and the error list validation produces.
//! - [`rate_control`]: max concurrency / max errors as counts or percentages, and
//!   their rounding.
//! - [`schedule`]: EventBridge `cron(…)` / `rate(…)` expressions and fire times.
//! - [`job`]: the jobs workers consume (Discover, Execute, Poll).
//! - [`report`]: what workers report back (targets discovered, results).
//! - [`run`]: a run's lifecycle states and what they allow workers to do.
//! - [`status`]: SSM's invocation statuses and which ones spend the error budget.
//! - [`envelope`]: the versioned wire format around bincode.
//! - [`names`]: queue, exchange and Redis key names.

pub mod campaign;
pub mod envelope;
pub mod job;
pub mod names;
pub mod rate_control;
pub mod report;
pub mod run;
pub mod schedule;
pub mod spec;
pub mod status;
pub mod validation;

pub use campaign::{Campaign, SpecFormat};
pub use job::Job;
pub use report::Report;
pub use validation::{FieldError, FieldErrors};
