//! How the client behaves: [`Options`], and the reconnection delays,
//! [`Backoff`].

use std::time::Duration;

/// Exponential backoff with full jitter: the first attempt after a drop goes
/// at once; attempt `n` (n >= 2) waits a random time between 0 and
/// `min(max_delay, initial_delay * multiplier^(n-2))`.
#[derive(Debug, Clone, PartialEq)]
pub struct Backoff {
    /// Default 250 ms.
    pub initial_delay: Duration,
    /// The cap. Default 2 s.
    pub max_delay: Duration,
    /// Default 2.
    pub multiplier: f64,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial_delay: Duration::from_millis(250),
            max_delay: Duration::from_secs(2),
            multiplier: 2.0,
        }
    }
}

impl Backoff {
    /// The delay before attempt `attempt` (0: the first after a drop).
    pub fn delay(&self, attempt: u32) -> Duration {
        if attempt == 0 {
            return Duration::ZERO;
        }
        let exp = self
            .multiplier
            .powi(attempt.saturating_sub(1).min(64) as i32);
        let cap = (self.initial_delay.as_secs_f64() * exp).min(self.max_delay.as_secs_f64());
        Duration::from_secs_f64(rand::random::<f64>() * cap.max(0.0))
    }
}

/// How to watch a game ([`Client::watch_with`](crate::Client::watch_with)).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WatchOptions {
    /// Watch this many whole seconds behind the game (`"delay":N`; the relay
    /// refuses more than its `--max-spectator-delay`, 120 s by default, with
    /// `invalid_message`).
    pub delay: Option<u32>,
    /// Overrides [`Options::host`]: [`Event::Watching`](crate::Event::Watching) then names the host,
    /// and [`Event::HostChanged`](crate::Event::HostChanged) follows it.
    pub host: Option<bool>,
}

/// How the client behaves; [`Options::default`](crate::Options::default) suits a game.
#[derive(Debug, Clone)]
pub struct Options {
    /// Join with `"resume":true` (default true): a dropped connection then
    /// takes its seat back, with every delivery it missed.
    pub resume: bool,
    /// Join (and resume) with `"host":true` (default true): [`Event::Joined`](crate::Event::Joined),
    /// [`Event::Ready`](crate::Event::Ready) and [`Event::Resumed`](crate::Event::Resumed) then name
    /// the lobby's host seat and its epoch, and [`Event::HostChanged`](crate::Event::HostChanged)
    /// tells when the host changes.
    pub host: bool,
    /// Join with `"spectators":true` (default true; watching too):
    /// [`Event::Joined`](crate::Event::Joined) then carries the lobby's count of spectators, and
    /// [`Event::Spectators`](crate::Event::Spectators) tells when it changes (at most once a
    /// second). A resume does not ask again (the relay reads it in joins only).
    pub spectators: bool,
    /// After the seat is lost (grace period over, or a drop without resume),
    /// join the same passphrase again (or, for [`Client::join_queue`](crate::Client::join_queue),
    /// queue again), as a new player. Default false.
    pub rejoin_on_seat_lost: bool,
    /// Most game messages waiting for the seat while reconnecting; past it
    /// the send methods return [`ClientError::QueueFull`](crate::ClientError::QueueFull). Default 256.
    pub queue_limit: usize,
    /// Most sent game messages kept to send again after a resume (those the
    /// relay says it never took). Default 256.
    pub resend_limit: usize,
    /// A connection attempt that has not opened by then fails. Default 10 s.
    pub connect_timeout: Duration,
    /// [`Client::ping`](crate::Client::ping)(crate::Client::ping) fails after this. Default 10 s.
    pub ping_timeout: Duration,
    /// A player token (JWT) for a relay with `--auth`: presented in an
    /// `auth` message on each new connection, before join or resume.
    pub auth_token: Option<String>,
    /// The reconnection delays.
    pub backoff: Backoff,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            resume: true,
            host: true,
            spectators: true,
            rejoin_on_seat_lost: false,
            queue_limit: 256,
            resend_limit: 256,
            connect_timeout: Duration::from_secs(10),
            ping_timeout: Duration::from_secs(10),
            auth_token: None,
            backoff: Backoff::default(),
        }
    }
}
