//! The collection commands of the in-memory Redis: hashes, lists, sets,
//! sorted sets and streams.

use std::collections::{HashMap, HashSet, VecDeque};

use redis::Value;

use super::{
    Bytes, Data, Db, Reply, StreamId, WRONGTYPE, arity, array, bulk, float, format_stream_id, int,
    integer, parse_stream_id, range, text, wrong_arguments,
};

impl Db {
    pub(super) fn hashes(&mut self, name: &str, args: &[Bytes]) -> Reply {
        arity(args, 2)?;
        let key = &args[1];
        let reply = match name {
            "HSET" | "HMSET" => {
                if args.len() < 4 || !args.len().is_multiple_of(2) {
                    return Err(wrong_arguments(args));
                }
                let map = self.hash_or_new(key)?;
                let mut added = 0;
                for pair in args[2..].chunks(2) {
                    if map.insert(pair[0].clone(), pair[1].clone()).is_none() {
                        added += 1;
                    }
                }
                if name == "HMSET" {
                    Value::Okay
                } else {
                    int(added)
                }
            }
            "HSETNX" => {
                arity(args, 4)?;
                let map = self.hash_or_new(key)?;
                if map.contains_key(&args[2]) {
                    Value::Int(0)
                } else {
                    map.insert(args[2].clone(), args[3].clone());
                    Value::Int(1)
                }
            }
            "HINCRBY" => {
                arity(args, 4)?;
                let by = integer(&args[3])?;
                let map = self.hash_or_new(key)?;
                let current = match map.get(&args[2]) {
                    Some(value) => integer(value)
                        .map_err(|_| "ERR hash value is not an integer".to_string())?,
                    None => 0,
                };
                let value = current
                    .checked_add(by)
                    .ok_or_else(|| "ERR increment or decrement would overflow".to_string())?;
                map.insert(args[2].clone(), value.to_string().into_bytes());
                Value::Int(value)
            }
            "HDEL" => {
                arity(args, 3)?;
                let removed = match self.hash(key)? {
                    Some(map) => args[2..]
                        .iter()
                        .filter(|field| map.remove(*field).is_some())
                        .count(),
                    None => 0,
                };
                int(removed)
            }
            _ => {
                let map = self.hash(key)?;
                return Self::read_hash(name, args, map.map(|map| &*map));
            }
        };
        self.drop_if_empty(key);
        Ok(reply)
    }

    pub(super) fn read_hash(
        name: &str,
        args: &[Bytes],
        map: Option<&HashMap<Bytes, Bytes>>,
    ) -> Reply {
        let empty = HashMap::new();
        let map = map.unwrap_or(&empty);
        let field = |index: usize| -> Result<Value, String> {
            arity(args, index + 1)?;
            Ok(map
                .get(&args[index])
                .map_or(Value::Nil, |value| bulk(value)))
        };
        match name {
            "HGET" => field(2),
            "HEXISTS" => {
                arity(args, 3)?;
                Ok(Value::Int(i64::from(map.contains_key(&args[2]))))
            }
            "HMGET" => {
                arity(args, 3)?;
                (2..args.len())
                    .map(field)
                    .collect::<Result<Vec<_>, _>>()
                    .map(array)
            }
            "HGETALL" => Ok(array(
                map.iter()
                    .flat_map(|(field, value)| [bulk(field), bulk(value)]),
            )),
            "HVALS" => Ok(array(map.values().map(|value| bulk(value)))),
            "HKEYS" => Ok(array(map.keys().map(|field| bulk(field)))),
            _ => Ok(int(map.len())),
        }
    }

    pub(super) fn lists(&mut self, name: &str, args: &[Bytes]) -> Reply {
        arity(args, 2)?;
        let key = &args[1];
        let index_arg = |index: usize| -> Result<i64, String> {
            arity(args, index + 1)?;
            integer(&args[index])
        };
        let reply = match name {
            "RPUSH" | "LPUSH" => {
                arity(args, 3)?;
                let list = self.list_or_new(key)?;
                for value in &args[2..] {
                    if name == "RPUSH" {
                        list.push_back(value.clone());
                    } else {
                        list.push_front(value.clone());
                    }
                }
                int(list.len())
            }
            "LSET" => {
                let index = index_arg(2)?;
                arity(args, 4)?;
                let list = self.list(key)?.ok_or("ERR no such key")?;
                let len = i64::try_from(list.len()).unwrap_or(i64::MAX);
                let index = if index < 0 { len + index } else { index };
                let slot = usize::try_from(index)
                    .ok()
                    .and_then(|index| list.get_mut(index))
                    .ok_or("ERR index out of range")?;
                *slot = args[3].clone();
                Value::Okay
            }
            "LPOP" => match self.list(key)? {
                Some(list) => list.pop_front().map_or(Value::Nil, |value| bulk(&value)),
                None => Value::Nil,
            },
            "LTRIM" => {
                let (start, stop) = (index_arg(2)?, index_arg(3)?);
                if let Some(list) = self.list(key)? {
                    match range(list.len(), start, stop) {
                        Some((start, stop)) => {
                            list.truncate(stop + 1);
                            list.drain(..start);
                        }
                        None => list.clear(),
                    }
                }
                Value::Okay
            }
            "LINDEX" => {
                let index = index_arg(2)?;
                let list = self.list(key)?;
                return Ok(list
                    .and_then(|list| {
                        let len = i64::try_from(list.len()).ok()?;
                        let index = if index < 0 { len + index } else { index };
                        list.get(usize::try_from(index).ok()?)
                    })
                    .map_or(Value::Nil, |value| bulk(value)));
            }
            "LRANGE" => {
                let (start, stop) = (index_arg(2)?, index_arg(3)?);
                let list = self.list(key)?;
                return Ok(array(list.into_iter().flat_map(|list| {
                    range(list.len(), start, stop)
                        .map(|(start, stop)| {
                            list.range(start..=stop)
                                .map(|value| bulk(value))
                                .collect::<Vec<_>>()
                        })
                        .unwrap_or_default()
                })));
            }
            _ => return Ok(int(self.list(key)?.map_or(0, |list| list.len()))),
        };
        self.drop_if_empty(key);
        Ok(reply)
    }

    pub(super) fn sets(&mut self, name: &str, args: &[Bytes]) -> Reply {
        arity(args, 2)?;
        let key = &args[1];
        let reply = match name {
            "SADD" => {
                arity(args, 3)?;
                let set = match self.data_or(key, || Data::Set(HashSet::new())) {
                    Data::Set(set) => set,
                    _ => return Err(WRONGTYPE.into()),
                };
                int(args[2..]
                    .iter()
                    .filter(|member| set.insert((*member).clone()))
                    .count())
            }
            "SREM" => {
                arity(args, 3)?;
                int(match self.set(key)? {
                    Some(set) => args[2..]
                        .iter()
                        .filter(|member| set.remove(*member))
                        .count(),
                    None => 0,
                })
            }
            "SISMEMBER" => {
                arity(args, 3)?;
                let member = self.set(key)?.is_some_and(|set| set.contains(&args[2]));
                return Ok(Value::Int(i64::from(member)));
            }
            "SMISMEMBER" => {
                arity(args, 3)?;
                let set = self.set(key)?;
                return Ok(array(args[2..].iter().map(|member| {
                    Value::Int(i64::from(
                        set.as_ref().is_some_and(|set| set.contains(member)),
                    ))
                })));
            }
            "SMEMBERS" => {
                return Ok(array(
                    self.set(key)?
                        .into_iter()
                        .flat_map(|set| set.iter().map(|member| bulk(member))),
                ));
            }
            _ => return Ok(int(self.set(key)?.map_or(0, |set| set.len()))),
        };
        self.drop_if_empty(key);
        Ok(reply)
    }

    pub(super) fn sorted_sets(&mut self, name: &str, args: &[Bytes]) -> Reply {
        arity(args, 2)?;
        let key = &args[1];
        let reply = match name {
            "ZADD" => {
                if args.len() < 4 || !args.len().is_multiple_of(2) {
                    return Err("ERR syntax error".into());
                }
                let set = match self.data_or(key, || Data::SortedSet(HashMap::new())) {
                    Data::SortedSet(set) => set,
                    _ => return Err(WRONGTYPE.into()),
                };
                let mut added = 0;
                for pair in args[2..].chunks(2) {
                    if set.insert(pair[1].clone(), float(&pair[0])?).is_none() {
                        added += 1;
                    }
                }
                int(added)
            }
            "ZREM" => {
                arity(args, 3)?;
                int(match self.sorted_set(key)? {
                    Some(set) => args[2..]
                        .iter()
                        .filter(|member| set.remove(*member).is_some())
                        .count(),
                    None => 0,
                })
            }
            "ZCARD" => return Ok(int(self.sorted_set(key)?.map_or(0, |set| set.len()))),
            "ZCOUNT" => {
                arity(args, 4)?;
                let (min, max) = (float(&args[2])?, float(&args[3])?);
                return Ok(int(self.sorted_set(key)?.map_or(0, |set| {
                    set.values()
                        .filter(|score| **score >= min && **score <= max)
                        .count()
                })));
            }
            "ZSCORE" => {
                arity(args, 3)?;
                let score = self
                    .sorted_set(key)?
                    .and_then(|set| set.get(&args[2]).copied());
                // As Redis prints a double: whole numbers without a fraction.
                return Ok(match score {
                    Some(score) if score.fract() == 0.0 && score.abs() < 1e17 => {
                        bulk(format!("{}", score as i64).as_bytes())
                    }
                    Some(score) => bulk(score.to_string().as_bytes()),
                    None => Value::Nil,
                });
            }
            _ => {
                arity(args, 4)?;
                let mut members: Vec<(f64, Bytes)> = self
                    .sorted_set(key)?
                    .map(|set| {
                        set.iter()
                            .map(|(member, score)| (*score, member.clone()))
                            .collect()
                    })
                    .unwrap_or_default();
                members.sort_by(|a, b| a.0.total_cmp(&b.0).then_with(|| a.1.cmp(&b.1)));
                if name == "ZRANGEBYSCORE" {
                    let (min, max) = (float(&args[2])?, float(&args[3])?);
                    // `LIMIT offset count`; a negative count is every one.
                    let (offset, count) = match args.get(4) {
                        Some(word) if word.eq_ignore_ascii_case(b"LIMIT") => {
                            arity(args, 7)?;
                            (integer(&args[5])?, integer(&args[6])?)
                        }
                        Some(_) => return Err("ERR syntax error".into()),
                        None => (0, -1),
                    };
                    let offset = usize::try_from(offset).unwrap_or(0);
                    let count = usize::try_from(count).unwrap_or(usize::MAX);
                    return Ok(array(
                        members
                            .iter()
                            .filter(|(score, _)| *score >= min && *score <= max)
                            .skip(offset)
                            .take(count)
                            .map(|(_, member)| bulk(member)),
                    ));
                }
                members.reverse();
                let Some((start, stop)) =
                    range(members.len(), integer(&args[2])?, integer(&args[3])?)
                else {
                    return Ok(array([]));
                };
                return Ok(array(
                    members[start..=stop].iter().map(|(_, member)| bulk(member)),
                ));
            }
        };
        self.drop_if_empty(key);
        Ok(reply)
    }

    pub(super) fn streams(&mut self, name: &str, args: &[Bytes]) -> Reply {
        arity(args, 4)?;
        let key = &args[1];
        if name == "XRANGE" {
            return self.xrange(args);
        }
        // XADD key [MINID|MAXLEN [=|~] threshold] id field value [field value ...]
        let mut at = 2;
        let mut trim: Option<(String, Bytes)> = None;
        let keyword = text(&args[at])?.to_ascii_uppercase();
        if keyword == "MINID" || keyword == "MAXLEN" {
            at += 1;
            if matches!(args.get(at).map(Vec::as_slice), Some(b"~" | b"=")) {
                at += 1;
            }
            let threshold = args.get(at).ok_or_else(|| "ERR syntax error".to_string())?;
            trim = Some((keyword, threshold.clone()));
            at += 1;
        }
        let fields = args.get(at + 1..).unwrap_or_default();
        if fields.is_empty() || fields.len() % 2 != 0 {
            return Err("ERR wrong number of arguments for 'xadd' command".into());
        }
        let now_ms = u64::try_from(self.now_unix().as_millis()).unwrap_or(u64::MAX);
        let requested = args
            .get(at)
            .ok_or_else(|| "ERR syntax error".to_string())?
            .clone();
        let (entries, last) = match self.data_or(key, || Data::Stream {
            entries: VecDeque::new(),
            last: (0, 0),
        }) {
            Data::Stream { entries, last } => (entries, last),
            _ => return Err(WRONGTYPE.into()),
        };
        let id = if requested == b"*" {
            if now_ms > last.0 {
                (now_ms, 0)
            } else {
                (last.0, last.1 + 1)
            }
        } else {
            parse_stream_id(&requested, 0)?
        };
        if id <= *last && *last != (0, 0) {
            return Err(
                "ERR The ID specified in XADD is equal or smaller than the target stream top item"
                    .into(),
            );
        }
        *last = id;
        entries.push_back((id, fields.to_vec()));
        match trim {
            Some((keyword, threshold)) if keyword == "MINID" => {
                let min = parse_stream_id(&threshold, 0)?;
                while entries.front().is_some_and(|(id, _)| *id < min) {
                    entries.pop_front();
                }
            }
            Some((_, threshold)) => {
                let max = usize::try_from(integer(&threshold)?.max(0)).unwrap_or(0);
                while entries.len() > max {
                    entries.pop_front();
                }
            }
            None => {}
        }
        Ok(Value::BulkString(format_stream_id(id).into_bytes()))
    }

    /// `XRANGE key start end [COUNT n]`; `(` makes a bound exclusive.
    pub(super) fn xrange(&mut self, args: &[Bytes]) -> Reply {
        let bound = |arg: &[u8], low: bool| -> Result<(StreamId, bool), String> {
            let (exclusive, id) = match arg.split_first() {
                Some((b'(', id)) => (true, id),
                _ => (false, arg),
            };
            let id = match id {
                b"-" => (0, 0),
                b"+" => (u64::MAX, u64::MAX),
                id => parse_stream_id(id, if low { 0 } else { u64::MAX })?,
            };
            Ok((id, exclusive))
        };
        let (start, start_exclusive) = bound(&args[2], true)?;
        let (end, end_exclusive) = bound(&args[3], false)?;
        let count = match args.get(4..6) {
            Some([keyword, count]) if text(keyword)?.eq_ignore_ascii_case("COUNT") => {
                usize::try_from(integer(count)?.max(0)).unwrap_or(0)
            }
            _ => usize::MAX,
        };
        let entries = match self.data(&args[1]) {
            None => return Ok(array([])),
            Some(Data::Stream { entries, .. }) => entries,
            Some(_) => return Err(WRONGTYPE.into()),
        };
        Ok(array(
            entries
                .iter()
                .filter(|(id, _)| {
                    if start_exclusive {
                        *id > start
                    } else {
                        *id >= start
                    }
                })
                .filter(|(id, _)| if end_exclusive { *id < end } else { *id <= end })
                .take(count)
                .map(|(id, fields)| {
                    array([
                        Value::BulkString(format_stream_id(*id).into_bytes()),
                        array(fields.iter().map(|field| bulk(field))),
                    ])
                }),
        ))
    }
}
