//! Rate limits shared by every worker: one token bucket per account-region-API
//! in the store, refilled at the campaign's `api_rate_limits`, so the fleet of
//! workers together never calls an account's API faster than allowed.

use std::time::Duration;

use store::{BucketId, Store, TokenGrant, TokenRequest};

use crate::JobError;

/// Longest a job waits for a token before handing its delivery back to the
/// queue (through a delay) instead of holding it. A waiting job holds one of
/// the worker's permits, so a long wait blocks the jobs of other locations
/// whose tokens are ready: at 10 s, `flotilla bench` measured 0.87 of the
/// allowed SendCommand rate with more jobs than permits; at 2 s, 0.97 (when
/// tokens were polled; they are reserved now).
const MAX_TOKEN_WAIT: Duration = Duration::from_secs(2);

/// The bucket's region for account-wide APIs (AssumeRole).
pub const GLOBAL_REGION: &str = "global";

/// Reserves one token and sleeps until it is this job's: one round trip to
/// the store, no polling, so the calls go out at the allowed rate however many
/// workers wait (GCRA in `take_tokens.lua`). `Ok(false)` when the next token
/// is further than [`MAX_TOKEN_WAIT`] away: nothing is reserved then.
pub async fn take_token<S: Store>(
    store: &S,
    account_id: &str,
    region: &str,
    api: &str,
    rate_per_second: f64,
) -> Result<bool, JobError> {
    let bucket = BucketId {
        account_id,
        region,
        api,
    };
    // A one-second burst: a bucket that has been idle lets `rate` calls through
    // at once, and never more.
    let request = TokenRequest {
        rate_per_second,
        burst: rate_per_second.max(1.0),
        tokens: 1,
        max_wait: MAX_TOKEN_WAIT,
    };
    match store.take_tokens(bucket, request).await? {
        TokenGrant::Granted => Ok(true),
        TokenGrant::Reserved(wait) => {
            tokio::time::sleep(wait).await;
            Ok(true)
        }
        TokenGrant::RetryAfter(_) => Ok(false),
    }
}
