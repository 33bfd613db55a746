//! The campaign store: specs in Redis, versioned. Applying a spec that differs
//! from the latest stored one makes a new version; applying the same spec again
//! changes nothing. Runs keep a copy of the spec they started with, so deleting
//! or changing a campaign never disturbs a run.

use std::sync::LazyLock;

use protocol::spec::CampaignSpec;
use protocol::{Campaign, SpecFormat};
use redis::{AsyncCommands, Script};
use serde::Serialize;

use crate::{Scheduler, SchedulerError, now_ms};

static APPLY: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("lua/campaign_apply.lua")));

/// A stored campaign as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct CampaignVersion {
    pub name: String,
    /// flotilla's version counter (the spec's own `version` is inside `spec`).
    pub version: u32,
    pub updated_ms: u64,
    pub spec: CampaignSpec,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct Applied {
    pub version: u32,
    pub changed: bool,
}

impl Scheduler {
    /// Stores a campaign, written by the library's caller (`system`).
    pub async fn apply_campaign(&self, campaign: &Campaign) -> Result<Applied, SchedulerError> {
        self.apply_campaign_by(campaign, "system").await
    }

    /// Stores a campaign written by `author`: a changed spec becomes a new
    /// version whose author is recorded (the two-person rule needs it).
    pub async fn apply_campaign_by(
        &self,
        campaign: &Campaign,
        author: &str,
    ) -> Result<Applied, SchedulerError> {
        // Outbound URLs only to hosts the deployment allows.
        self.config
            .egress
            .check_campaign(campaign)
            .map_err(SchedulerError::Invalid)?;
        // Results only under the deployment's roots and buckets.
        self.config
            .output_roots
            .check(&campaign.output)
            .map_err(SchedulerError::Invalid)?;
        let names = self.broker.names();
        let spec = serde_json::to_string(&campaign.spec)?;
        // Stored specs are parsed again, under the same bound.
        if spec.len() > protocol::campaign::MAX_SPEC_BYTES {
            return Err(SchedulerError::Invalid(format!(
                "the campaign spec is {} bytes as stored; at most {} are allowed",
                spec.len(),
                protocol::campaign::MAX_SPEC_BYTES
            )));
        }
        let mut connection = self.ledger.connection();
        let keys = names.campaign_script_keys(&campaign.name);
        let (version, changed): (u32, u8) = APPLY
            .key(&keys[..])
            .arg(&campaign.name)
            .arg(spec)
            .arg(now_ms())
            .arg(author)
            .arg(self.accepted_max_locations())
            .invoke_async(&mut connection)
            .await?;
        connection.replicated(&keys[0]).await?;
        Ok(Applied {
            version,
            changed: changed == 1,
        })
    }

    /// The latest version of a stored campaign, validated again.
    pub async fn stored_campaign(
        &self,
        name: &str,
    ) -> Result<Option<(Campaign, CampaignVersion)>, SchedulerError> {
        let Some((version, updated_ms, spec_json, max_locations)) =
            self.latest_campaign(name).await?
        else {
            return Ok(None);
        };
        // Under the limit it was accepted under: raising --max-locations
        // and lowering it again never makes a stored campaign unreadable
        // (a run's size is checked against today's limit as it starts).
        let max_locations = max_locations.unwrap_or_else(|| self.accepted_max_locations());
        let campaign = Campaign::parse_within(&spec_json, SpecFormat::Json, max_locations)
            .map_err(|errors| {
                SchedulerError::Corrupt(format!("stored campaign {name} is invalid: {errors}"))
            })?;
        let stored = CampaignVersion {
            name: name.to_string(),
            version,
            updated_ms,
            spec: campaign.spec.clone(),
        };
        Ok(Some((campaign, stored)))
    }

    /// The location limit a spec accepted now is accepted under: this
    /// scheduler's `--max-locations`, and never less than the default.
    pub(crate) fn accepted_max_locations(&self) -> u64 {
        self.config
            .max_locations
            .max(protocol::campaign::DEFAULT_MAX_LOCATIONS)
    }

    /// (latest version, updated ms, spec JSON, the location limit it was
    /// accepted under if recorded) of a stored campaign.
    async fn latest_campaign(
        &self,
        name: &str,
    ) -> Result<Option<(u32, u64, String, Option<u64>)>, SchedulerError> {
        let mut connection = self.ledger.connection();
        let key = self.broker.names().campaign_key(name);
        let (latest, updated_ms, deleted_ms): (Option<u32>, Option<u64>, Option<u64>) =
            redis::cmd("HMGET")
                .arg(&key)
                .arg("latest")
                .arg("updated_ms")
                .arg("deleted_ms")
                .query_async(&mut connection)
                .await?;
        let Some(version) = latest.filter(|_| deleted_ms.is_none()) else {
            return Ok(None);
        };
        let (spec_json, max_locations): (String, Option<u64>) = redis::cmd("HMGET")
            .arg(&key)
            .arg(format!("v:{version}"))
            .arg(format!("max_locations:{version}"))
            .query_async(&mut connection)
            .await?;
        Ok(Some((
            version,
            updated_ms.unwrap_or(0),
            spec_json,
            max_locations,
        )))
    }

    pub async fn campaign_names(&self) -> Result<Vec<String>, SchedulerError> {
        let mut connection = self.ledger.connection();
        let mut names: Vec<String> = connection
            .smembers(self.broker.names().campaigns_index_key())
            .await?;
        names.sort();
        Ok(names)
    }

    /// Retires a campaign's name: it lists and starts no more runs, but its
    /// versions stay readable by number (`GET /campaigns/{name}/versions/{v}`),
    /// for the audit; applying it again continues its version count. False
    /// if there was none (or it was deleted already).
    pub async fn delete_campaign(&self, name: &str) -> Result<bool, SchedulerError> {
        let names = self.broker.names();
        let mut connection = self.ledger.connection();
        let removed: u32 = connection.srem(names.campaigns_index_key(), name).await?;
        if removed == 0 {
            return Ok(false);
        }
        let () = connection
            .hset(names.campaign_key(name), "deleted_ms", now_ms())
            .await?;
        Ok(true)
    }

    /// One stored version by number, deleted campaigns' included; with its
    /// author and approval.
    pub async fn campaign_version(
        &self,
        name: &str,
        version: u32,
    ) -> Result<Option<(CampaignSpec, crate::approvals::Approval)>, SchedulerError> {
        let spec_json: Option<String> = {
            let mut connection = self.ledger.connection();
            connection
                .hget(
                    self.broker.names().campaign_key(name),
                    format!("v:{version}"),
                )
                .await?
        };
        let Some(spec_json) = spec_json else {
            return Ok(None);
        };
        let spec: CampaignSpec = serde_json::from_str(&spec_json).map_err(|error| {
            SchedulerError::Corrupt(format!("stored campaign {name} v{version}: {error}"))
        })?;
        let approval = self.approval(name, version).await?.ok_or_else(|| {
            SchedulerError::UnknownCampaignVersion {
                name: name.to_string(),
                version,
            }
        })?;
        Ok(Some((spec, approval)))
    }
}
