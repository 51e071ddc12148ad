//! Abuse limits: how many messages a connection may send, how many joins
//! a client address may try (passphrase guessing), and how many wrong admin
//! tokens (token guessing).
//!
//! Message limits are per connection, in this process. Join limits are per
//! client address and hold for the whole cluster: with Redis their state is
//! in Redis (`gcra.lua`), without it in this process. Failure limits are per
//! client address, in this process.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Mutex;
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

/// Failed attempts per client address (wrong admin tokens): `burst` at once,
/// then one every `interval`. An address past its allowance is refused
/// outright, before its attempt is looked at, until it has one again; a
/// refused attempt costs nothing, so a client that honours `Retry-After`
/// gets in as soon as it is told.
///
/// Not governor's keyed limiter: that one can only be asked by spending a
/// cell, and only failures may spend one here (an operator's page polls
/// with the right token all day). This is the same GCRA: per address the
/// instant its allowance is whole again.
#[derive(Debug)]
pub struct FailureLimit {
    burst: u32,
    interval: Duration,
    whole_at: Mutex<HashMap<IpAddr, Instant>>,
}

/// Addresses remembered before the ones whose allowance is whole again are
/// forgotten (each is forgotten at the latest `burst` intervals after its
/// last failure).
const FAILURE_ADDRESSES: usize = 10_000;

impl FailureLimit {
    pub fn new(burst: NonZeroU32, interval: Duration) -> Self {
        Self {
            burst: burst.get(),
            interval,
            whole_at: Mutex::default(),
        }
    }

    /// How long `client` must wait before an attempt of its is looked at
    /// again; `None` when it may try now.
    pub fn wait(&self, client: IpAddr, now: Instant) -> Option<Duration> {
        let whole_at = *self.lock().get(&client)?;
        // The allowance is spent while it is more than `burst - 1`
        // intervals from whole.
        let spent_until = whole_at.checked_sub(self.interval * (self.burst - 1))?;
        Some(spent_until.saturating_duration_since(now)).filter(|wait| !wait.is_zero())
    }

    /// Counts a failed attempt of `client`.
    pub fn failed(&self, client: IpAddr, now: Instant) {
        let mut whole_at = self.lock();
        if whole_at.len() >= FAILURE_ADDRESSES {
            whole_at.retain(|_, at| *at > now);
        }
        let at = whole_at.entry(client).or_insert(now);
        *at = (*at).max(now) + self.interval;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, Instant>> {
        self.whole_at.lock().unwrap_or_else(|e| e.into_inner())
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
    fn failures_spend_the_allowance_of_their_address_only() {
        let limit = FailureLimit::new(n(3), Duration::from_secs(6));
        let (one, two): (IpAddr, IpAddr) =
            ("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap());
        let t0 = Instant::now();
        for _ in 0..3 {
            assert_eq!(limit.wait(one, t0), None);
            limit.failed(one, t0);
        }
        assert_eq!(limit.wait(one, t0), Some(Duration::from_secs(6)));
        assert_eq!(
            limit.wait(one, t0 + Duration::from_secs(2)),
            Some(Duration::from_secs(4))
        );
        assert_eq!(limit.wait(two, t0), None, "another address has its own");
        // One interval later, one more try; then a full wait again.
        let t1 = t0 + Duration::from_secs(6);
        assert_eq!(limit.wait(one, t1), None);
        limit.failed(one, t1);
        assert_eq!(limit.wait(one, t1), Some(Duration::from_secs(6)));
        // Three intervals of quiet: the whole burst again.
        let t2 = t1 + Duration::from_secs(18);
        for _ in 0..3 {
            assert_eq!(limit.wait(one, t2), None);
            limit.failed(one, t2);
        }
        assert!(limit.wait(one, t2).is_some());
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
