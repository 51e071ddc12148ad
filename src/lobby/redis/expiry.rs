//! Releasing held seats (resume) when their grace period ends.
//!
//! `lr:away` lists every held seat by the end of its grace period (its due
//! time, ms since the epoch). Every node runs [`run_expirer`]: it sleeps
//! until the earliest due time, or at most [`POLL`] (a seat held by another
//! node is noticed within that, long before it is due), then takes the due
//! entries with `due.lua`, which leases them to this node (so that two nodes
//! do not release the same seats, and a node that dies halfway leaves them to
//! the others once the lease ends), and releases each with `expire.lua`,
//! many at a time over the multiplexed connection. A seat is released within
//! about [`POLL`] of its due time at worst and usually within milliseconds;
//! 10,000 seats due at once go in a few hundred milliseconds
//! (docs/operations.md). `resume.lua` refuses a seat past its due time
//! whether or not it was released yet, so the grace that `playerAway`
//! announced is exact.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;

use super::connections::timed;
use super::held::HeldSeats;
use super::keys::{AWAY_KEY, channel, lobby_key};
use super::scripts::now_ms;
use crate::lobby::StoreError;
use crate::metrics;

/// The longest sleep between two looks at `lr:away`.
pub const POLL: Duration = Duration::from_millis(100);
/// The most due seats taken at once.
const BATCH: usize = 1000;
/// How long seats taken stay this node's to release (see `due.lua`).
const LEASE_MS: u64 = 5000;
/// Releases in flight at once (pipelined over one connection).
const IN_FLIGHT: usize = 128;

/// Releases held seats as they come due, until the store stops.
pub async fn run_expirer(held: Arc<HeldSeats>) {
    // While Redis is away every look fails: said once, not every 100 ms.
    let mut warned = false;
    loop {
        let wait = match release_due(&held).await {
            Ok(Some(next_due)) => {
                warned = false;
                Duration::from_millis(next_due.saturating_sub(now_ms())).min(POLL)
            }
            Ok(None) => {
                warned = false;
                POLL
            }
            Err(e) => {
                if !warned {
                    tracing::warn!(error = %e, "releasing held seats failed; retrying every 100 ms");
                    warned = true;
                }
                POLL
            }
        };
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

/// Releases the held seats due now. Returns the due time of the earliest
/// held seat left (`Some(0)`: more are due already), `None` if there is none.
async fn release_due(held: &HeldSeats) -> Result<Option<u64>, StoreError> {
    if !held
        .link
        .health
        .commands_ok
        .load(std::sync::atomic::Ordering::Relaxed)
    {
        return Ok(None); // Redis is away: nothing to do until it is back
    }
    let now = now_ms();
    let mut conn = held.link.conn()?;
    let (due, first): (Vec<String>, i64) = timed(
        held.scripts
            .due
            .key(AWAY_KEY)
            .arg(now)
            .arg(BATCH)
            .arg(LEASE_MS)
            .invoke_async(&mut conn),
    )
    .await?;
    let taken = due.len();
    let released = futures_util::stream::iter(due)
        .map(|entry| release(held, entry, now))
        .buffer_unordered(IN_FLIGHT)
        .collect::<Vec<_>>()
        .await;
    let mut failed = None;
    for result in released {
        if let Err(e) = result {
            failed = Some(e);
        }
    }
    if let Some(e) = failed {
        // Those seats come due again when their lease ends.
        return Err(e);
    }
    if taken == BATCH {
        return Ok(Some(0));
    }
    Ok(u64::try_from(first).ok())
}

/// Releases one held seat (an `lr:away` entry `<lobby hash>:<seat>`) if it is
/// still held and due.
async fn release(held: &HeldSeats, entry: String, now: u64) -> Result<(), StoreError> {
    let Some((hex, seat)) = entry.split_once(':') else {
        return Ok(());
    };
    let released: i64 = held
        .invoke(
            held.scripts
                .expire
                .key(lobby_key(hex))
                .arg(seat)
                .arg(channel(hex))
                .arg(now)
                .arg(hex),
        )
        .await?;
    if released == 1 {
        metrics::get().held_seats_released.increment(1);
        tracing::info!(
            event = "held_seat_released",
            lobby = hex.get(..8).unwrap_or(hex),
            seat,
            "a held seat was released: its player did not come back in time"
        );
    }
    Ok(())
}
