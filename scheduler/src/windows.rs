//! Maintenance windows: a campaign with `windows` sends commands only while
//! one is open. The run record holds `send_until_ms`, the end of the window
//! open now (0 while all are closed), and every worker checks it before each
//! SendCommand — so nothing is sent after a window closes, however late the
//! scheduler notices. The scheduler's ticker (every replica; the runs are
//! indexed by when to look at them next) moves a run Running ⇄
//! OutsideWindow as windows close and open, and keeps `send_until_ms` current.
//!
//! Per-target windows (`window_tag`): the run's windows together hold the
//! run as above; each batch also carries its instances' own window, which
//! the admission keeps to (a batch of a closed window is parked until it
//! opens: the ticker admits at every window's opening and closing) and the
//! worker checks right before SendCommand.

use chrono::Utc;
use protocol::Campaign;
use protocol::campaign::WindowState;
use protocol::run::RunState;
use uuid::Uuid;

use crate::{Scheduler, SchedulerError, now_ms};

/// Windowed runs looked at per tick.
const WINDOWED_PER_TICK: isize = 100;
/// A campaign whose windows never open again is looked at hourly.
const NO_WINDOW_AHEAD_MS: u64 = 3_600_000;

/// Unix ms of a time.
fn millis(at: chrono::DateTime<Utc>) -> u64 {
    u64::try_from(at.timestamp_millis()).unwrap_or(0)
}

/// The instant of Unix ms `ms` (None out of chrono's range).
fn instant(ms: u64) -> Option<chrono::DateTime<Utc>> {
    chrono::DateTime::from_timestamp_millis(i64::try_from(ms).ok()?)
}

fn describe(at: Option<chrono::DateTime<Utc>>) -> String {
    at.map_or_else(|| "never".into(), |at| at.to_rfc3339())
}

/// The `send_until_ms` a run of `campaign` has at `now_ms`: None without
/// windows, the open window's end, or 0 while they are all closed.
pub fn send_until(campaign: &Campaign, now_ms: u64) -> Option<u64> {
    Some(match campaign.window_at(instant(now_ms)?)? {
        WindowState::Open { until } => millis(until),
        WindowState::Closed { .. } => 0,
    })
}

/// Per-target windows: whether each of the campaign's windows is open at
/// `now_ms` (empty without `window_tag`).
pub fn open_target_windows(campaign: &Campaign, now_ms: u64) -> Vec<bool> {
    match instant(now_ms) {
        Some(now) => campaign.open_target_windows(now),
        // An instant no clock gives: every window closed (fail closed).
        None => vec![false; campaign.windows.len()],
    }
}

impl Scheduler {
    /// Once a second: every windowed run whose window opened or closed.
    pub(crate) async fn window_tick(&self) -> Result<(), SchedulerError> {
        let key = self.ledger().names().windowed_runs_key();
        for run_id in self
            .ledger()
            .due_runs(&key, now_ms(), WINDOWED_PER_TICK)
            .await?
        {
            match self.follow_window(run_id).await {
                Ok(Some(at)) => self.ledger().index_run(&key, run_id, at).await?,
                Ok(None) => self.ledger().unindex_run(&key, run_id).await?,
                Err(error) => {
                    crate::outage_or_log(error, &format!("maintenance window of run {run_id}"))?;
                    // Looked at again in a minute, not every tick.
                    self.ledger()
                        .index_run(&key, run_id, now_ms() + 60_000)
                        .await?;
                }
            }
        }
        Ok(())
    }

    /// Brings one run in line with its windows; returns when to look again
    /// (None: the run is over).
    async fn follow_window(&self, run_id: Uuid) -> Result<Option<u64>, SchedulerError> {
        let Some(fields) = self.ledger().run_fields(run_id).await? else {
            return Ok(None);
        };
        let state = fields.state()?;
        if state.is_final() {
            return Ok(None);
        }
        let plan = self.plan(run_id).await?;
        let now = protocol::clock::now_utc();
        match plan.campaign.window_at(now) {
            None => Ok(None),
            Some(WindowState::Open { until }) => {
                self.ledger().set_send_until(run_id, millis(until)).await?;
                if state == RunState::OutsideWindow
                    && self
                        .ledger()
                        .transition(
                            run_id,
                            &[RunState::OutsideWindow],
                            RunState::Running,
                            &format!("maintenance window open until {}", describe(Some(until))),
                        )
                        .await?
                {
                    tracing::info!(%run_id, "maintenance window opened");
                    self.advance(run_id).await?;
                } else if plan.campaign.window_tag.is_some() && state == RunState::Running {
                    // Per-target windows: one opened (its parked batches are
                    // admitted) or closed (its waiting batches are parked).
                    self.advance(run_id).await?;
                }
                if plan.campaign.window_tag.is_some() {
                    let next = plan.campaign.next_window_change(now).unwrap_or(until);
                    return Ok(Some(millis(next)));
                }
                Ok(Some(millis(until)))
            }
            Some(WindowState::Closed { opens }) => {
                // Workers stop first; the state follows for people.
                self.ledger().set_send_until(run_id, 0).await?;
                if state == RunState::Running
                    && self
                        .ledger()
                        .transition(
                            run_id,
                            &[RunState::Running],
                            RunState::OutsideWindow,
                            &format!(
                                "outside its maintenance windows; the next opens at {}",
                                describe(opens)
                            ),
                        )
                        .await?
                {
                    tracing::info!(%run_id, "maintenance window closed");
                }
                Ok(Some(opens.map_or(now_ms() + NO_WINDOW_AHEAD_MS, millis)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn campaign(windows: &str) -> Campaign {
        let yaml = format!(
            "name: w\nsteps:\n  - name: s\n    document: AWS-RunShellScript\n    parameters: {{ commands: [\"true\"] }}\naccounts: {{ ids: [\"111122223333\"] }}\nregions: [us-east-1]\ntargets: {{ all: true }}\n{windows}"
        );
        Campaign::parse(&yaml, protocol::SpecFormat::Yaml).unwrap()
    }

    fn at(text: &str) -> u64 {
        millis(
            chrono::DateTime::parse_from_rfc3339(text)
                .unwrap()
                .with_timezone(&Utc),
        )
    }

    #[test]
    fn a_window_is_open_from_its_occurrence_for_its_duration() {
        // Saturdays 22:00 for 4 h, in Berlin (UTC+1 in December).
        let saturday = campaign(
            "windows:\n  - schedule: cron(0 22 ? * SAT *)\n    duration: 4h\n    timezone: Europe/Berlin\n",
        );
        assert_eq!(send_until(&saturday, at("2026-12-05T20:59:59Z")), Some(0));
        assert_eq!(
            send_until(&saturday, at("2026-12-05T21:00:00Z")),
            Some(at("2026-12-06T01:00:00Z"))
        );
        assert_eq!(
            send_until(&saturday, at("2026-12-06T00:59:59Z")),
            Some(at("2026-12-06T01:00:00Z"))
        );
        assert_eq!(send_until(&saturday, at("2026-12-06T01:00:00Z")), Some(0));
        assert_eq!(
            saturday.window_at(
                chrono::DateTime::from_timestamp_millis(at("2026-12-06T01:00:00Z") as i64).unwrap()
            ),
            Some(WindowState::Closed {
                opens: chrono::DateTime::from_timestamp_millis(at("2026-12-12T21:00:00Z") as i64)
            })
        );
        assert_eq!(send_until(&campaign(""), 0), None, "no windows: any time");
    }

    #[test]
    fn overlapping_windows_are_open_until_the_last_one_ends() {
        let both = campaign(
            "windows:\n  - schedule: rate(1 hour)\n    duration: 10m\n  - schedule: cron(55 * * * ? *)\n    duration: 20m\n",
        );
        // 10:58: the :55 window (until 11:15) and, from 11:00, the hourly one.
        assert_eq!(
            send_until(&both, at("2026-12-05T11:05:00Z")),
            Some(at("2026-12-05T11:15:00Z"))
        );
        assert_eq!(send_until(&both, at("2026-12-05T11:20:00Z")), Some(0));
    }
}
