//! Redis ACL users, one per kind of flotilla service, with the least each
//! needs (Redis 7 selectors). `deploy/redis/users.acl` is this for the prefix
//! `flotilla` (a unit test keeps them equal); `tests/trust_e2e.rs` runs a
//! whole campaign with these users on a Redis of its own.
//!
//! - **worker**: reads the kill switches and run records (never writes
//!   them: a stolen worker cannot release the kill switch or resume a run),
//!   writes only its send claims, the API token buckets and its notes of
//!   why jobs wait (explanations only; read bounded and pruned by the
//!   scheduler, `waits`), adds to a run's
//!   send record with `HSETNX` alone (a selector: it can neither delete nor
//!   overwrite what is recorded there), runs only flotilla's Redis Functions
//!   (`FCALL`; no `EVAL`, no `FUNCTION LOAD`), and hears the kill switch
//!   channel.
//! - **scheduler**: everything under the prefix, without `@dangerous`
//!   commands (no `KEYS`, `FLUSHALL`, `CONFIG`, `DEBUG`, …).
//! - **admin**: everything under the prefix (`flotilla admin purge`).
//!
//! The default user is switched off.

/// The ACL file's lines for a deployment with key prefix `prefix`; passwords
/// as given (`>password`, or `#<sha256 hex>` to keep them out of the file).
pub fn users(prefix: &str, scheduler: &str, worker: &str, admin: &str) -> String {
    let worker_commands = [
        "+ping",
        "+client|setname",
        "+select",
        "+get",
        "+mget",
        "+hget",
        "+hmget",
        "+exists",
        "+sismember",
        "+set",
        "+setex",
        // flotilla's Redis Functions only: no EVAL, no script of its own.
        "+fcall",
        "+subscribe",
        "+unsubscribe",
        "+time",
        "+hset",
        "+pexpire",
        "+del",
        // Claims wait for replicas (`?wait_replicas=N`); a cluster client
        // learns the slots' masters.
        "+wait",
        "+cluster|slots",
    ]
    .join(" ");
    format!(
        "user default off\n\
         user flotilla-scheduler on {scheduler} resetkeys resetchannels ~{prefix}:* &{prefix}:* +@all -@dangerous\n\
         user flotilla-worker on {worker} resetkeys resetchannels -@all {worker_commands} \
         %R~{prefix}:kill* %R~{prefix}:run:* %RW~{prefix}:run:*:job:*:command %W~{prefix}:run:*:waits %RW~{prefix}:rate:* &{prefix}:kill:changes \
         (+hsetnx %W~{prefix}:run:*:sends)\n\
         user flotilla-admin on {admin} resetkeys resetchannels ~{prefix}:* &{prefix}:* +@all\n"
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_deployed_acl_is_the_one_the_code_needs() {
        let deployed = include_str!("../../deploy/redis/users.acl");
        let wanted = super::users(
            "flotilla",
            "<scheduler-password>",
            "<worker-password>",
            "<admin-password>",
        );
        let body: String = deployed
            .lines()
            .filter(|line| !line.starts_with('#'))
            .map(|line| format!("{line}\n"))
            .collect();
        assert_eq!(body, wanted);
    }
}
