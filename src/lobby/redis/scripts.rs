//! The Lua scripts of the Redis store (in `lua/`), and the shape of what
//! the held-seat scripts answer.
//!
//! The scripts that change a lobby or relay in it have the held-seat helpers
//! (`lua/held.lua`) in front: see [`held_script`]. Each script touches the
//! keys of one lobby only, so that in a cluster it runs on the one shard
//! that owns the lobby. What `relay.lua` answers is read here too.

/// The helpers of held seats (resume), prepended to the scripts that change
/// a lobby or relay in it.
const HELD_LUA: &str = include_str!("lua/held.lua");

/// Every script of the store.
pub struct Scripts {
    pub gcra: redis::Script,
    pub heartbeat: redis::Script,
    pub join: redis::Script,
    pub leave: redis::Script,
    pub reap: redis::Script,
    pub claim: redis::Script,
    /// Publishes a node's game messages, each if its sender still holds its
    /// seat (run by hash from the publisher's pipelines).
    pub relay: redis::Script,
    pub away: redis::Script,
    pub resume: redis::Script,
    pub expire: redis::Script,
    /// Leases the held seats that are due to the node releasing them.
    pub due: redis::Script,
    /// Quick match: reserves a seat in a queue's lobby.
    pub reserve: redis::Script,
    /// Quick match: gives a reservation up.
    pub unreserve: redis::Script,
    /// Spectators: starts watching a lobby.
    pub watch: redis::Script,
    /// Spectators: stops watching a lobby.
    pub unwatch: redis::Script,
}

impl Scripts {
    /// The scripts, those that publish with `publish` (`PUBLISH`, or
    /// `SPUBLISH` in a cluster).
    pub fn new(publish: &str) -> Self {
        Scripts {
            gcra: redis::Script::new(include_str!("lua/gcra.lua")),
            heartbeat: redis::Script::new(include_str!("lua/heartbeat.lua")),
            join: held_script(include_str!("lua/join.lua"), publish),
            leave: held_script(include_str!("lua/leave.lua"), publish),
            reap: held_script(include_str!("lua/reap.lua"), publish),
            claim: redis::Script::new(include_str!("lua/claim.lua")),
            relay: held_script(include_str!("lua/relay.lua"), publish),
            away: held_script(include_str!("lua/away.lua"), publish),
            resume: held_script(include_str!("lua/resume.lua"), publish),
            expire: held_script(include_str!("lua/expire.lua"), publish),
            due: redis::Script::new(include_str!("lua/due.lua")),
            reserve: held_script(include_str!("lua/reserve.lua"), publish),
            unreserve: held_script(include_str!("lua/unreserve.lua"), publish),
            watch: held_script(include_str!("lua/watch.lua"), publish),
            unwatch: held_script(include_str!("lua/unwatch.lua"), publish),
        }
    }
}

/// A script with the held-seat helpers in front. `publish` is the command
/// that publishes to a lobby's channel (`SPUBLISH` in a cluster). The script
/// returns `{result, AWAY_ADD, AWAY_DEL}`: see [`HeldReply`].
fn held_script(body: &str, publish: &str) -> redis::Script {
    redis::Script::new(&format!(
        "local PUBLISH = '{publish}'\n{HELD_LUA}\nlocal function main()\n{body}\nend\n\
         local result = main()\nreturn {{result, AWAY_ADD, AWAY_DEL}}\n"
    ))
}

/// What a held script returns: its own result, and the changes to
/// `lr:away` (which lives outside the lobby's slot) for the node to apply.
pub struct HeldReply {
    pub result: redis::Value,
    pub away_add: Vec<(String, i64)>,
    pub away_del: Vec<String>,
}

impl redis::FromRedisValue for HeldReply {
    fn from_redis_value(v: redis::Value) -> Result<Self, redis::ParsingError> {
        let (result, adds, away_del): (redis::Value, Vec<redis::Value>, Vec<String>) =
            redis::from_redis_value(v)?;
        let mut away_add = Vec::with_capacity(adds.len() / 2);
        let mut adds = adds.into_iter();
        while let (Some(entry), Some(score)) = (adds.next(), adds.next()) {
            away_add.push((
                redis::from_redis_value(entry)?,
                redis::from_redis_value(score)?,
            ));
        }
        Ok(HeldReply {
            result,
            away_add,
            away_del,
        })
    }
}

/// Redis's clock (ms since the epoch) when it ran a `relay.lua` run.
pub fn redis_time_of(reply: &HeldReply) -> i64 {
    match &reply.result {
        redis::Value::Array(counts) => match counts.get(2) {
            Some(redis::Value::Int(ms)) => *ms,
            _ => 0,
        },
        _ => 0,
    }
}

/// `relay.lua`'s answer: messages dropped for senders without their seat,
/// and messages dropped for arriving past their deadline.
pub fn relay_counts(result: redis::Value) -> (i64, i64) {
    let counts: Vec<i64> = redis::from_redis_value(result).unwrap_or_default();
    (
        counts.first().copied().unwrap_or_default(),
        counts.get(1).copied().unwrap_or_default(),
    )
}

/// The node's clock in ms since the epoch, as the scripts are given it.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}
