//! Two futures run to completion in one task, each polled only when it was
//! woken.
//!
//! A connection's reader (the session) and writer (the outbox) share one
//! task: a second task per connection costs its header and future, and
//! connections are many. `tokio::join!` would poll both halves on every
//! wake-up, so each relayed message would also poll the reader (a read
//! attempt on the socket, the idle timer) and each incoming frame the
//! writer; here each half has its own waker, which marks it and wakes the
//! task, and only marked halves are polled.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Wake, Waker};

use futures_util::task::AtomicWaker;
use pin_project_lite::pin_project;

pin_project! {
    /// The future of [`both`]. A struct rather than an `async fn`, so that
    /// the two futures are stored once (an `async fn` keeps its arguments
    /// beside the pinned copies it awaits).
    #[must_use = "futures do nothing unless polled"]
    pub struct Both<A: Future, B: Future> {
        #[pin]
        a: A,
        #[pin]
        b: B,
        out_a: Option<A::Output>,
        out_b: Option<B::Output>,
        flag_a: Arc<Flag>,
        flag_b: Arc<Flag>,
        waker_a: Waker,
        waker_b: Waker,
    }
}

/// Runs `a` and `b` concurrently in the calling task; resolves to both
/// outputs once both are done.
pub fn both<A: Future, B: Future>(a: A, b: B) -> Both<A, B> {
    let (flag_a, flag_b) = (Arc::new(Flag::default()), Arc::new(Flag::default()));
    Both {
        a,
        b,
        out_a: None,
        out_b: None,
        waker_a: Waker::from(flag_a.clone()),
        waker_b: Waker::from(flag_b.clone()),
        flag_a,
        flag_b,
    }
}

impl<A: Future, B: Future> Future for Both<A, B> {
    type Output = (A::Output, B::Output);

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if this.out_a.is_none() && this.flag_a.take(cx) {
            if let Poll::Ready(out) = this.a.poll(&mut Context::from_waker(this.waker_a)) {
                *this.out_a = Some(out);
            }
        }
        if this.out_b.is_none() && this.flag_b.take(cx) {
            if let Poll::Ready(out) = this.b.poll(&mut Context::from_waker(this.waker_b)) {
                *this.out_b = Some(out);
            }
        }
        if this.out_a.is_some() && this.out_b.is_some() {
            if let (Some(a), Some(b)) = (this.out_a.take(), this.out_b.take()) {
                return Poll::Ready((a, b));
            }
        }
        Poll::Pending
    }
}

/// One half's waker: marks the half as due and wakes the task.
struct Flag {
    due: AtomicBool,
    task: AtomicWaker,
}

impl Default for Flag {
    fn default() -> Self {
        Self {
            // Due at first: every half is polled once to start.
            due: AtomicBool::new(true),
            task: AtomicWaker::new(),
        }
    }
}

impl Flag {
    /// Whether the half is due to be polled (and clears the mark). The
    /// task's waker is registered first, so that a wake-up racing this
    /// check wakes the task again.
    fn take(&self, cx: &Context<'_>) -> bool {
        self.task.register(cx.waker());
        self.due.swap(false, Ordering::AcqRel)
    }
}

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.due.store(true, Ordering::Release);
        self.task.wake();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    use std::future::poll_fn;
    use std::pin::pin;

    #[tokio::test]
    async fn both_outputs_and_independent_progress() {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let (a, b) = both(
            async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                tx.send(7).unwrap();
                1
            },
            async move { rx.await.unwrap() + 1 },
        )
        .await;
        assert_eq!((a, b), (1, 8));
    }

    #[tokio::test]
    async fn a_half_is_polled_only_when_woken() {
        use std::sync::atomic::AtomicUsize;
        let polls = Arc::new(AtomicUsize::new(0));
        let counted = polls.clone();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<u32>();
        // `a` never wakes after its first poll until the end; `b` receives
        // ten values.
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let a = async move {
            let mut stop = pin!(stop_rx);
            poll_fn(|cx| {
                counted.fetch_add(1, Ordering::Relaxed);
                stop.as_mut().poll(cx).map(|_| ())
            })
            .await
        };
        let b = async move {
            let mut sum = 0;
            for _ in 0..10 {
                sum += rx.recv().await.unwrap();
            }
            stop_tx.send(()).unwrap();
            sum
        };
        let feeder = tokio::spawn(async move {
            for i in 0..10 {
                tx.send(i).unwrap();
                tokio::task::yield_now().await;
            }
        });
        let ((), sum) = both(a, b).await;
        feeder.await.unwrap();
        assert_eq!(sum, 45);
        assert_eq!(
            polls.load(Ordering::Relaxed),
            2,
            "a: its first poll and its wake-up"
        );
    }
}
