//! The Rust client of [lobby-relay](https://github.com/): the game's side of
//! the relay. It joins a lobby by passphrase (or by quick match: a queue,
//! [`Client::join_queue`]), tells which seat is the lobby's host
//! ([`Event::HostChanged`], [`Client::host`]), hands the lobby's events and
//! game messages to the game, sends game messages, and survives dropped
//! connections by taking the seat back (resume) with every message it
//! missed, none twice, on whichever node answers. It can also watch a game
//! as a spectator ([`Client::watch`], [`Event::Watching`]), and tells the
//! players how many watch ([`Event::Spectators`]).
//!
//! It speaks the wire protocol of the relay's `docs/protocol.md` (version 1)
//! and behaves like the JavaScript client (`clients/js`): the same events,
//! the same reconnection policy, the same bounds (`docs/clients.md`).
//!
//! ```no_run
//! use lobby_relay_client::{Client, Event, GameMessage, Options};
//!
//! # async fn game() -> Result<(), lobby_relay_client::ClientError> {
//! let mut relay = Client::connect("ws://127.0.0.1:8765/", Options::default())?;
//! relay.join("jump-rocket");
//! while let Some(event) = relay.next_event().await {
//!     match event {
//!         Event::Ready { .. } => relay.send_json(&serde_json::json!({"type": "hello"}))?,
//!         Event::Message(GameMessage::Json { value, .. }) => println!("got {value}"),
//!         Event::Closed { .. } => break,
//!         _ => {}
//!     }
//! }
//! # Ok(())
//! # }
//! ```
//!
//! The client is also a [`futures_util::Stream`] of its events.
//!
//! **In a game loop** (Bevy, macroquad: a frame function that must not
//! block), start the client with [`Client::connect_in_background`], which
//! runs it on a thread of its own, and each frame drain
//! [`Client::try_next_event`]; [`Client::send_json`] and the other requests
//! never block.
//!
//! **Reconnection.** When the connection drops, the client connects again
//! (at once, then after a random delay up to 250 ms, 500 ms, 1 s, then 2 s
//! at most: exponential backoff with full jitter, [`Backoff`]) and presents
//! its resume token with the count of deliveries it received; the relay
//! answers with what was missed. Game messages sent meanwhile wait in a
//! queue of at most [`Options::queue_limit`] (256) messages, sent after the
//! resume, in order; past that [`Client::send_json`] returns
//! [`ClientError::QueueFull`]. Messages the dropped connection swallowed
//! (the relay says how many of the seat's it took) go again first. If the
//! seat is gone (grace period over), [`Event::SeatLost`] says so, and with
//! [`Options::rejoin_on_seat_lost`] the client joins the same passphrase
//! again. `unavailable` and `rate_limited` answers to a join or resume are
//! retried with the same backoff ([`RelayError::will_retry`]).

mod events;
mod options;
mod task;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::{Notify, mpsc, oneshot};

pub use events::{
    ClientError, Event, GameMessage, RelayError, ResumeState, SeatLostReason, State, Users,
};
pub use options::{Backoff, Options, WatchOptions};
use task::Frame;

/// The wire protocol version this client speaks.
pub const PROTOCOL_VERSION: u32 = 1;

/// Types a game message may not have: the relay answers `reserved_type`.
const RESERVED_TYPES: &[&str] = &[
    "join",
    "leave",
    "ping",
    "joined",
    "ready",
    "playerJoined",
    "playerLeft",
    "pong",
    "error",
    "resume",
    "resumed",
    "playerAway",
    "playerBack",
    "auth",
    "authenticated",
    "hostChanged",
    "watching",
    "spectators",
];

enum Command {
    Join {
        target: Target,
        resume: Option<bool>,
        kept: Option<(String, u64)>,
        /// Watch, as a spectator, rather than take a seat.
        watch: Option<WatchOptions>,
    },
    Leave,
    Close,
    Ping(oneshot::Sender<Result<Duration, ClientError>>),
}

/// What a join names: a lobby's passphrase, or a quick-match queue.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    Passphrase(String),
    Queue(String),
}

/// What the game's thread and the client's task share.
struct Shared {
    out: Mutex<Outgoing>,
    wake: Notify,
    status: Mutex<Status>,
}

/// Game messages on their way: sent while the seat is open, queued (at most
/// `limit`) while it is not.
struct Outgoing {
    in_lobby: bool,
    /// A spectator: game messages are refused.
    spectating: bool,
    seat_open: bool,
    queue: VecDeque<Frame>,
    limit: usize,
}

#[derive(Default, Clone)]
struct Status {
    state: State,
    seat: Option<u32>,
    players: u32,
    node: Option<String>,
    resume: Option<ResumeState>,
    host: Option<(u32, u64)>,
    spectators: Option<u32>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The game's connection to a relay: one WebSocket at a time, one lobby at
/// a time, reconnected and resumed after a drop. Dropping it leaves the
/// lobby and closes the connection, as [`Client::close`] does.
pub struct Client {
    commands: mpsc::UnboundedSender<Command>,
    events: mpsc::UnboundedReceiver<Event>,
    shared: Arc<Shared>,
    ping_timeout: Duration,
}

impl Client {
    /// Starts a client of the relay at `url` (`ws://host:8765/`, the load
    /// balancer's address in a cluster) on the current tokio runtime. It
    /// connects when asked to join.
    pub fn connect(url: &str, options: Options) -> Result<Self, ClientError> {
        Self::connect_any(&[url], options)
    }

    /// Like [`Client::connect`], trying the URLs in turn, one per connection
    /// attempt (for clusters without a load balancer).
    pub fn connect_any(urls: &[&str], options: Options) -> Result<Self, ClientError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            ClientError::Runtime(
                "Client::connect needs a tokio runtime; use Client::connect_in_background outside one"
                    .into(),
            )
        })?;
        let (client, task) = Self::build(urls, options)?;
        runtime.spawn(task.run());
        Ok(client)
    }

    /// Starts a client on a thread of its own (with its own single-threaded
    /// tokio runtime), for a game loop that is not async: every method of
    /// the client works from the game's thread, and
    /// [`Client::try_next_event`] never blocks.
    pub fn connect_in_background(url: &str, options: Options) -> Result<Self, ClientError> {
        let (client, task) = Self::build(&[url], options)?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| ClientError::Runtime(format!("cannot start a runtime: {e}")))?;
        std::thread::Builder::new()
            .name("lobby-relay-client".into())
            .spawn(move || runtime.block_on(task.run()))
            .map_err(|e| ClientError::Runtime(format!("cannot start a thread: {e}")))?;
        Ok(client)
    }

    fn build(urls: &[&str], options: Options) -> Result<(Self, task::Task), ClientError> {
        if urls.is_empty() {
            return Err(ClientError::InvalidUrl("no URL".into()));
        }
        for url in urls {
            if !(url.starts_with("ws://") || url.starts_with("wss://")) {
                return Err(ClientError::InvalidUrl(format!(
                    "{url}: a relay's URL starts with ws:// or wss://"
                )));
            }
        }
        let shared = Arc::new(Shared {
            out: Mutex::new(Outgoing {
                in_lobby: false,
                spectating: false,
                seat_open: false,
                queue: VecDeque::new(),
                limit: options.queue_limit,
            }),
            wake: Notify::new(),
            status: Mutex::new(Status::default()),
        });
        let (commands, command_rx) = mpsc::unbounded_channel();
        let (event_tx, events) = mpsc::unbounded_channel();
        let ping_timeout = options.ping_timeout;
        let task = task::Task::new(
            urls.iter().map(|u| u.to_string()).collect(),
            options,
            command_rx,
            event_tx,
            Arc::clone(&shared),
        );
        Ok((
            Self {
                commands,
                events,
                shared,
                ping_timeout,
            },
            task,
        ))
    }

    /// Joins (or creates) the lobby of `passphrase`; [`Event::Joined`] (or
    /// an [`Event::Error`]) follows. Game messages may be sent right away:
    /// they wait for the seat.
    pub fn join(&self, passphrase: &str) {
        self.request_join(Target::Passphrase(passphrase.to_owned()), None, None, None);
    }

    /// Quick match: a seat in the oldest lobby of `queue` with room, or a
    /// new one; [`Event::Joined`] (with `queue`) or an [`Event::Error`]
    /// (`invalid_queue`, `queue_full`) follows. From there on it is an
    /// ordinary lobby; a lost seat rejoined
    /// ([`Options::rejoin_on_seat_lost`]) queues again.
    pub fn join_queue(&self, queue: &str) {
        self.request_join(Target::Queue(queue.to_owned()), None, None, None);
    }

    /// Watches the game of `passphrase` as a spectator
    /// (`{"type":"join","passphrase":...,"spectate":true}`): no seat, every
    /// game message and lobby event as the players get them;
    /// [`Event::Watching`] (or an [`Event::Error`]: `nothing_to_watch`,
    /// `spectators_full`, ...) follows. The send methods return
    /// [`ClientError::Spectating`]. No resume: after a drop the client
    /// watches again, with the backoff of a join. [`Client::leave`] stops
    /// watching.
    pub fn watch(&self, passphrase: &str) {
        self.watch_with(passphrase, WatchOptions::default());
    }

    /// [`Client::watch`] with a delay, or overriding [`Options::host`].
    pub fn watch_with(&self, passphrase: &str, options: WatchOptions) {
        self.request_join(
            Target::Passphrase(passphrase.to_owned()),
            None,
            None,
            Some(options),
        );
    }

    /// Watches the game of `queue` that filled last (chosen again on each
    /// reconnection), as [`Client::watch`].
    pub fn watch_queue(&self, queue: &str) {
        self.watch_queue_with(queue, WatchOptions::default());
    }

    /// [`Client::watch_queue`] with [`WatchOptions`].
    pub fn watch_queue_with(&self, queue: &str, options: WatchOptions) {
        self.request_join(Target::Queue(queue.to_owned()), None, None, Some(options));
    }

    /// [`Client::join_queue`], as [`Client::join_with`] is to
    /// [`Client::join`]: overriding [`Options::resume`], or first taking a
    /// kept quick-match seat back.
    pub fn join_queue_with(&self, queue: &str, resume: bool, kept: Option<ResumeState>) {
        self.request_join(
            Target::Queue(queue.to_owned()),
            Some(resume),
            kept.map(|state| (state.token, state.received)),
            None,
        );
    }

    /// Joins, overriding [`Options::resume`] for this lobby, or first trying
    /// to take a kept seat back ([`ResumeState`]: [`Event::Resumed`] if it
    /// is still held, else a new join).
    pub fn join_with(&self, passphrase: &str, resume: bool, kept: Option<ResumeState>) {
        self.request_join(
            Target::Passphrase(passphrase.to_owned()),
            Some(resume),
            kept.map(|state| (state.token, state.received)),
            None,
        );
    }

    fn request_join(
        &self,
        target: Target,
        resume: Option<bool>,
        kept: Option<(String, u64)>,
        watch: Option<WatchOptions>,
    ) {
        {
            let mut out = lock(&self.shared.out);
            // (A join while in a lobby is refused by the task: it changes
            // nothing here either.)
            if !out.in_lobby {
                out.in_lobby = true;
                out.spectating = watch.is_some();
            }
        }
        let _ = self.commands.send(Command::Join {
            target,
            resume,
            kept,
            watch,
        });
    }

    /// Sends a game message: any value that serialises to a JSON object with
    /// a string `type` (not one of the protocol's own).
    pub fn send_json<T: Serialize + ?Sized>(&self, message: &T) -> Result<(), ClientError> {
        let value = serde_json::to_value(message)
            .map_err(|e| ClientError::InvalidMessage(e.to_string()))?;
        check_game_message(&value)?;
        self.enqueue(Frame::text(value.to_string()))
    }

    /// Sends a game message given as JSON text, byte for byte.
    pub fn send_text(&self, text: impl Into<String>) -> Result<(), ClientError> {
        let text = text.into();
        let value: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| ClientError::InvalidMessage(format!("not JSON: {e}")))?;
        check_game_message(&value)?;
        self.enqueue(Frame::text(text))
    }

    /// Sends a binary game message.
    pub fn send_binary(&self, bytes: impl Into<Vec<u8>>) -> Result<(), ClientError> {
        self.enqueue(Frame::binary(bytes.into()))
    }

    fn enqueue(&self, frame: Frame) -> Result<(), ClientError> {
        {
            let mut out = lock(&self.shared.out);
            if !out.in_lobby {
                return Err(ClientError::NotInLobby);
            }
            if out.spectating {
                return Err(ClientError::Spectating);
            }
            if !out.seat_open && out.queue.len() >= out.limit {
                return Err(ClientError::QueueFull(out.queue.len()));
            }
            out.queue.push_back(frame);
        }
        self.shared.wake.notify_one();
        Ok(())
    }

    /// Leaves the lobby: the others get `playerLeft`; the connection stays
    /// for a next join. Game messages sent before go first.
    pub fn leave(&self) {
        lock(&self.shared.out).in_lobby = false;
        let _ = self.commands.send(Command::Leave);
    }

    /// Leaves and closes; [`Event::Closed`] follows.
    pub fn close(&self) {
        lock(&self.shared.out).in_lobby = false;
        let _ = self.commands.send(Command::Close);
    }

    /// The round trip of a `ping` to the node this connection is on.
    pub async fn ping(&self) -> Result<Duration, ClientError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(Command::Ping(tx))
            .map_err(|_| ClientError::Closed)?;
        match tokio::time::timeout(self.ping_timeout, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(ClientError::Closed),
            Err(_) => Err(ClientError::PingTimeout),
        }
    }

    /// The next event; `None` after [`Event::Closed`] once the client has
    /// stopped.
    pub async fn next_event(&mut self) -> Option<Event> {
        self.events.recv().await
    }

    /// The next event if there is one (never blocks): for a game loop.
    pub fn try_next_event(&mut self) -> Option<Event> {
        self.events.try_recv().ok()
    }

    /// Where the client is.
    pub fn state(&self) -> State {
        lock(&self.shared.status).state
    }

    /// This player's seat while seated.
    pub fn seat(&self) -> Option<u32> {
        lock(&self.shared.status).seat
    }

    /// The lobby's host seat, as last told (joined, ready, resumed,
    /// [`Event::HostChanged`]); `None` outside a lobby or without
    /// [`Options::host`].
    pub fn host(&self) -> Option<u32> {
        lock(&self.shared.status).host.map(|(host, _)| host)
    }

    /// The host's epoch, as last told: it only grows while the lobby exists.
    pub fn epoch(&self) -> Option<u64> {
        lock(&self.shared.status).host.map(|(_, epoch)| epoch)
    }

    /// Whether the client watches (from [`Client::watch`] until
    /// [`Client::leave`], reconnections included).
    pub fn spectating(&self) -> bool {
        let out = lock(&self.shared.out);
        out.in_lobby && out.spectating
    }

    /// The lobby's spectators, as last told ([`Event::Joined`],
    /// [`Event::Watching`], [`Event::Spectators`]); `None` when unknown.
    pub fn spectators(&self) -> Option<u32> {
        lock(&self.shared.status).spectators
    }

    /// Members of the lobby, as last told.
    pub fn players(&self) -> u32 {
        lock(&self.shared.status).players
    }

    /// The id of the node the connection is on, once a ping told it.
    pub fn node(&self) -> Option<String> {
        lock(&self.shared.status).node.clone()
    }

    /// The seat's resume state, while it has one: keep it to resume after
    /// the app restarts ([`Client::join_with`]). Keep it out of logs.
    pub fn resume_state(&self) -> Option<ResumeState> {
        lock(&self.shared.status).resume.clone()
    }

    /// Game messages waiting for the connection.
    pub fn queued(&self) -> usize {
        let out = lock(&self.shared.out);
        if out.seat_open { 0 } else { out.queue.len() }
    }
}

/// The events as an async stream (`futures::StreamExt::next` and friends),
/// the same as [`Client::next_event`].
impl futures_util::Stream for Client {
    type Item = Event;

    fn poll_next(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Event>> {
        self.get_mut().events.poll_recv(cx)
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        let _ = self.commands.send(Command::Close);
    }
}

/// What the relay would relay as a game message.
fn check_game_message(value: &serde_json::Value) -> Result<(), ClientError> {
    let kind = value
        .as_object()
        .and_then(|object| object.get("type"))
        .and_then(|kind| kind.as_str())
        .ok_or_else(|| ClientError::InvalidMessage("a JSON object with a string `type`".into()))?;
    if RESERVED_TYPES.contains(&kind) {
        return Err(ClientError::InvalidMessage(format!(
            "`{kind}` is one of the protocol's own types"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_starts_at_once_then_stays_under_a_growing_cap() {
        let backoff = Backoff::default();
        assert_eq!(backoff.delay(0), Duration::ZERO);
        for _ in 0..200 {
            assert!(backoff.delay(1) <= Duration::from_millis(250));
            assert!(backoff.delay(2) <= Duration::from_millis(500));
            assert!(backoff.delay(3) <= Duration::from_secs(1));
            assert!(backoff.delay(30) <= Duration::from_secs(2));
        }
        // Jitter: not always the cap.
        let delays: std::collections::HashSet<_> = (0..50).map(|_| backoff.delay(5)).collect();
        assert!(delays.len() > 10, "{delays:?}");
    }

    #[test]
    fn only_game_messages_are_sent() {
        assert!(check_game_message(&serde_json::json!({"type": "playerMove"})).is_ok());
        for bad in [
            serde_json::json!({"type": "join"}),
            serde_json::json!({"type": "ping"}),
            serde_json::json!({"kind": "x"}),
            serde_json::json!([1]),
            serde_json::json!({"type": 3}),
        ] {
            assert!(
                matches!(
                    check_game_message(&bad),
                    Err(ClientError::InvalidMessage(_))
                ),
                "{bad}"
            );
        }
    }

    #[tokio::test]
    async fn messages_before_a_join_are_refused_and_the_queue_is_bounded() {
        let options = Options {
            queue_limit: 2,
            ..Options::default()
        };
        // Nothing listens there: the client keeps reconnecting meanwhile.
        let client = Client::connect("ws://127.0.0.1:9/", options).unwrap();
        assert_eq!(
            client.send_json(&serde_json::json!({"type": "a"})),
            Err(ClientError::NotInLobby)
        );
        client.join("jump-rocket");
        client.send_binary(vec![1]).unwrap();
        client.send_binary(vec![2]).unwrap();
        assert_eq!(client.send_binary(vec![3]), Err(ClientError::QueueFull(2)));
        assert_eq!(client.queued(), 2);
    }

    #[tokio::test]
    async fn a_spectator_sends_nothing() {
        let client = Client::connect("ws://127.0.0.1:9/", Options::default()).unwrap();
        client.watch("jump-rocket");
        assert!(client.spectating());
        assert_eq!(
            client.send_json(&serde_json::json!({"type": "a"})),
            Err(ClientError::Spectating)
        );
        assert_eq!(client.send_binary(vec![1]), Err(ClientError::Spectating));
        assert_eq!(client.queued(), 0);
        // A join while watching changes nothing.
        client.join("other");
        assert_eq!(client.send_binary(vec![1]), Err(ClientError::Spectating));
        client.leave();
        assert!(!client.spectating());
        client.join("jump-rocket");
        assert_eq!(client.send_binary(vec![1]), Ok(()));
        assert_eq!(
            check_game_message(&serde_json::json!({"type": "spectators"})),
            Err(ClientError::InvalidMessage(
                "`spectators` is one of the protocol's own types".into()
            ))
        );
    }

    #[tokio::test]
    async fn the_events_are_a_stream_too() {
        use futures_util::StreamExt;
        let mut client = Client::connect("ws://127.0.0.1:9/", Options::default()).unwrap();
        client.close();
        let closed = client.next().await;
        assert!(
            matches!(
                closed,
                Some(Event::Closed {
                    by_client: true,
                    ..
                })
            ),
            "{closed:?}"
        );
        assert_eq!(client.next().await, None);
    }

    #[test]
    fn urls_must_be_websocket_urls() {
        assert!(matches!(
            Client::connect_in_background("http://127.0.0.1:8765/", Options::default()),
            Err(ClientError::InvalidUrl(_))
        ));
    }
}
