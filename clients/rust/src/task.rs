//! The client's task: owns the WebSocket and the seat's state, follows the
//! protocol, reconnects and resumes. The game talks to it through
//! [`crate::Client`] (commands and the shared outgoing queue) and hears from
//! it through events.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

mod relay;

use crate::{
    ClientError, Command, Event, Options, RelayError, ResumeState, SeatLostReason, Shared, State,
    Target, lock,
};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;
type Connecting = Pin<Box<dyn Future<Output = Result<Ws, String>> + Send>>;

/// A game message on the wire: a tungstenite message, whose payload is
/// shared, not copied, when it is both sent and kept for a resend.
pub(crate) type Frame = Message;

/// What the relay sends that is not a delivery (not counted for resume).
/// `hostChanged` and `spectators` are state, not history: never counted,
/// never replayed.
const NOT_DELIVERIES: &[&str] = &[
    "joined",
    "resumed",
    "watching",
    "pong",
    "error",
    "authenticated",
    "hostChanged",
    "spectators",
];
/// Answers to a join or resume that are tried again later.
const RETRIED: &[&str] = &["unavailable", "rate_limited"];
/// A refused player token: the relay closes with 1008.
const TOKEN_ERRORS: &[&str] = &[
    "token_required",
    "token_invalid",
    "token_expired",
    "token_not_yet_valid",
];
const CLOSE_TAKEN_OVER: u16 = 4002;
const CLOSE_NODE_FULL: u16 = 1013;
const NODE_FULL_DELAY: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pending {
    Auth,
    Join,
    Resume,
}

struct Lobby {
    target: Target,
    resume: bool,
    /// Asked for the host (`"host":true` in the join and its resumes).
    host: bool,
    /// join() started from a kept token: a refused resume joins anew.
    joining: bool,
    /// A spectator (watch()): no seat, no resume; after a drop it watches
    /// again.
    spectate: bool,
    /// With `spectate`: seconds behind the game.
    delay: Option<u32>,
}

pub(crate) struct Task {
    urls: Vec<String>,
    url_index: usize,
    options: Options,
    commands: mpsc::UnboundedReceiver<Command>,
    events: mpsc::UnboundedSender<Event>,
    shared: Arc<Shared>,

    ws: Option<Ws>,
    connecting: Option<Connecting>,
    retry_at: Option<Instant>,
    attempt: u32,
    authed: bool,
    /// The close frame the relay sent on this connection.
    close: Option<(u16, String)>,
    closing: bool,
    stopped: bool,

    lobby: Option<Lobby>,
    pending: Option<Pending>,
    in_seat: bool,
    seat: Option<u32>,
    players: u32,
    /// The host's seat and epoch, as last told.
    host: Option<(u32, u64)>,
    /// The lobby's spectators, as last told.
    spectators: Option<u32>,
    token: Option<String>,
    received: u64,
    sent: u64,
    /// Whether `sent` and `unacked` still match what the relay took.
    resendable: bool,
    /// Game messages sent in this seat, the latest `resend_limit` of them.
    unacked: VecDeque<Frame>,

    ping_seq: u64,
    pings: HashMap<u64, (Instant, oneshot::Sender<Result<Duration, ClientError>>)>,
}

impl Task {
    pub(crate) fn new(
        urls: Vec<String>,
        options: Options,
        commands: mpsc::UnboundedReceiver<Command>,
        events: mpsc::UnboundedSender<Event>,
        shared: Arc<Shared>,
    ) -> Self {
        Self {
            urls,
            url_index: 0,
            options,
            commands,
            events,
            shared,
            ws: None,
            connecting: None,
            retry_at: None,
            attempt: 0,
            authed: false,
            close: None,
            closing: false,
            stopped: false,
            lobby: None,
            pending: None,
            in_seat: false,
            seat: None,
            players: 0,
            host: None,
            spectators: None,
            token: None,
            received: 0,
            sent: 0,
            resendable: true,
            unacked: VecDeque::new(),
            ping_seq: 0,
            pings: HashMap::new(),
        }
    }

    pub(crate) async fn run(mut self) {
        let shared = Arc::clone(&self.shared);
        while !self.stopped {
            let seat_open = self.in_seat && self.ws.is_some();
            tokio::select! {
                command = self.commands.recv() => match command {
                    Some(command) => self.command(command).await,
                    // The Client was dropped.
                    None => self.command(Command::Close).await,
                },
                () = shared.wake.notified(), if seat_open => self.flush().await,
                incoming = next(&mut self.ws), if self.ws.is_some() => self.incoming(incoming).await,
                opened = poll_connecting(&mut self.connecting), if self.connecting.is_some() => {
                    self.connecting = None;
                    match opened {
                        Ok(ws) => {
                            self.ws = Some(ws);
                            self.close = None;
                            if self.state() != State::Reconnecting {
                                self.set_state(State::Open);
                            }
                            self.request().await;
                        }
                        Err(reason) => self.dropped(None, reason),
                    }
                }
                () = sleep_until(self.retry_at), if self.retry_at.is_some() => {
                    self.retry_at = None;
                    self.request().await;
                }
            }
        }
    }

    // ---------------------------------------------------------------------
    // The game's requests
    // ---------------------------------------------------------------------

    async fn command(&mut self, command: Command) {
        match command {
            Command::Join {
                target,
                resume,
                kept,
                watch,
            } => {
                if self.lobby.is_some() {
                    self.emit_error("already_joined", "this client is in a lobby: leave first");
                    return;
                }
                let spectate = watch.is_some();
                // A spectator takes no resume token.
                let resume = !spectate && resume.unwrap_or(self.options.resume);
                let host = watch
                    .as_ref()
                    .and_then(|w| w.host)
                    .unwrap_or(self.options.host);
                let delay = watch.and_then(|w| w.delay);
                self.set_spectators(None);
                self.token = None;
                self.received = 0;
                let joining = resume && kept.is_some();
                if let (true, Some((token, received))) = (resume, kept) {
                    self.token = Some(token);
                    self.received = received;
                }
                self.lobby = Some(Lobby {
                    target,
                    resume,
                    host,
                    joining,
                    spectate,
                    delay,
                });
                self.attempt = 0;
                self.request().await;
            }
            Command::Leave => self.leave().await,
            Command::Close => {
                self.leave().await;
                self.closing = true;
                self.retry_at = None;
                self.connecting = None;
                if let Some(mut ws) = self.ws.take() {
                    // A short wait for the relay's answer; it ends the
                    // connection either way.
                    let _ = tokio::time::timeout(Duration::from_secs(2), async {
                        let _ = ws.close(None).await;
                        while let Some(Ok(_)) = ws.next().await {}
                    })
                    .await;
                }
                self.stop(Some(1000), "client closed".into(), true);
            }
            Command::Ping(reply) => {
                if self.ws.is_none() {
                    let _ = reply.send(Err(ClientError::NotConnected));
                    return;
                }
                self.ping_seq += 1;
                let t = self.ping_seq;
                self.pings.insert(t, (Instant::now(), reply));
                self.control(json!({"type": "ping", "t": t, "node": true}))
                    .await;
            }
        }
    }

    async fn leave(&mut self) {
        if self.lobby.is_none() {
            return;
        }
        // What the game sent before leaving goes first.
        self.flush().await;
        let tell = self.ws.is_some()
            && (self.in_seat || matches!(self.pending, Some(Pending::Join | Pending::Resume)));
        // Forgotten before the relay hears of it: once the others see this
        // player leave, its own client shows no seat (nor host) either.
        self.forget_lobby();
        if tell {
            self.control(json!({"type": "leave"})).await;
        }
        self.retry_at = None;
        if self.ws.is_none() && self.connecting.is_none() {
            self.set_state(State::Idle);
        }
    }

    // ---------------------------------------------------------------------
    // The connection
    // ---------------------------------------------------------------------

    /// The next step towards a seat: connect, authenticate, resume or join.
    async fn request(&mut self) {
        let Some((target, resume, host, spectate, delay)) = self.lobby.as_ref().map(|lobby| {
            (
                lobby.target.clone(),
                lobby.resume,
                lobby.host,
                lobby.spectate,
                lobby.delay,
            )
        }) else {
            return;
        };
        if self.ws.is_none() {
            if self.connecting.is_none() && self.retry_at.is_none() {
                self.open();
            }
            return;
        }
        if let (Some(token), false) = (&self.options.auth_token, self.authed) {
            self.pending = Some(Pending::Auth);
            let message = json!({"type": "auth", "token": token});
            self.control(message).await;
            return;
        }
        let mut message = if let Some(token) = &self.token {
            self.pending = Some(Pending::Resume);
            json!({"type": "resume", "token": token, "received": self.received})
        } else {
            self.pending = Some(Pending::Join);
            let mut join = match target {
                Target::Passphrase(passphrase) => json!({"type": "join", "passphrase": passphrase}),
                Target::Queue(queue) => json!({"type": "join", "queue": queue}),
            };
            if spectate {
                join["spectate"] = Value::Bool(true);
            }
            if let Some(delay) = delay {
                join["delay"] = json!(delay);
            }
            if resume {
                join["resume"] = Value::Bool(true);
            }
            if self.options.spectators {
                join["spectators"] = Value::Bool(true);
            }
            join
        };
        if host {
            message["host"] = Value::Bool(true);
        }
        self.control(message).await;
    }

    fn open(&mut self) {
        let url = self.urls[self.url_index % self.urls.len()].clone();
        self.url_index += 1;
        if self.state() != State::Reconnecting {
            self.set_state(State::Connecting);
        }
        self.authed = false;
        let timeout = self.options.connect_timeout;
        self.connecting = Some(Box::pin(async move {
            match tokio::time::timeout(timeout, tokio_tungstenite::connect_async(url.as_str()))
                .await
            {
                Ok(Ok((ws, _response))) => Ok(ws),
                Ok(Err(e)) => Err(format!("cannot connect to {url}: {e}")),
                Err(_) => Err(format!("no connection to {url} within {timeout:?}")),
            }
        }));
    }

    /// The connection ended (or never opened).
    fn dropped(&mut self, code: Option<u16>, reason: String) {
        self.ws = None;
        self.authed = false;
        self.seat_closed();
        for (_, (_, reply)) in self.pings.drain() {
            let _ = reply.send(Err(ClientError::NotConnected));
        }
        if self.closing {
            self.stop(code, reason, true);
            return;
        }
        if code == Some(CLOSE_TAKEN_OVER) {
            // Our seat went on with another connection of ours: stop.
            self.forget_lobby();
            self.stop(code, reason, false);
            return;
        }
        let had_seat = self.in_seat;
        self.in_seat = false;
        self.pending = None;
        if self.lobby.is_none() {
            // Not in a lobby: nothing to come back to.
            self.set_state(State::Idle);
            return;
        }
        if self.lobby.as_ref().is_some_and(|lobby| lobby.spectate) {
            // No resume for a spectator: it watches again.
            self.received = 0;
        } else if had_seat && self.token.is_none() {
            // Not resumable: the relay gave the seat up with the connection.
            self.seat_lost(SeatLostReason::Disconnected);
            if self.lobby.is_none() {
                self.set_state(State::Idle);
                return;
            }
        }
        let mut delay = self.next_delay();
        if code == Some(CLOSE_NODE_FULL) {
            delay = delay.max(NODE_FULL_DELAY);
        }
        self.set_state(State::Reconnecting);
        self.retry_at = Some(Instant::now() + delay);
        self.emit(Event::Reconnecting {
            attempt: self.attempt,
            delay,
            code,
            reason,
        });
    }

    fn next_delay(&mut self) -> Duration {
        let delay = self.options.backoff.delay(self.attempt);
        self.attempt = self.attempt.saturating_add(1);
        delay
    }

    fn stop(&mut self, code: Option<u16>, reason: String, by_client: bool) {
        self.retry_at = None;
        self.stopped = true;
        self.set_state(State::Closed);
        self.emit(Event::Closed {
            code,
            reason,
            by_client,
        });
    }

    // ---------------------------------------------------------------------
    // Game messages out
    // ---------------------------------------------------------------------

    /// The seat is open on this connection: `again` first, then what waited
    /// (and what the game sends meanwhile: the queue is the one way out).
    async fn seat_opened(&mut self, again: Vec<Frame>) {
        for frame in again {
            self.write(frame).await;
        }
        self.flush().await;
    }

    /// The seat is not open any more: what the game sends now waits.
    fn seat_closed(&mut self) {
        lock(&self.shared.out).seat_open = false;
    }

    /// Sends what the game queued, in order, while the seat is open.
    async fn flush(&mut self) {
        loop {
            if !(self.in_seat && self.ws.is_some()) {
                return;
            }
            let batch: Vec<Frame> = {
                let mut out = lock(&self.shared.out);
                if out.queue.is_empty() {
                    return;
                }
                out.queue.drain(..).collect()
            };
            for frame in batch {
                self.write(frame).await;
            }
        }
    }

    async fn write(&mut self, frame: Frame) {
        self.sent += 1;
        let message = frame.clone();
        if self.token.is_some() {
            self.unacked.push_back(frame);
            if self.unacked.len() > self.options.resend_limit {
                self.unacked.pop_front();
            }
        }
        if let Some(ws) = &mut self.ws {
            // A failed write shows as the connection's end on the next read.
            let _ = ws.send(message).await;
        }
    }

    async fn control(&mut self, message: Value) {
        if let Some(ws) = &mut self.ws {
            let _ = ws.send(Message::text(message.to_string())).await;
        }
    }

    // ---------------------------------------------------------------------
    // Helpers
    // ---------------------------------------------------------------------

    fn forget_lobby(&mut self) {
        self.lobby = None;
        self.pending = None;
        self.in_seat = false;
        self.seat = None;
        self.players = 0;
        self.host = None;
        self.set_spectators(None);
        self.token = None;
        self.received = 0;
        self.sent = 0;
        self.unacked.clear();
        {
            let mut out = lock(&self.shared.out);
            out.in_lobby = false;
            out.seat_open = false;
            out.queue.clear();
        }
        self.publish_seat();
    }

    fn emit(&self, event: Event) {
        // Nobody listening (the Client dropped): nothing to tell.
        let _ = self.events.send(event);
    }

    fn emit_error(&self, code: &str, message: &str) {
        self.emit(Event::Error(RelayError {
            code: code.into(),
            message: message.into(),
            fatal: false,
            will_retry: false,
        }));
    }

    fn state(&self) -> State {
        lock(&self.shared.status).state
    }

    fn set_state(&self, state: State) {
        lock(&self.shared.status).state = state;
    }

    fn set_players(&mut self, players: u32) {
        self.players = players;
        lock(&self.shared.status).players = players;
    }

    fn set_spectators(&mut self, count: Option<u32>) {
        self.spectators = count;
        lock(&self.shared.status).spectators = count;
    }

    fn publish_seat(&self) {
        let mut status = lock(&self.shared.status);
        status.seat = if self.in_seat { self.seat } else { None };
        status.players = self.players;
        status.host = if self.in_seat { self.host } else { None };
        drop(status);
        self.publish_resume_state();
    }

    fn publish_resume_state(&self) {
        let resume = match (&self.lobby, &self.token) {
            (Some(lobby), Some(token)) => Some(ResumeState {
                passphrase: match &lobby.target {
                    Target::Passphrase(passphrase) => passphrase.clone(),
                    Target::Queue(_) => String::new(),
                },
                queue: match &lobby.target {
                    Target::Passphrase(_) => None,
                    Target::Queue(queue) => Some(queue.clone()),
                },
                token: token.clone(),
                received: self.received,
            }),
            _ => None,
        };
        lock(&self.shared.status).resume = resume;
    }
}

async fn next(ws: &mut Option<Ws>) -> Option<Result<Message, String>> {
    match ws {
        Some(ws) => ws.next().await.map(|r| r.map_err(|e| e.to_string())),
        None => std::future::pending().await,
    }
}

async fn poll_connecting(connecting: &mut Option<Connecting>) -> Result<Ws, String> {
    match connecting {
        Some(future) => future.await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
