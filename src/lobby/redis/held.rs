//! Held seats (resume), the node's side: running the scripts that may hold
//! or release seats, and keeping `lr:away` (the held seats by due time,
//! outside any lobby's slot) in step with what they answer.

use std::sync::{Arc, Mutex};

use super::connections::{Link, timed};
use super::keys::AWAY_KEY;
use super::scripts::{HeldReply, Scripts};
use crate::lobby::StoreError;

/// Entries of `lr:away` to add (with their scores) and to remove.
type AwayChanges = (Vec<(String, i64)>, Vec<String>);

/// Runs the held-seat scripts and applies their changes to `lr:away`.
pub struct HeldSeats {
    pub link: Arc<Link>,
    pub scripts: Arc<Scripts>,
    /// Changes to `lr:away` that could not be applied yet (entries to add
    /// with their scores, entries to remove).
    pending: Mutex<AwayChanges>,
}

impl HeldSeats {
    pub fn new(link: Arc<Link>, scripts: Arc<Scripts>) -> Self {
        Self {
            link,
            scripts,
            pending: Mutex::default(),
        }
    }

    /// Runs a held script (see [`Scripts`]) and applies the changes to
    /// `lr:away` it asks for (best effort: see below).
    pub async fn invoke<T: redis::FromRedisValue>(
        &self,
        invocation: &redis::ScriptInvocation<'_>,
    ) -> Result<T, StoreError> {
        let mut conn = self.link.conn()?;
        let reply: HeldReply = timed(invocation.invoke_async(&mut conn)).await?;
        // The script's change stands whatever happens here: failing the call
        // now would report a join or leave that happened as failed. What
        // could not be applied is retried by the reaper's loop (and should
        // this node die first, a reaper lists its held seats again).
        self.apply_away_or_later(reply.away_add, reply.away_del)
            .await;
        redis::from_redis_value(reply.result)
            .map_err(|e| StoreError::Protocol(format!("a lobby script answered {e}")))
    }

    /// [`HeldSeats::apply_away`], keeping what fails for
    /// [`HeldSeats::retry_away`].
    pub async fn apply_away_or_later(&self, add: Vec<(String, i64)>, del: Vec<String>) {
        if add.is_empty() && del.is_empty() {
            return;
        }
        if let Err(e) = self.apply_away(add.clone(), del.clone()).await {
            tracing::warn!(error = %e, "cannot update the index of held seats (lr:away); will retry");
            let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            pending.0.extend(add);
            pending.1.extend(del);
        }
    }

    /// Applies the `lr:away` changes that failed before.
    pub async fn retry_away(&self) {
        let (add, del) =
            std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()));
        self.apply_away_or_later(add, del).await;
    }

    /// Adds and removes entries of `lr:away`, the held seats by due time.
    async fn apply_away(
        &self,
        add: Vec<(String, i64)>,
        del: Vec<String>,
    ) -> Result<(), StoreError> {
        if add.is_empty() && del.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        if !del.is_empty() {
            pipe.cmd("ZREM").arg(AWAY_KEY).arg(&del).ignore();
        }
        if !add.is_empty() {
            let cmd = pipe.cmd("ZADD").arg(AWAY_KEY);
            for (entry, score) in &add {
                cmd.arg(*score).arg(entry);
            }
            cmd.ignore();
        }
        let mut conn = self.link.conn()?;
        timed(pipe.query_async::<()>(&mut conn)).await
    }
}
