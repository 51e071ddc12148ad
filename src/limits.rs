//! Abuse limits: how many messages a connection may send, and how many joins
//! a client address may try (passphrase guessing).
//!
//! Message limits are per connection, in this process. Join limits are per
//! client address and hold for the whole cluster: with Redis their state is
//! in Redis (`gcra.lua`), without it in this process.

use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

/// What the limiter says about one incoming message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Within the limit: handle it.
    Allow,
    /// Over the limit: drop it, and tell the client (`rate_limited`): the
    /// first drop, or the first one more than a second after the last time
    /// it was told.
    DropAndTell,
    /// Over the limit: drop it silently (the client was told recently).
    Drop,
    /// The connection keeps flooding: close it (1008).
    Close,
}

/// The message limit of one connection: a token bucket of `rate` messages a
/// second with a burst of `burst`, and a second bucket that tolerates a few
/// seconds' worth of dropped messages before the connection is closed.
#[derive(Debug)]
pub struct MessageLimiter {
    messages: DefaultDirectRateLimiter,
    drops: DefaultDirectRateLimiter,
    told_at: Option<Instant>,
}

/// At most one `rate_limited` error per this period.
const TELL_EVERY: Duration = Duration::from_secs(1);

impl MessageLimiter {
    pub fn new(rate: NonZeroU32, burst: NonZeroU32) -> Self {
        // Up to five seconds' worth of drops are forgiven, refilled at half
        // the rate: a client slightly too fast is slowed down, a flooder is
        // closed within a second or so.
        let tolerance = rate.saturating_mul(NonZeroU32::new(5).expect("5 > 0"));
        let refill = NonZeroU32::new((rate.get() / 2).max(1)).expect("max(1) > 0");
        Self {
            messages: RateLimiter::direct(Quota::per_second(rate).allow_burst(burst)),
            drops: RateLimiter::direct(Quota::per_second(refill).allow_burst(tolerance)),
            told_at: None,
        }
    }

    /// Judges one incoming message.
    pub fn check(&mut self) -> Verdict {
        if self.messages.check().is_ok() {
            return Verdict::Allow;
        }
        if self.drops.check().is_err() {
            return Verdict::Close;
        }
        let now = Instant::now();
        match self.told_at {
            Some(at) if now.duration_since(at) < TELL_EVERY => Verdict::Drop,
            _ => {
                self.told_at = Some(now);
                Verdict::DropAndTell
            }
        }
    }
}

/// The join limit per client address: `per_minute` joins a minute, `burst`
/// at once.
#[derive(Debug, Clone, Copy)]
pub struct JoinLimit {
    pub per_minute: NonZeroU32,
    pub burst: NonZeroU32,
}

impl JoinLimit {
    /// The time between two joins at the sustained rate.
    pub fn interval(&self) -> Duration {
        Duration::from_secs(60) / self.per_minute.get()
    }

    pub fn quota(&self) -> Quota {
        Quota::with_period(self.interval())
            .expect("interval > 0")
            .allow_burst(self.burst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(v: u32) -> NonZeroU32 {
        NonZeroU32::new(v).unwrap()
    }

    #[test]
    fn a_burst_passes_then_one_error_then_silence_then_close() {
        let mut limiter = MessageLimiter::new(n(10), n(20));
        for _ in 0..20 {
            assert_eq!(limiter.check(), Verdict::Allow);
        }
        assert_eq!(limiter.check(), Verdict::DropAndTell);
        // Up to 5 s worth (50) of drops are tolerated, silently.
        for _ in 0..49 {
            assert_eq!(limiter.check(), Verdict::Drop);
        }
        assert_eq!(limiter.check(), Verdict::Close);
    }

    #[test]
    fn a_sixty_hertz_game_never_hits_the_defaults() {
        let mut limiter = MessageLimiter::new(n(120), n(240));
        // Two seconds of 60 Hz sent at once (a client catching up).
        for _ in 0..120 {
            assert_eq!(limiter.check(), Verdict::Allow);
        }
    }

    #[test]
    fn join_interval() {
        let limit = JoinLimit {
            per_minute: n(30),
            burst: n(10),
        };
        assert_eq!(limit.interval(), Duration::from_secs(2));
    }
}
