//! flotilla's scheduler: runs → locations → jobs, admission, error budgets,
//! schedules, events, result aggregation, reports and the HTTP API.
//!
//! Not built yet (issue "Scheduler: runs, admission, error budgets, …"). The
//! contract it will speak — campaigns, jobs, reports, queue and key names — is in
//! the `protocol` crate.
