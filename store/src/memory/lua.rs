//! `EVAL`, `EVALSHA` and `SCRIPT LOAD` for the in-memory Redis: the same Lua
//! scripts that run on Redis run here, on Lua 5.1 (Redis' version), with the
//! parts of Redis' scripting API that flotilla's scripts use — `KEYS`, `ARGV`,
//! `redis.call`/`redis.pcall`, `redis.error_reply`/`redis.status_reply`,
//! `cjson.encode`/`cjson.decode` — and Redis' conversions between Lua values
//! and replies. A script runs while its caller holds the database, so it is
//! atomic as on Redis.

use std::cell::RefCell;
use std::collections::HashMap;

use mlua::{Function, Lua, LuaOptions, StdLib, Table, Value as LuaValue, Variadic};
use redis::Value;

use super::db::{Bytes, Db, Reply};

/// A compiled script and the Lua state it runs in.
pub(super) struct Scripting {
    lua: Lua,
    /// SHA-1 (hex) → compiled script, as `SCRIPT LOAD` caches them.
    scripts: HashMap<String, Function>,
    /// Function name → (library, function), as `FUNCTION LOAD` registers them.
    functions: HashMap<String, (String, Function)>,
}

fn lua_error(error: &mlua::Error) -> String {
    // Redis prefixes a failing script's error; keep the first line of Lua's.
    let message = error.to_string();
    let first = message.lines().next().unwrap_or_default().to_string();
    if first.starts_with("ERR ") || first.starts_with("WRONGTYPE") {
        first
    } else {
        format!("ERR Error running script: {first}")
    }
}

impl Scripting {
    pub(super) fn new() -> Result<Self, String> {
        // Redis' sandbox has no io, os or package: neither does this one.
        let lua = Lua::new_with(
            StdLib::TABLE | StdLib::STRING | StdLib::MATH,
            LuaOptions::default(),
        )
        .map_err(|error| lua_error(&error))?;
        install_libraries(&lua).map_err(|error| lua_error(&error))?;
        Ok(Self {
            lua,
            scripts: HashMap::new(),
            functions: HashMap::new(),
        })
    }

    /// `FUNCTION LOAD [REPLACE]`: runs a library (`#!lua name=<library>`
    /// first) whose `redis.register_function(name, function)` calls register
    /// its functions; returns the library's name.
    pub(super) fn load_library(&mut self, source: &[u8], replace: bool) -> Reply {
        let text = String::from_utf8_lossy(source);
        let (header, body) = text.split_once('\n').unwrap_or((&text, ""));
        let Some(library) = header
            .strip_prefix("#!lua name=")
            .map(str::trim)
            .filter(|name| !name.is_empty())
        else {
            return Err("ERR Missing library metadata".into());
        };
        let exists = self.functions.values().any(|(owner, _)| owner == library);
        if exists && !replace {
            return Err(format!("ERR Library '{library}' already exists"));
        }
        let registered = RefCell::new(Vec::new());
        let redis: Table = self
            .lua
            .globals()
            .get("redis")
            .map_err(|error| lua_error(&error))?;
        self.lua
            .scope(|scope| {
                redis.set(
                    "register_function",
                    scope.create_function(|_, (name, function): (String, Function)| {
                        registered.borrow_mut().push((name, function));
                        Ok(())
                    })?,
                )?;
                self.lua
                    .load(body)
                    .set_name(format!("@user_function:{library}"))
                    .exec()
            })
            .map_err(|error| lua_error(&error))?;
        self.functions.retain(|_, (owner, _)| owner != library);
        for (name, function) in registered.into_inner() {
            self.functions.insert(name, (library.to_string(), function));
        }
        Ok(Value::BulkString(library.as_bytes().to_vec()))
    }

    /// `FCALL` arguments: function name, numkeys, keys, args.
    pub(super) fn call_function(&self, db: &mut Db, args: &[Bytes]) -> Reply {
        let name = args
            .first()
            .map(|name| String::from_utf8_lossy(name).into_owned())
            .unwrap_or_default();
        let Some((_, function)) = self.functions.get(&name) else {
            return Err("ERR Function not found".into());
        };
        let (keys, argv) = split_keys(&args[1..])?;
        self.call(db, function, keys, argv, true)
            .map_err(|error| lua_error(&error))?
    }

    /// `SCRIPT LOAD`: compiles `source` and returns its SHA-1.
    pub(super) fn load(&mut self, source: &[u8]) -> Result<String, String> {
        let sha = sha1_smol::Sha1::from(source).digest().to_string();
        if !self.scripts.contains_key(&sha) {
            let function = self
                .lua
                .load(source)
                .set_name(format!("user_script:{sha}"))
                .into_function()
                .map_err(|error| lua_error(&error))?;
            self.scripts.insert(sha.clone(), function);
        }
        Ok(sha)
    }

    /// `EVAL`/`EVALSHA` arguments after the script: numkeys, keys, argv.
    pub(super) fn run(&self, db: &mut Db, sha: &str, args: &[Bytes]) -> Reply {
        let Some(function) = self.scripts.get(&sha.to_ascii_lowercase()) else {
            return Err("NOSCRIPT No matching script. Please use EVAL.".into());
        };
        let (keys, argv) = split_keys(args)?;
        self.call(db, function, keys, argv, false)
            .map_err(|error| lua_error(&error))?
    }

    fn call(
        &self,
        db: &mut Db,
        function: &Function,
        keys: &[Bytes],
        argv: &[Bytes],
        // A function gets its keys and arguments as parameters, a script as
        // the globals KEYS and ARGV.
        as_function: bool,
    ) -> mlua::Result<Reply> {
        let lua = &self.lua;
        let globals = lua.globals();
        globals.set("KEYS", strings(lua, keys)?)?;
        globals.set("ARGV", strings(lua, argv)?)?;
        let db = RefCell::new(db);
        let run = |lua: &Lua, args: Variadic<LuaValue>| -> mlua::Result<Reply> {
            let mut command = Vec::with_capacity(args.len());
            for arg in args {
                match lua.coerce_string(arg)? {
                    Some(arg) => command.push(arg.as_bytes().to_vec()),
                    None => {
                        return Err(mlua::Error::runtime(
                            "ERR Lua redis lib command arguments must be strings or integers",
                        ));
                    }
                }
            }
            Ok(db.borrow_mut().execute(&command))
        };
        let redis: Table = globals.get("redis")?;
        lua.scope(|scope| {
            redis.set(
                "call",
                scope.create_function(|lua, args: Variadic<LuaValue>| match run(lua, args)? {
                    Ok(value) => to_lua(lua, value),
                    Err(error) => Err(mlua::Error::runtime(error)),
                })?,
            )?;
            redis.set(
                "pcall",
                scope.create_function(|lua, args: Variadic<LuaValue>| match run(lua, args)? {
                    Ok(value) => to_lua(lua, value),
                    Err(error) => error_table(lua, &error),
                })?,
            )?;
            let result: LuaValue = if as_function {
                function.call((strings(lua, keys)?, strings(lua, argv)?))?
            } else {
                function.call(())?
            };
            Ok(from_lua(&result))
        })
    }
}

/// numkeys, keys, args → (keys, args).
fn split_keys(args: &[Bytes]) -> Result<(&[Bytes], &[Bytes]), String> {
    let key_count: usize = args
        .first()
        .and_then(|count| std::str::from_utf8(count).ok())
        .and_then(|count| count.parse().ok())
        .filter(|count| *count < args.len())
        .ok_or_else(|| "ERR Number of keys can't be greater than number of args".to_string())?;
    Ok(args[1..].split_at(key_count))
}

fn strings(lua: &Lua, values: &[Bytes]) -> mlua::Result<Table> {
    let table = lua.create_table_with_capacity(values.len(), 0)?;
    for (index, value) in values.iter().enumerate() {
        table.raw_seti(index + 1, lua.create_string(value)?)?;
    }
    Ok(table)
}

fn error_table(lua: &Lua, error: &str) -> mlua::Result<LuaValue> {
    let table = lua.create_table()?;
    table.set("err", error)?;
    Ok(LuaValue::Table(table))
}

/// `redis.error_reply`, `redis.status_reply` and `cjson`.
fn install_libraries(lua: &Lua) -> mlua::Result<()> {
    // The base library is always there; its file and code loaders are not
    // for scripts (Redis removes the file ones too).
    for loader in ["dofile", "loadfile", "load", "loadstring"] {
        lua.globals().set(loader, mlua::Nil)?;
    }
    let redis = lua.create_table()?;
    redis.set(
        "error_reply",
        lua.create_function(|lua, message: String| error_table(lua, &message))?,
    )?;
    redis.set(
        "status_reply",
        lua.create_function(|lua, message: String| {
            let table = lua.create_table()?;
            table.set("ok", message)?;
            Ok(table)
        })?,
    )?;
    lua.globals().set("redis", redis)?;
    let cjson = lua.create_table()?;
    cjson.set(
        "decode",
        lua.create_function(|lua, text: mlua::String| {
            let json: serde_json::Value = serde_json::from_slice(&text.as_bytes())
                .map_err(|error| mlua::Error::runtime(format!("cjson.decode: {error}")))?;
            json_to_lua(lua, &json)
        })?,
    )?;
    cjson.set(
        "encode",
        lua.create_function(|_, value: LuaValue| {
            serde_json::to_string(&lua_to_json(&value)?)
                .map_err(|error| mlua::Error::runtime(format!("cjson.encode: {error}")))
        })?,
    )?;
    lua.globals().set("cjson", cjson)
}

fn json_to_lua(lua: &Lua, json: &serde_json::Value) -> mlua::Result<LuaValue> {
    Ok(match json {
        serde_json::Value::Null => LuaValue::Nil,
        serde_json::Value::Bool(value) => LuaValue::Boolean(*value),
        serde_json::Value::Number(number) => LuaValue::Number(number.as_f64().unwrap_or(0.0)),
        serde_json::Value::String(text) => LuaValue::String(lua.create_string(text)?),
        serde_json::Value::Array(items) => {
            let table = lua.create_table_with_capacity(items.len(), 0)?;
            for (index, item) in items.iter().enumerate() {
                table.raw_seti(index + 1, json_to_lua(lua, item)?)?;
            }
            LuaValue::Table(table)
        }
        serde_json::Value::Object(fields) => {
            let table = lua.create_table_with_capacity(0, fields.len())?;
            for (field, value) in fields {
                table.raw_set(field.as_str(), json_to_lua(lua, value)?)?;
            }
            LuaValue::Table(table)
        }
    })
}

/// A Lua number as cjson writes it: integral values without a fraction.
fn json_number(number: f64) -> serde_json::Value {
    const EXACT: f64 = 9_007_199_254_740_992.0; // 2^53
    if number.fract() == 0.0 && number.abs() < EXACT {
        #[allow(clippy::cast_possible_truncation)]
        serde_json::Value::from(number as i64)
    } else {
        serde_json::Number::from_f64(number)
            .map_or(serde_json::Value::Null, serde_json::Value::Number)
    }
}

fn lua_to_json(value: &LuaValue) -> mlua::Result<serde_json::Value> {
    Ok(match value {
        LuaValue::Nil => serde_json::Value::Null,
        LuaValue::Boolean(value) => serde_json::Value::Bool(*value),
        LuaValue::Integer(value) => serde_json::Value::from(*value),
        LuaValue::Number(value) => json_number(*value),
        LuaValue::String(text) => serde_json::Value::String(text.to_str()?.to_string()),
        LuaValue::Table(table) if table.raw_len() > 0 => serde_json::Value::Array(
            table
                .sequence_values::<LuaValue>()
                .map(|item| lua_to_json(&item?))
                .collect::<mlua::Result<_>>()?,
        ),
        LuaValue::Table(table) => {
            // An empty table is `{}`, as cjson writes it.
            let mut fields = serde_json::Map::new();
            for pair in table.pairs::<LuaValue, LuaValue>() {
                let (key, value) = pair?;
                let key = match key {
                    LuaValue::String(key) => key.to_str()?.to_string(),
                    LuaValue::Integer(key) => key.to_string(),
                    LuaValue::Number(key) => json_number(key).to_string(),
                    _ => {
                        return Err(mlua::Error::runtime(
                            "cjson.encode: table key of an unsupported type",
                        ));
                    }
                };
                fields.insert(key, lua_to_json(&value)?);
            }
            serde_json::Value::Object(fields)
        }
        _ => {
            return Err(mlua::Error::runtime(
                "cjson.encode: value of an unsupported type",
            ));
        }
    })
}

/// A reply as a script sees it (Redis' reply → Lua conversion).
fn to_lua(lua: &Lua, value: Value) -> mlua::Result<LuaValue> {
    Ok(match value {
        Value::Nil => LuaValue::Boolean(false),
        #[allow(clippy::cast_precision_loss)]
        Value::Int(number) => LuaValue::Number(number as f64),
        Value::BulkString(bytes) => LuaValue::String(lua.create_string(bytes)?),
        Value::Okay => status(lua, "OK")?,
        Value::SimpleString(text) => status(lua, &text)?,
        Value::Double(number) => LuaValue::Number(number),
        Value::Boolean(value) => LuaValue::Boolean(value),
        Value::Array(items) | Value::Set(items) => {
            let table = lua.create_table_with_capacity(items.len(), 0)?;
            for (index, item) in items.into_iter().enumerate() {
                table.raw_seti(index + 1, to_lua(lua, item)?)?;
            }
            LuaValue::Table(table)
        }
        other => return Err(mlua::Error::runtime(format!("unsupported reply {other:?}"))),
    })
}

fn status(lua: &Lua, text: &str) -> mlua::Result<LuaValue> {
    let table = lua.create_table()?;
    table.set("ok", text)?;
    Ok(LuaValue::Table(table))
}

/// A script's return value as a reply (Redis' Lua → reply conversion).
fn from_lua(value: &LuaValue) -> Reply {
    Ok(match value {
        LuaValue::Nil | LuaValue::Boolean(false) => Value::Nil,
        LuaValue::Boolean(true) => Value::Int(1),
        LuaValue::Integer(number) => Value::Int(*number),
        // Redis truncates a Lua number to an integer reply.
        #[allow(clippy::cast_possible_truncation)]
        LuaValue::Number(number) => Value::Int(*number as i64),
        LuaValue::String(text) => Value::BulkString(text.as_bytes().to_vec()),
        LuaValue::Table(table) => {
            if let Ok(LuaValue::String(error)) = table.raw_get::<LuaValue>("err") {
                return Err(error.to_string_lossy());
            }
            if let Ok(LuaValue::String(status)) = table.raw_get::<LuaValue>("ok") {
                return Ok(Value::SimpleString(status.to_string_lossy()));
            }
            let mut items = Vec::new();
            // An array reply stops at the first nil, as on Redis.
            for item in table.sequence_values::<LuaValue>() {
                match item {
                    Ok(item) => items.push(from_lua(&item)?),
                    Err(error) => return Err(lua_error(&error)),
                }
            }
            Value::Array(items)
        }
        _ => Value::Nil,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scripts_reach_no_file_code_loader_or_os() {
        let mut scripting = Scripting::new().expect("a Lua state");
        let mut db = Db::default();
        let probe = b"return {type(dofile), type(loadfile), type(load), type(loadstring), \
                      type(io), type(os), type(require), type(string.format)}";
        let sha = scripting.load(probe).expect("the probe compiles");
        let reply = scripting.run(&mut db, &sha, &[b"0".to_vec()]);
        let nils = |n: usize| {
            std::iter::repeat_n(Value::BulkString(b"nil".to_vec()), n)
                .chain([Value::BulkString(b"function".to_vec())])
                .collect::<Vec<_>>()
        };
        assert_eq!(reply, Ok(Value::Array(nils(7))));
    }
}
