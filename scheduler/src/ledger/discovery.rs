//! A run's discovery in the ledger: opening locations' discovery within the
//! window, recording which Discover jobs were published, each page of
//! targets as a worker reports it, and locations whose discovery failed.

use protocol::job::Location;
use redis::AsyncCommands;
use uuid::Uuid;

use super::{Ledger, PageRecorded, StoredPage, WindowGroup, location_key};
use crate::SchedulerError;
use crate::scripts::{LOCATION_FAILED, OPEN_DISCOVERY, RECORD_PAGE};

impl Ledger {
    /// Opens the discovery of the run's next locations, keeping at most
    /// `window` open at once and opening at least `chunk` (or all that are
    /// left); returns their indexes in the run's location list.
    pub async fn open_discovery(
        &self,
        run_id: Uuid,
        window: usize,
        chunk: usize,
    ) -> Result<Vec<usize>, SchedulerError> {
        let mut connection = self.connection.clone();
        let opened: Vec<usize> = self
            .invocation(&OPEN_DISCOVERY, run_id)
            .arg(window)
            .arg(chunk)
            .invoke_async(&mut connection)
            .await?;
        self.replicated(run_id).await?;
        Ok(opened)
    }

    /// Records that the Discover jobs of these opened locations are published.
    pub async fn discovery_published(
        &self,
        run_id: Uuid,
        location_keys: &[String],
    ) -> Result<(), SchedulerError> {
        if location_keys.is_empty() {
            return Ok(());
        }
        let mut connection = self.connection.clone();
        let fields: Vec<(String, u8)> = location_keys
            .iter()
            .map(|key| (format!("{key}:published"), 1))
            .collect();
        let () = connection
            .hset_multiple(self.names.run_location_state_key(run_id), &fields)
            .await?;
        self.replicated(run_id).await
    }

    /// The location keys whose discovery is open, not finished, and whose
    /// Discover job is not known to be published (its publisher died).
    pub async fn discovery_unpublished(&self, run_id: Uuid) -> Result<Vec<String>, SchedulerError> {
        let mut connection = self.connection.clone();
        let open: Vec<String> = connection
            .smembers(self.names.run_discovering_key(run_id))
            .await?;
        if open.is_empty() {
            return Ok(open);
        }
        let fields: Vec<String> = open.iter().map(|key| format!("{key}:published")).collect();
        let published: Vec<Option<String>> = redis::cmd("HMGET")
            .arg(self.names.run_location_state_key(run_id))
            .arg(&fields)
            .query_async(&mut connection)
            .await?;
        Ok(open
            .into_iter()
            .zip(published)
            .filter_map(|(key, published)| published.is_none().then_some(key))
            .collect())
    }

    /// Returns (new, discovery complete).
    pub async fn record_page(
        &self,
        run_id: Uuid,
        location: &Location,
        page: u32,
        instance_ids: &[String],
        last_page: bool,
    ) -> Result<PageRecorded, SchedulerError> {
        self.record_stored_page(
            run_id,
            location,
            page,
            &StoredPage::Ids(instance_ids.to_vec()),
            instance_ids.len(),
            last_page,
        )
        .await
    }

    /// [`Self::record_page`] of a run with per-target windows: the page's
    /// instances by window.
    pub async fn record_windowed_page(
        &self,
        run_id: Uuid,
        location: &Location,
        page: u32,
        groups: Vec<WindowGroup>,
        last_page: bool,
    ) -> Result<PageRecorded, SchedulerError> {
        let count = groups.iter().map(|group| group.instance_ids.len()).sum();
        let stored = StoredPage::Windowed(groups);
        self.record_stored_page(run_id, location, page, &stored, count, last_page)
            .await
    }

    async fn record_stored_page(
        &self,
        run_id: Uuid,
        location: &Location,
        page: u32,
        stored: &StoredPage,
        count: usize,
        last_page: bool,
    ) -> Result<PageRecorded, SchedulerError> {
        let mut connection = self.connection.clone();
        let (new, location_discovered, all_discovered): (u8, u8, u8) = self
            .invocation(&RECORD_PAGE, run_id)
            .arg(location_key(location))
            .arg(page)
            .arg(serde_json::to_string(stored)?)
            .arg(count)
            .arg(u8::from(last_page))
            .invoke_async(&mut connection)
            .await?;
        self.replicated(run_id).await?;
        Ok(PageRecorded {
            new: new == 1,
            location_discovered: location_discovered == 1,
            all_discovered: all_discovered == 1,
        })
    }

    /// Returns (new, discovery complete).
    pub async fn record_location_failed(
        &self,
        run_id: Uuid,
        location: &Location,
        reason: &str,
        run_wide: bool,
    ) -> Result<(bool, bool), SchedulerError> {
        let mut connection = self.connection.clone();
        let (new, complete): (u8, u8) = self
            .invocation(&LOCATION_FAILED, run_id)
            .arg(location_key(location))
            .arg(reason)
            .arg(if run_wide { "1" } else { "0" })
            .invoke_async(&mut connection)
            .await?;
        self.replicated(run_id).await?;
        Ok((new == 1, complete == 1))
    }
}
