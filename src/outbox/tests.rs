//! The outbox alone: order and batching, its byte bound, the close, and a
//! writer whose reader stops.

use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use super::*;

/// What a writer did to its socket.
#[derive(Debug, Default)]
struct Wire {
    frames: Vec<Message>,
    flushes: usize,
    closed: bool,
}

/// A socket for [`run_writer`]: records what is written, or (`stalled`)
/// takes nothing, like a client that stopped reading once its socket
/// buffers are full.
struct Socket {
    wire: Arc<Mutex<Wire>>,
    stalled: bool,
}

fn socket(stalled: bool) -> (Socket, Arc<Mutex<Wire>>) {
    let wire = Arc::new(Mutex::new(Wire::default()));
    (
        Socket {
            wire: wire.clone(),
            stalled,
        },
        wire,
    )
}

impl Sink<Message> for Socket {
    type Error = tungstenite::Error;

    fn poll_ready(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        if self.stalled {
            Poll::Pending
        } else {
            Poll::Ready(Ok(()))
        }
    }

    fn start_send(self: Pin<&mut Self>, item: Message) -> Result<(), Self::Error> {
        self.wire.lock().unwrap().frames.push(item);
        Ok(())
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.wire.lock().unwrap().flushes += 1;
        Poll::Ready(Ok(()))
    }

    fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        if self.stalled {
            return Poll::Pending;
        }
        self.wire.lock().unwrap().closed = true;
        Poll::Ready(Ok(()))
    }
}

fn text(n: usize) -> Message {
    Message::text(format!("{n:0100}")) // 100 bytes
}

fn close_code(frame: &Message) -> Option<(CloseCode, String)> {
    match frame {
        Message::Close(Some(f)) => Some((f.code, f.reason.to_string())),
        _ => None,
    }
}

#[tokio::test]
async fn frames_go_out_in_order_then_the_close_frame_ends_the_writer() {
    let (outbox, inbox) = channel(1 << 20);
    for n in 0..100 {
        assert!(outbox.deliver(text(n)));
    }
    outbox.close(CloseCode::Normal, "bye");
    let (sink, wire) = socket(false);
    run_writer(sink, inbox).await;
    let wire = wire.lock().unwrap();
    assert_eq!(wire.frames.len(), 101);
    for (n, frame) in wire.frames[..100].iter().enumerate() {
        assert_eq!(frame, &text(n), "frame {n}");
    }
    assert_eq!(
        close_code(&wire.frames[100]),
        Some((CloseCode::Normal, "bye".to_owned()))
    );
    // 101 frames in batches of at most 64: two flushes, not one per frame.
    assert_eq!(wire.flushes, 2);
    assert!(wire.closed);
    drop(wire);
    assert!(
        !outbox.deliver(text(0)),
        "nothing is queued once the writer ended"
    );
}

#[tokio::test]
async fn the_writer_closes_the_socket_when_every_outbox_is_gone() {
    let (outbox, inbox) = channel(1 << 20);
    let lobby_side = outbox.clone();
    outbox.deliver(text(1));
    drop(outbox);
    lobby_side.deliver(text(2));
    let (sink, wire) = socket(false);
    let writer = tokio::spawn(run_writer(sink, inbox));
    tokio::task::yield_now().await;
    assert!(!writer.is_finished(), "a sender is still alive");
    drop(lobby_side);
    writer.await.unwrap();
    let wire = wire.lock().unwrap();
    assert_eq!(wire.frames, [text(1), text(2)]);
    assert!(wire.closed);
}

/// The bound is in bytes: what fits is queued, the frame that would pass
/// it is refused and the client is disconnected with 1008, skipping what
/// is still queued.
#[tokio::test]
async fn passing_the_byte_bound_disconnects_with_1008() {
    let per_frame = cost(&text(0));
    let (outbox, inbox) = channel(3 * per_frame);
    for n in 0..3 {
        assert!(outbox.deliver(text(n)), "frame {n} fits");
    }
    assert!(!outbox.is_aborted());
    assert!(!outbox.deliver(text(3)), "the fourth passes the bound");
    assert!(outbox.is_aborted());
    // `aborted()` resolves for the session.
    tokio::time::timeout(Duration::from_secs(1), outbox.aborted())
        .await
        .expect("aborted() resolves once aborted");
    let (sink, wire) = socket(false);
    run_writer(sink, inbox).await;
    let wire = wire.lock().unwrap();
    assert_eq!(wire.frames.len(), 1, "queued frames are skipped: {wire:?}");
    assert_eq!(
        close_code(&wire.frames[0]),
        Some((
            CloseCode::Policy,
            "too slow: outbound queue full".to_owned()
        ))
    );
}

/// A burst of many small frames is not a slow reader: the bound counts
/// bytes, and what the writer took no longer counts.
#[tokio::test]
async fn what_the_writer_took_no_longer_counts() {
    let per_frame = cost(&text(0));
    let (outbox, inbox) = channel(2 * per_frame);
    let (sink, wire) = socket(false);
    let writer = tokio::spawn(run_writer(sink, inbox));
    for n in 0..1000 {
        assert!(outbox.deliver(text(n)), "frame {n}");
        while wire.lock().unwrap().frames.len() <= n {
            tokio::task::yield_now().await;
        }
    }
    assert!(!outbox.is_aborted());
    drop(outbox);
    writer.await.unwrap();
    assert_eq!(wire.lock().unwrap().frames.len(), 1000);
}

/// The close frame is queued whatever the bound (it must reach a client
/// whose queue is full), and a second close adds nothing after it.
#[tokio::test]
async fn the_close_frame_is_queued_even_at_the_bound() {
    let per_frame = cost(&text(0));
    let (outbox, inbox) = channel(2 * per_frame);
    assert!(outbox.deliver(text(0)));
    assert!(outbox.deliver(text(1)));
    outbox.close(CloseCode::Away, "going away");
    assert!(!outbox.is_aborted());
    let (sink, wire) = socket(false);
    run_writer(sink, inbox).await;
    let wire = wire.lock().unwrap();
    assert_eq!(wire.frames.len(), 3);
    assert_eq!(
        close_code(&wire.frames[2]),
        Some((CloseCode::Away, "going away".to_owned()))
    );
}

#[tokio::test]
async fn abort_with_sends_its_last_word_then_the_close_frame() {
    let (outbox, inbox) = channel(1 << 20);
    outbox.deliver(text(0));
    outbox.abort_with(Message::text("why"), CloseCode::from(4001), "seat lost");
    let (sink, wire) = socket(false);
    run_writer(sink, inbox).await;
    let wire = wire.lock().unwrap();
    assert_eq!(wire.frames.len(), 2, "{wire:?}");
    assert_eq!(wire.frames[0], Message::text("why"));
    assert_eq!(
        close_code(&wire.frames[1]),
        Some((CloseCode::from(4001), "seat lost".to_owned()))
    );
}

/// A client that reads nothing: delivery never waits on it (the queue
/// fills, then it is cut off), and once the session is gone its writer
/// gives up after `CLOSE_TIMEOUT` rather than hold the connection.
#[tokio::test(start_paused = true)]
async fn a_reader_that_stops_never_holds_up_the_sender_and_is_given_up() {
    let per_frame = cost(&text(0));
    let (outbox, inbox) = channel(10 * per_frame);
    let (sink, wire) = socket(true);
    let writer = tokio::spawn(run_writer(sink, inbox));
    let mut queued = 0;
    while outbox.deliver(text(queued)) {
        queued += 1;
        assert!(queued < 1000, "the queue never filled");
    }
    assert!(outbox.is_aborted(), "a full queue disconnects");
    // The writer tries to send the close frame for `CLOSE_TIMEOUT`, then
    // gives the socket up.
    let waited = drop_and_wait(outbox, writer, CLOSE_TIMEOUT * 2).await;
    assert!(waited >= CLOSE_TIMEOUT);
    assert!(!wire.lock().unwrap().closed);
}

/// Drops the session's last sender and waits, at most `within`, for the
/// writer to give the socket up; how long that took.
async fn drop_and_wait(
    outbox: Outbox,
    writer: tokio::task::JoinHandle<Socket>,
    within: Duration,
) -> Duration {
    let gone = tokio::time::Instant::now();
    drop(outbox);
    tokio::time::timeout(within, writer)
        .await
        .expect("the writer gave up")
        .unwrap();
    gone.elapsed()
}

#[tokio::test(start_paused = true)]
async fn a_stuck_write_is_given_up_once_the_session_is_gone() {
    let (outbox, inbox) = channel(1 << 20);
    outbox.deliver(text(0));
    let (sink, _wire) = socket(true);
    let writer = tokio::spawn(run_writer(sink, inbox));
    tokio::time::sleep(CLOSE_TIMEOUT * 5).await;
    assert!(
        !writer.is_finished(),
        "while a sender lives, a slow socket is waited for"
    );
    let waited = drop_and_wait(outbox, writer, CLOSE_TIMEOUT * 10).await;
    assert!(
        waited >= CLOSE_TIMEOUT && waited < CLOSE_TIMEOUT * 2,
        "{waited:?}"
    );
}

#[test]
fn waiting_bytes_are_bounded_but_one_message_always_passes() {
    let (outbox, _inbox) = channel(1 << 20);
    let big = outbox
        .reserve_waiting(5000, 1000)
        .expect("the first passes");
    assert!(outbox.reserve_waiting(1, 1000).is_none(), "over the limit");
    drop(big);
    let a = outbox.reserve_waiting(600, 1000).expect("fits");
    let b = outbox.reserve_waiting(400, 1000).expect("fits exactly");
    assert!(outbox.reserve_waiting(1, 1000).is_none());
    drop(a);
    assert!(outbox.reserve_waiting(600, 1000).is_some());
    drop(b);
}

#[test]
fn a_dropped_message_is_told_once_a_second_at_most() {
    let (outbox, _inbox) = channel(1 << 20);
    let waiting = outbox.reserve_waiting(10, 1000).unwrap();
    waiting.tell_dropped(|| Message::text("dropped"));
    waiting.tell_dropped(|| Message::text("dropped"));
    assert_eq!(outbox.take_queued(), [Message::text("dropped")]);
    drop(outbox);
    // The connection is gone: nothing to tell, and nothing panics.
    waiting.tell_dropped(|| Message::text("dropped"));
}
