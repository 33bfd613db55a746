//! What the ledger answers about one run: its record, counters, locations
//! and their states. Reads only.

use std::collections::HashMap;

use protocol::job::Location;
use protocol::run_fields::RunField;
use redis::AsyncCommands;
use uuid::Uuid;

use super::model::location_statuses;
use super::{Ledger, LocationStatus, RunFields, parse_location};
use crate::SchedulerError;

impl Ledger {
    pub async fn run_fields(&self, run_id: Uuid) -> Result<Option<RunFields>, SchedulerError> {
        let mut connection = self.connection.clone();
        let fields: HashMap<String, String> =
            connection.hgetall(self.names.run_key(run_id)).await?;
        Ok((!fields.is_empty()).then_some(RunFields(fields)))
    }

    /// [`Ledger::run_fields`] of a run that must exist: a missing record is
    /// [`SchedulerError::UnknownRun`].
    pub async fn known_run_fields(&self, run_id: Uuid) -> Result<RunFields, SchedulerError> {
        self.run_fields(run_id)
            .await?
            .ok_or(SchedulerError::UnknownRun(run_id))
    }

    /// Only `fields` of a run that must exist (and its state), in one HMGET:
    /// what the report path reads after each report, without the spec and
    /// contract a whole record carries.
    pub async fn known_run_fields_of(
        &self,
        run_id: Uuid,
        fields: &[RunField],
    ) -> Result<RunFields, SchedulerError> {
        let mut connection = self.connection.clone();
        let names: Vec<&str> = std::iter::once(RunField::State)
            .chain(fields.iter().copied())
            .map(RunField::as_str)
            .collect();
        let values: Vec<Option<String>> = redis::cmd("HMGET")
            .arg(self.names.run_key(run_id))
            .arg(&names)
            .query_async(&mut connection)
            .await?;
        // Every run record has a state: none means no record.
        if values.first().is_none_or(Option::is_none) {
            return Err(SchedulerError::UnknownRun(run_id));
        }
        Ok(RunFields(
            names
                .into_iter()
                .zip(values)
                .filter_map(|(name, value)| Some((name.to_string(), value?)))
                .collect(),
        ))
    }

    pub async fn counters(&self, run_id: Uuid) -> Result<HashMap<String, u64>, SchedulerError> {
        let mut connection = self.connection.clone();
        Ok(connection
            .hgetall(self.names.run_counters_key(run_id))
            .await?)
    }

    /// The run's locations in admission order.
    pub async fn locations(&self, run_id: Uuid) -> Result<Vec<Location>, SchedulerError> {
        let mut connection = self.connection.clone();
        let keys: Vec<String> = connection
            .lrange(self.names.run_locations_key(run_id), 0, -1)
            .await?;
        keys.iter().map(|key| parse_location(key)).collect()
    }

    /// Every location with its state, in admission order.
    pub async fn location_statuses(
        &self,
        run_id: Uuid,
    ) -> Result<Vec<LocationStatus>, SchedulerError> {
        let mut connection = self.connection.clone();
        let locations: Vec<String> = connection
            .lrange(self.names.run_locations_key(run_id), 0, -1)
            .await?;
        let state: HashMap<String, String> = connection
            .hgetall(self.names.run_location_state_key(run_id))
            .await?;
        location_statuses(&locations, &state)
    }
}
