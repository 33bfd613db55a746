//! The string commands of the in-memory Redis: GET, SET (NX, XX, GET, EX,
//! PX, KEEPTTL), MGET, INCR and their kin.

use std::time::Duration;

use redis::Value;
use tokio::time::Instant;

use super::{Bytes, Db, Reply, arity, array, bulk, integer, text};

impl Db {
    pub(super) fn strings(&mut self, name: &str, args: &[Bytes]) -> Reply {
        arity(args, 2)?;
        let key = &args[1];
        match name {
            "GET" => Ok(self.string(key)?.map_or(Value::Nil, |value| bulk(value))),
            "MGET" => {
                let mut values = Vec::new();
                for key in &args[1..] {
                    // MGET answers nil for a key of another type.
                    values.push(
                        self.string(key)
                            .ok()
                            .flatten()
                            .map_or(Value::Nil, |v| bulk(v)),
                    );
                }
                Ok(array(values))
            }
            "SETNX" => {
                arity(args, 3)?;
                if self.entry(key).is_some() {
                    return Ok(Value::Int(0));
                }
                self.put_string(key, &args[2], None);
                Ok(Value::Int(1))
            }
            "SETEX" => {
                arity(args, 4)?;
                let seconds = integer(&args[2])?;
                let ttl = Duration::from_secs(
                    u64::try_from(seconds)
                        .map_err(|_| "ERR invalid expire time in 'setex' command".to_string())?,
                );
                self.put_string(key, &args[3], Some(Instant::now() + ttl));
                Ok(Value::Okay)
            }
            "INCR" => {
                let value = match self.string(key)? {
                    Some(value) => integer(value)?,
                    None => 0,
                } + 1;
                let expires = self.entry(key).and_then(|entry| entry.expires);
                self.put_string(key, value.to_string().as_bytes(), expires);
                Ok(Value::Int(value))
            }
            _ => self.set_command(args),
        }
    }

    /// `SET key value [NX|XX] [GET] [EX s|PX ms|KEEPTTL]`.
    pub(super) fn set_command(&mut self, args: &[Bytes]) -> Reply {
        arity(args, 3)?;
        let (key, value) = (&args[1], &args[2]);
        let (mut nx, mut xx, mut get, mut keep_ttl, mut ttl) = (false, false, false, false, None);
        let mut options = args[3..].iter();
        while let Some(option) = options.next() {
            let option = text(option)?.to_ascii_uppercase();
            match option.as_str() {
                "NX" => nx = true,
                "XX" => xx = true,
                "GET" => get = true,
                "KEEPTTL" => keep_ttl = true,
                "EX" | "PX" => {
                    let amount = options
                        .next()
                        .ok_or_else(|| "ERR syntax error".to_string())
                        .and_then(|amount| integer(amount))?;
                    let amount = u64::try_from(amount)
                        .map_err(|_| "ERR invalid expire time in 'set' command".to_string())?;
                    ttl = Some(if option == "EX" {
                        Duration::from_secs(amount)
                    } else {
                        Duration::from_millis(amount)
                    });
                }
                _ => return Err("ERR syntax error".into()),
            }
        }
        let previous = self.string(key)?.cloned();
        let exists = self.entry(key).is_some();
        let reply = |set: bool| match (get, set) {
            (true, _) => previous.as_deref().map_or(Value::Nil, bulk),
            (false, true) => Value::Okay,
            (false, false) => Value::Nil,
        };
        if (nx && exists) || (xx && !exists) {
            return Ok(reply(false));
        }
        let expires = match ttl {
            Some(ttl) => Some(Instant::now() + ttl),
            None if keep_ttl => self.entry(key).and_then(|entry| entry.expires),
            None => None,
        };
        self.put_string(key, value, expires);
        Ok(reply(true))
    }
}
