//! API tokens made through the API (`POST /tokens`), kept in Redis as hash → record; never the token itself. Tokens made
//! offline live in the tokens file ([`crate::auth::TokensFile`]).

use redis::AsyncCommands;

use crate::auth::{Principal, TokenRecord, check_principal_name, new_token, token_hash};
use crate::{Scheduler, SchedulerError, now_ms};

/// The most tokens kept in Redis.
const MAX_STORED_TOKENS: usize = 10_000;

impl Scheduler {
    /// The stored record of the token whose hash is `sha256`; a record that
    /// does not parse is an error (fail closed), not a missing token.
    pub async fn stored_token(&self, sha256: &str) -> Result<Option<TokenRecord>, SchedulerError> {
        let json: Option<String> = {
            let mut connection = self.ledger.connection();
            connection
                .hget(self.broker.names().tokens_key(), sha256)
                .await?
        };
        json.map(|json| {
            serde_json::from_str(&json)
                .map_err(|error| SchedulerError::Corrupt(format!("token record: {error}")))
        })
        .transpose()
    }

    /// Every stored token's record.
    pub async fn stored_tokens(&self) -> Result<Vec<TokenRecord>, SchedulerError> {
        let entries: Vec<(String, String)> = {
            let mut connection = self.ledger.connection();
            connection.hgetall(self.broker.names().tokens_key()).await?
        };
        let mut records = entries
            .into_iter()
            .map(|(_, json)| {
                serde_json::from_str::<TokenRecord>(&json)
                    .map_err(|error| SchedulerError::Corrupt(format!("token record: {error}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        records.sort_by(|a, b| (&a.name, a.created_ms).cmp(&(&b.name, b.created_ms)));
        Ok(records)
    }

    /// Makes a token for `name` with `role`; returns the token (shown once)
    /// and its record.
    pub async fn create_token(
        &self,
        name: &str,
        role: crate::auth::Role,
        expires_ms: Option<u64>,
        created_by: &Principal,
    ) -> Result<(String, TokenRecord), SchedulerError> {
        check_principal_name(name).map_err(SchedulerError::Invalid)?;
        if self.stored_tokens().await?.len() >= MAX_STORED_TOKENS {
            return Err(SchedulerError::Invalid(format!(
                "{MAX_STORED_TOKENS} tokens are stored already; revoke some first"
            )));
        }
        let token = new_token().map_err(SchedulerError::Internal)?;
        let record = TokenRecord {
            name: name.to_string(),
            role,
            sha256: token_hash(&token),
            created_ms: now_ms(),
            expires_ms,
            created_by: created_by.name.clone(),
        };
        let json = serde_json::to_string(&record)?;
        {
            let mut connection = self.ledger.connection();
            let () = connection
                .hset(self.broker.names().tokens_key(), &record.sha256, json)
                .await?;
        }
        Ok((token, record))
    }

    /// Revokes every stored token of `name`; how many there were.
    pub async fn revoke_tokens(&self, name: &str) -> Result<usize, SchedulerError> {
        let hashes: Vec<String> = self
            .stored_tokens()
            .await?
            .into_iter()
            .filter(|record| record.name == name)
            .map(|record| record.sha256)
            .collect();
        if hashes.is_empty() {
            return Ok(0);
        }
        {
            let mut connection = self.ledger.connection();
            let _: u64 = connection
                .hdel(self.broker.names().tokens_key(), &hashes)
                .await?;
        }
        Ok(hashes.len())
    }
}
