//! An in-memory Redis: the backend of `memory://<name>` URLs, for `flotilla
//! demo` and tests. It speaks the Redis protocol's commands through the redis
//! crate's own connection trait, so the store, the ledger and every other
//! piece of flotilla that keeps state in Redis run the same code — the same
//! commands and the same Lua scripts — on it and on a real Redis. Nothing of
//! flotilla's run state is written twice; what this module knows is Redis,
//! not flotilla. The conformance suites (`store/tests/conformance.rs`,
//! `scheduler/tests/conformance.rs`) run unchanged on both to prove it.
//!
//! Time is tokio's clock (pausable in tests): expiry, `TIME` and stream ids.
//! One database per name: every connection to `memory://<name>` in the
//! process shares it, as every client of one Redis does.

mod db;
mod lua;

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex, MutexGuard};

use redis::{Cmd, Pipeline, RedisFuture, RedisResult, Value};

use db::{Bytes, Db, Reply};
use lua::Scripting;

struct Engine {
    db: Db,
    scripting: Scripting,
}

/// A handle onto one in-memory Redis; clones share it.
#[derive(Clone)]
pub struct MemoryRedis {
    engine: Arc<Mutex<Engine>>,
}

impl std::fmt::Debug for MemoryRedis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MemoryRedis")
    }
}

static NAMED: LazyLock<Mutex<HashMap<String, MemoryRedis>>> = LazyLock::new(Default::default);

impl MemoryRedis {
    /// A new, empty database of its own.
    pub fn new() -> Result<Self, String> {
        Ok(Self {
            engine: Arc::new(Mutex::new(Engine {
                db: Db::default(),
                scripting: Scripting::new()?,
            })),
        })
    }

    /// The database named `name` in this process, created on first use: what
    /// every `memory://<name>` URL shares.
    pub fn named(name: &str) -> Result<Self, String> {
        let mut named = NAMED
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(redis) = named.get(name) {
            return Ok(redis.clone());
        }
        let redis = Self::new()?;
        named.insert(name.to_string(), redis.clone());
        Ok(redis)
    }

    /// Messages `PUBLISH`ed to `channel` from now on. The receiver closes
    /// when this database is dropped.
    pub fn subscribe(&self, channel: &str) -> tokio::sync::mpsc::Receiver<Bytes> {
        self.lock().db.subscribe(channel.as_bytes())
    }

    fn lock(&self) -> MutexGuard<'_, Engine> {
        // A command either completes under the lock or changes nothing it
        // could leave half-done (a panicking script is a bug in this module).
        self.engine
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Engine {
    fn execute(&mut self, args: &[Bytes]) -> Reply {
        let name = args
            .first()
            .map(|name| String::from_utf8_lossy(name).to_ascii_uppercase())
            .unwrap_or_default();
        match name.as_str() {
            "EVALSHA" | "EVAL" => {
                let Some(script) = args.get(1) else {
                    return Err(db::wrong_arguments(args));
                };
                let sha = if name == "EVAL" {
                    self.scripting.load(script)?
                } else {
                    String::from_utf8_lossy(script).into_owned()
                };
                self.scripting.run(&mut self.db, &sha, &args[2..])
            }
            "FCALL" => self.scripting.call_function(&mut self.db, &args[1..]),
            "FUNCTION" => match args.get(1..) {
                Some([verb, source]) if verb.eq_ignore_ascii_case(b"LOAD") => {
                    self.scripting.load_library(source, false)
                }
                Some([verb, replace, source])
                    if verb.eq_ignore_ascii_case(b"LOAD")
                        && replace.eq_ignore_ascii_case(b"REPLACE") =>
                {
                    self.scripting.load_library(source, true)
                }
                _ => Err("ERR unknown FUNCTION subcommand".into()),
            },
            "SCRIPT" => match args.get(1..3) {
                Some([verb, source]) if verb.eq_ignore_ascii_case(b"LOAD") => {
                    Ok(Value::BulkString(self.scripting.load(source)?.into_bytes()))
                }
                _ => Err("ERR unknown SCRIPT subcommand".into()),
            },
            _ => self.db.execute(args),
        }
    }
}

fn arguments(cmd: &Cmd) -> Vec<Bytes> {
    cmd.args_iter()
        .filter_map(|arg| match arg {
            redis::Arg::Simple(bytes) => Some(bytes.to_vec()),
            // A SCAN's cursor: this Redis answers every SCAN in one pass
            // (cursor 0 back), so the iterator only ever asks from 0.
            redis::Arg::Cursor => Some(b"0".to_vec()),
            _ => None,
        })
        .collect()
}

/// An error reply as the redis crate parses it off the wire, so its kind
/// (NOSCRIPT, WRONGTYPE, …) is what a real Redis' would be.
fn error_value(message: &str) -> Value {
    let line = format!("-{}\r\n", message.replace(['\r', '\n'], " "));
    redis::parse_redis_value(line.as_bytes()).unwrap_or(Value::Nil)
}

fn into_value(reply: Reply) -> Value {
    reply.unwrap_or_else(|message| error_value(&message))
}

impl redis::aio::ConnectionLike for MemoryRedis {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        let reply: RedisResult<Value> =
            into_value(self.lock().execute(&arguments(cmd))).extract_error();
        Box::pin(std::future::ready(reply))
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        _offset: usize,
        _count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        // One lock for the whole pipeline: a MULTI/EXEC is atomic, and a plain
        // pipeline may be too.
        let mut engine = self.lock();
        let replies: Vec<Value> = pipeline
            .cmd_iter()
            .map(|cmd| into_value(engine.execute(&arguments(cmd))))
            .collect();
        drop(engine);
        let replies = if pipeline.is_transaction() {
            vec![Value::Array(replies)]
        } else {
            replies
        };
        Box::pin(std::future::ready(Ok(replies)))
    }

    fn get_db(&self) -> i64 {
        0
    }
}
