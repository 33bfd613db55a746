//! Workers' notes of why a run's jobs wait (held sends, retries), for
//! `run show` and the console: written by workers (`worker::waits`, through
//! [`crate::Store::note_waits`]), read and pruned by the scheduler
//! ([`RedisStore::wait_notes`]). Explanations only: no decision reads them.

use redis::Script;
use std::sync::LazyLock;
use uuid::Uuid;

use crate::{RedisStore, StoreError};

/// Why jobs of a run wait, as a worker notes it (`worker::waits`) and the
/// scheduler reads it (`Scheduler::holds`). Each note ends by itself at
/// `until_ms` (plus [`WaitNote::GRACE_MS`] for the notes' flush interval):
/// nobody deletes a note whose job went on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WaitNote {
    /// A batch's send held back by a gate (kill switch, pause, window).
    Held {
        until_ms: u64,
        targets: u32,
        cause: String,
    },
    /// A job that failed and comes back at `until_ms`.
    Retrying {
        until_ms: u64,
        job: String,
        cause: String,
    },
}

impl WaitNote {
    /// How long after its `until_ms` a note still counts: the workers
    /// write notes every 2 s, and a held job rechecks every second.
    pub const GRACE_MS: u64 = 5_000;

    /// `held <until> <targets> <cause>` or `retrying <until> <job> <cause>`.
    pub fn encode(&self) -> String {
        match self {
            Self::Held {
                until_ms,
                targets,
                cause,
            } => format!("held {until_ms} {targets} {cause}"),
            Self::Retrying {
                until_ms,
                job,
                cause,
            } => format!("retrying {until_ms} {job} {cause}"),
        }
    }

    /// `None` for anything [`WaitNote::encode`] did not write: notes come
    /// from workers, and a worker's key must not be able to break a view.
    pub fn decode(text: &str) -> Option<Self> {
        let mut parts = text.splitn(4, ' ');
        let kind = parts.next()?;
        let until_ms = parts.next()?.parse().ok()?;
        let third = parts.next()?;
        let cause = parts.next().unwrap_or_default().to_string();
        match kind {
            "held" => Some(Self::Held {
                until_ms,
                targets: third.parse().ok()?,
                cause,
            }),
            "retrying" => Some(Self::Retrying {
                until_ms,
                job: third.to_string(),
                cause,
            }),
            _ => None,
        }
    }
}

/// The most notes one read returns (the view lists a few of them anyway).
pub const MAX_NOTES_READ: usize = 1_000;
/// The longest field or note a read returns, in bytes: a worker's Redis
/// user can write a note of any size, a view never loads one.
pub const MAX_NOTE_BYTES: usize = 512;

/// Reads a run's notes in one step: deletes those that ended before
/// ARGV[3] (and any that do not read as a note), returns the number still
/// live and at most ARGV[1] of them, each field and value cut to ARGV[2]
/// bytes. The hash stays as small as the jobs waiting now.
static READ_WAITS: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local limit, cut, oldest = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local all = redis.call('HGETALL', KEYS[1])
local live, out, ended = 0, {}, {}
for i = 1, #all, 2 do
  local until_ms = tonumber(string.match(all[i + 1], '^%a+ (%d+) ') or '')
  if until_ms == nil or until_ms < oldest then
    ended[#ended + 1] = all[i]
    if #ended == 500 then
      redis.call('HDEL', KEYS[1], unpack(ended))
      ended = {}
    end
  else
    live = live + 1
    if live <= limit then
      out[#out + 1] = string.sub(all[i], 1, cut)
      out[#out + 1] = string.sub(all[i + 1], 1, cut)
    end
  end
end
if #ended > 0 then redis.call('HDEL', KEYS[1], unpack(ended)) end
table.insert(out, 1, live)
return out
",
    )
});

impl RedisStore {
    /// A run's live wait notes at `now_ms` (at most [`MAX_NOTES_READ`],
    /// each cut to [`MAX_NOTE_BYTES`]) with how many are live in all; ended
    /// and unreadable notes are deleted on the way.
    pub async fn wait_notes(
        &self,
        run_id: Uuid,
        now_ms: u64,
    ) -> Result<(Vec<(String, WaitNote)>, usize), StoreError> {
        let mut connection = self.connection();
        let key = self.names().run_waits_key(run_id);
        let oldest = now_ms.saturating_sub(WaitNote::GRACE_MS);
        let answer: Vec<redis::Value> = READ_WAITS
            .key(&key)
            .arg(MAX_NOTES_READ)
            .arg(MAX_NOTE_BYTES)
            .arg(oldest)
            .invoke_async(&mut connection)
            .await?;
        let mut values = answer.into_iter();
        let live = match values.next() {
            Some(redis::Value::Int(live)) => usize::try_from(live).unwrap_or(0),
            other => {
                return Err(StoreError::Unexpected(format!(
                    "reading wait notes answered {other:?}"
                )));
            }
        };
        let text = |value: redis::Value| match value {
            redis::Value::BulkString(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            _ => String::new(),
        };
        let mut notes = Vec::new();
        while let (Some(field), Some(value)) = (values.next(), values.next()) {
            if let Some(note) = WaitNote::decode(&text(value)) {
                notes.push((text(field), note));
            }
        }
        Ok((notes, live))
    }
}
