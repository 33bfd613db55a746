//! The keyspace of the in-memory Redis and the commands flotilla sends, with
//! Redis' semantics: typed keys (WRONGTYPE on a mismatch), empty containers
//! deleted, expiry on tokio's clock, integer replies where Redis gives them.
//! A command it does not know is an `ERR unknown command` reply, as on a Redis
//! that lacks it — the conformance suites catch a missing one.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis::Value;
use tokio::time::Instant;

mod collections;
mod strings;

pub(super) type Bytes = Vec<u8>;

/// An error reply: `CODE message`, as Redis writes it.
pub(super) type Reply = Result<Value, String>;

const WRONGTYPE: &str = "WRONGTYPE Operation against a key holding the wrong kind of value";

/// A stream entry id (`ms-seq`).
type StreamId = (u64, u64);

enum Data {
    String(Bytes),
    Hash(HashMap<Bytes, Bytes>),
    List(VecDeque<Bytes>),
    Set(HashSet<Bytes>),
    /// member → score; ordered when read (flotilla's sorted sets are small indexes).
    SortedSet(HashMap<Bytes, f64>),
    Stream {
        entries: VecDeque<(StreamId, Vec<Bytes>)>,
        last: StreamId,
    },
}

impl Data {
    fn is_empty(&self) -> bool {
        match self {
            Self::String(_) => false,
            Self::Hash(map) => map.is_empty(),
            Self::List(list) => list.is_empty(),
            Self::Set(set) => set.is_empty(),
            Self::SortedSet(set) => set.is_empty(),
            // Redis keeps an emptied stream.
            Self::Stream { .. } => false,
        }
    }
}

struct Entry {
    data: Data,
    expires: Option<Instant>,
}

/// One in-memory Redis database.
pub(super) struct Db {
    keys: HashMap<Bytes, Entry>,
    /// Wall time at `started`: `TIME` and stream ids advance with tokio's clock.
    epoch: (SystemTime, Instant),
    subscribers: HashMap<Bytes, Vec<tokio::sync::mpsc::Sender<Bytes>>>,
}

impl Default for Db {
    fn default() -> Self {
        Self {
            keys: HashMap::new(),
            epoch: (SystemTime::now(), Instant::now()),
            subscribers: HashMap::new(),
        }
    }
}

fn text(arg: &[u8]) -> Result<&str, String> {
    std::str::from_utf8(arg).map_err(|_| "ERR value is not valid UTF-8".to_string())
}

fn integer(arg: &[u8]) -> Result<i64, String> {
    text(arg)?
        .parse()
        .map_err(|_| "ERR value is not an integer or out of range".to_string())
}

fn float(arg: &[u8]) -> Result<f64, String> {
    match text(arg)? {
        "-inf" => Ok(f64::NEG_INFINITY),
        "+inf" | "inf" => Ok(f64::INFINITY),
        value => value
            .parse()
            .map_err(|_| "ERR value is not a valid float".to_string()),
    }
}

fn bulk(value: &[u8]) -> Value {
    Value::BulkString(value.to_vec())
}

fn int(value: usize) -> Value {
    Value::Int(i64::try_from(value).unwrap_or(i64::MAX))
}

fn array(values: impl IntoIterator<Item = Value>) -> Value {
    Value::Array(values.into_iter().collect())
}

fn arity(args: &[Bytes], at_least: usize) -> Result<(), String> {
    if args.len() < at_least {
        return Err(wrong_arguments(args));
    }
    Ok(())
}

/// Redis' answer to a command called with the wrong number of arguments.
pub(super) fn wrong_arguments(args: &[Bytes]) -> String {
    let name = args
        .first()
        .map(|name| text(name).unwrap_or("?"))
        .unwrap_or("?");
    format!(
        "ERR wrong number of arguments for '{}' command",
        name.to_ascii_lowercase()
    )
}

/// Redis' list/rank index (negative from the end) clamped into `0..len`,
/// as an inclusive range; `None` when empty.
fn range(len: usize, start: i64, stop: i64) -> Option<(usize, usize)> {
    let len = i64::try_from(len).unwrap_or(i64::MAX);
    let start = if start < 0 {
        (len + start).max(0)
    } else {
        start
    };
    let stop = if stop < 0 {
        len + stop
    } else {
        stop.min(len - 1)
    };
    if start > stop || start >= len || stop < 0 {
        return None;
    }
    Some((
        usize::try_from(start).unwrap_or(0),
        usize::try_from(stop).unwrap_or(0),
    ))
}

/// Redis' glob (`*`, `?`, `[...]`, `\` escapes) over bytes.
fn glob(pattern: &[u8], subject: &[u8]) -> bool {
    match pattern.split_first() {
        None => subject.is_empty(),
        Some((b'*', rest)) => (0..=subject.len()).any(|skip| glob(rest, &subject[skip..])),
        Some((b'?', rest)) => !subject.is_empty() && glob(rest, &subject[1..]),
        Some((b'[', rest)) => {
            let Some(close) = rest.iter().position(|&byte| byte == b']') else {
                return false;
            };
            let (class, rest) = (&rest[..close], &rest[close + 1..]);
            let (negated, class) = match class.split_first() {
                Some((b'^', class)) => (true, class),
                _ => (false, class),
            };
            subject.split_first().is_some_and(|(byte, subject)| {
                class.contains(byte) != negated && glob(rest, subject)
            })
        }
        Some((b'\\', rest)) if !rest.is_empty() => {
            subject.first() == rest.first() && glob(&rest[1..], &subject[1..])
        }
        Some((byte, rest)) => subject.first() == Some(byte) && glob(rest, &subject[1..]),
    }
}

fn parse_stream_id(id: &[u8], missing_seq: u64) -> Result<StreamId, String> {
    let id = text(id)?;
    let invalid = || "ERR Invalid stream ID specified as stream command argument".to_string();
    match id.split_once('-') {
        Some((ms, seq)) => Ok((
            ms.parse().map_err(|_| invalid())?,
            seq.parse().map_err(|_| invalid())?,
        )),
        None => Ok((id.parse().map_err(|_| invalid())?, missing_seq)),
    }
}

fn format_stream_id((ms, seq): StreamId) -> String {
    format!("{ms}-{seq}")
}

impl Db {
    /// Unix time now, on tokio's clock (pausable in tests).
    fn now_unix(&self) -> Duration {
        let (wall, started) = self.epoch;
        let elapsed = Instant::now().saturating_duration_since(started);
        (wall + elapsed)
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
    }

    /// The live entry at `key` (an expired one is dropped first).
    /// Forgets `key` if its time to live has run out.
    fn expire_if_due(&mut self, key: &[u8]) {
        let expired = self
            .keys
            .get(key)
            .and_then(|entry| entry.expires)
            .is_some_and(|at| at <= Instant::now());
        if expired {
            self.keys.remove(key);
        }
    }

    fn entry(&mut self, key: &[u8]) -> Option<&mut Entry> {
        self.expire_if_due(key);
        self.keys.get_mut(key)
    }

    fn data(&mut self, key: &[u8]) -> Option<&mut Data> {
        self.entry(key).map(|entry| &mut entry.data)
    }

    /// The entry at `key`, created with `empty` when missing.
    fn data_or(&mut self, key: &[u8], empty: fn() -> Data) -> &mut Data {
        self.expire_if_due(key);
        &mut self
            .keys
            .entry(key.to_vec())
            .or_insert_with(|| Entry {
                data: empty(),
                expires: None,
            })
            .data
    }

    /// Deletes `key` if the command emptied its container, as Redis does.
    fn drop_if_empty(&mut self, key: &[u8]) {
        if self
            .keys
            .get(key)
            .is_some_and(|entry| entry.data.is_empty())
        {
            self.keys.remove(key);
        }
    }

    fn hash(&mut self, key: &[u8]) -> Result<Option<&mut HashMap<Bytes, Bytes>>, String> {
        match self.data(key) {
            None => Ok(None),
            Some(Data::Hash(map)) => Ok(Some(map)),
            Some(_) => Err(WRONGTYPE.into()),
        }
    }

    fn hash_or_new(&mut self, key: &[u8]) -> Result<&mut HashMap<Bytes, Bytes>, String> {
        match self.data_or(key, || Data::Hash(HashMap::new())) {
            Data::Hash(map) => Ok(map),
            _ => Err(WRONGTYPE.into()),
        }
    }

    fn list(&mut self, key: &[u8]) -> Result<Option<&mut VecDeque<Bytes>>, String> {
        match self.data(key) {
            None => Ok(None),
            Some(Data::List(list)) => Ok(Some(list)),
            Some(_) => Err(WRONGTYPE.into()),
        }
    }

    fn list_or_new(&mut self, key: &[u8]) -> Result<&mut VecDeque<Bytes>, String> {
        match self.data_or(key, || Data::List(VecDeque::new())) {
            Data::List(list) => Ok(list),
            _ => Err(WRONGTYPE.into()),
        }
    }

    fn set(&mut self, key: &[u8]) -> Result<Option<&mut HashSet<Bytes>>, String> {
        match self.data(key) {
            None => Ok(None),
            Some(Data::Set(set)) => Ok(Some(set)),
            Some(_) => Err(WRONGTYPE.into()),
        }
    }

    fn sorted_set(&mut self, key: &[u8]) -> Result<Option<&mut HashMap<Bytes, f64>>, String> {
        match self.data(key) {
            None => Ok(None),
            Some(Data::SortedSet(set)) => Ok(Some(set)),
            Some(_) => Err(WRONGTYPE.into()),
        }
    }

    fn string(&mut self, key: &[u8]) -> Result<Option<&Bytes>, String> {
        match self.data(key) {
            None => Ok(None),
            Some(Data::String(value)) => Ok(Some(value)),
            Some(_) => Err(WRONGTYPE.into()),
        }
    }

    fn put_string(&mut self, key: &[u8], value: &[u8], expires: Option<Instant>) {
        self.keys.insert(
            key.to_vec(),
            Entry {
                data: Data::String(value.to_vec()),
                expires,
            },
        );
    }

    /// Sends `message` to every live subscriber of `channel`; how many got it.
    fn publish(&mut self, channel: &[u8], message: &[u8]) -> usize {
        let Some(subscribers) = self.subscribers.get_mut(channel) else {
            return 0;
        };
        subscribers.retain(|sender| !sender.is_closed());
        for sender in subscribers.iter() {
            // A full queue already holds a wake-up for that subscriber.
            let _ = sender.try_send(message.to_vec());
        }
        subscribers.len()
    }

    pub(super) fn subscribe(&mut self, channel: &[u8]) -> tokio::sync::mpsc::Receiver<Bytes> {
        let (sender, receiver) = tokio::sync::mpsc::channel(16);
        self.subscribers
            .entry(channel.to_vec())
            .or_default()
            .push(sender);
        receiver
    }

    /// Runs one command (`args[0]` is its name).
    pub(super) fn execute(&mut self, args: &[Bytes]) -> Reply {
        arity(args, 1)?;
        let name = text(&args[0])?.to_ascii_uppercase();
        match name.as_str() {
            "PING" => Ok(Value::SimpleString("PONG".into())),
            "TIME" => {
                let now = self.now_unix();
                Ok(array([
                    Value::BulkString(now.as_secs().to_string().into_bytes()),
                    Value::BulkString(now.subsec_micros().to_string().into_bytes()),
                ]))
            }
            "PUBLISH" => {
                arity(args, 3)?;
                Ok(int(self.publish(&args[1], &args[2])))
            }
            "GET" | "SET" | "SETNX" | "SETEX" | "MGET" | "INCR" => self.strings(&name, args),
            "DEL" | "UNLINK" | "EXISTS" | "PEXPIRE" | "EXPIRE" | "PTTL" | "TTL" | "SCAN" => {
                self.keyspace(&name, args)
            }
            "HGET" | "HSET" | "HMSET" | "HSETNX" | "HGETALL" | "HMGET" | "HDEL" | "HEXISTS"
            | "HINCRBY" | "HVALS" | "HKEYS" | "HLEN" => self.hashes(&name, args),
            "RPUSH" | "LPUSH" | "LINDEX" | "LSET" | "LPOP" | "LRANGE" | "LTRIM" | "LLEN" => {
                self.lists(&name, args)
            }
            "SADD" | "SREM" | "SISMEMBER" | "SMISMEMBER" | "SMEMBERS" | "SCARD" => {
                self.sets(&name, args)
            }
            "ZADD" | "ZREM" | "ZSCORE" | "ZRANGEBYSCORE" | "ZREVRANGE" | "ZCARD" | "ZCOUNT" => {
                self.sorted_sets(&name, args)
            }
            "XADD" | "XRANGE" => self.streams(&name, args),
            _ => Err(format!(
                "ERR unknown command '{}'",
                name.to_ascii_lowercase()
            )),
        }
    }

    fn keyspace(&mut self, name: &str, args: &[Bytes]) -> Reply {
        arity(args, 2)?;
        match name {
            "DEL" | "UNLINK" => {
                let mut removed = 0;
                for key in &args[1..] {
                    if self.entry(key).is_some() {
                        self.keys.remove(key);
                        removed += 1;
                    }
                }
                Ok(int(removed))
            }
            "EXISTS" => Ok(int(args[1..]
                .iter()
                .filter(|key| self.entry(key).is_some())
                .count())),
            "PEXPIRE" | "EXPIRE" => {
                arity(args, 3)?;
                let amount = u64::try_from(integer(&args[2])?.max(0)).unwrap_or(0);
                let ttl = if name == "EXPIRE" {
                    Duration::from_secs(amount)
                } else {
                    Duration::from_millis(amount)
                };
                match self.entry(&args[1]) {
                    Some(entry) => {
                        entry.expires = Some(Instant::now() + ttl);
                        Ok(Value::Int(1))
                    }
                    None => Ok(Value::Int(0)),
                }
            }
            "PTTL" | "TTL" => {
                let left = match self.entry(&args[1]) {
                    None => return Ok(Value::Int(-2)),
                    Some(Entry { expires: None, .. }) => return Ok(Value::Int(-1)),
                    Some(Entry {
                        expires: Some(at), ..
                    }) => at.saturating_duration_since(Instant::now()),
                };
                let left = if name == "TTL" {
                    left.as_secs()
                } else {
                    u64::try_from(left.as_millis()).unwrap_or(u64::MAX)
                };
                Ok(Value::Int(i64::try_from(left).unwrap_or(i64::MAX)))
            }
            _ => {
                // SCAN cursor [MATCH pattern] [COUNT n]: everything in one pass.
                let mut pattern: Option<&Bytes> = None;
                let mut options = args[2..].iter();
                while let Some(option) = options.next() {
                    let value = options
                        .next()
                        .ok_or_else(|| "ERR syntax error".to_string())?;
                    if text(option)?.eq_ignore_ascii_case("MATCH") {
                        pattern = Some(value);
                    }
                }
                let now = Instant::now();
                let keys: Vec<Value> = self
                    .keys
                    .iter()
                    .filter(|(_, entry)| entry.expires.is_none_or(|at| at > now))
                    .filter(|(key, _)| pattern.is_none_or(|pattern| glob(pattern, key)))
                    .map(|(key, _)| bulk(key))
                    .collect();
                Ok(array([bulk(b"0"), Value::Array(keys)]))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_matches_as_redis_does() {
        assert!(glob(b"flotilla\\*x:*", b"flotilla*x:run:1"));
        assert!(!glob(b"flotilla\\*x:*", b"flotillaAx:run:1"));
        assert!(glob(b"a?c", b"abc"));
        assert!(glob(b"a[bc]d", b"acd"));
        assert!(!glob(b"a[^bc]d", b"acd"));
    }

    #[test]
    fn ranges_follow_redis_index_rules() {
        assert_eq!(range(5, 0, -1), Some((0, 4)));
        assert_eq!(range(5, -10_000, -1), Some((0, 4)));
        assert_eq!(range(5, 3, 1), None);
        assert_eq!(range(0, 0, -1), None);
        assert_eq!(range(5, 2, 100), Some((2, 4)));
    }
}
