//! A connection's socket as tungstenite reads it: large reads from the
//! socket, without a large buffer per connection.
//!
//! tungstenite reads into a buffer of its own that is allocated for every
//! connection, zero-filled (so resident), never shrunk, and as large as its
//! largest read: 4 KiB per idle connection was a quarter of the relay's
//! memory per connection. The relay gives it a small one (see
//! `server::READ_BUFFER`) and puts this between it and the socket: each read
//! from the socket takes up to [`READ_AHEAD`] bytes into a buffer on the
//! stack, hands tungstenite what fits, and keeps the rest in a heap buffer
//! that exists only while it holds bytes. A burst of small messages still
//! costs one system call, and an idle connection holds nothing here.

use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The most bytes taken from the socket in one read.
pub const READ_AHEAD: usize = 4 * 1024;

/// Wraps a socket; see the module's documentation.
#[derive(Debug)]
pub struct ReadAhead<S> {
    io: S,
    /// Bytes read from the socket and not yet taken, from `start` on; empty
    /// (no allocation) most of the time.
    spill: Vec<u8>,
    start: usize,
}

impl<S> ReadAhead<S> {
    pub fn new(io: S) -> Self {
        Self {
            io,
            spill: Vec::new(),
            start: 0,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for ReadAhead<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.start < this.spill.len() {
            let n = buf.remaining().min(this.spill.len() - this.start);
            buf.put_slice(&this.spill[this.start..this.start + n]);
            this.start += n;
            if this.start == this.spill.len() {
                this.spill = Vec::new();
                this.start = 0;
            }
            return Poll::Ready(Ok(()));
        }
        if buf.remaining() >= READ_AHEAD {
            return Pin::new(&mut this.io).poll_read(cx, buf);
        }
        let mut stack = [MaybeUninit::<u8>::uninit(); READ_AHEAD];
        let mut ahead = ReadBuf::uninit(&mut stack);
        ready!(Pin::new(&mut this.io).poll_read(cx, &mut ahead))?;
        let read = ahead.filled();
        let n = buf.remaining().min(read.len());
        buf.put_slice(&read[..n]);
        if n < read.len() {
            this.spill = read[n..].to_vec();
            this.start = 0;
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for ReadAhead<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Small reads get everything, in order, from one large socket read.
    #[tokio::test]
    async fn small_reads_take_a_large_read_in_order() {
        let (mut far, near) = tokio::io::duplex(64 * 1024);
        let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        far.write_all(&data).await.unwrap();
        drop(far);
        let mut reader = ReadAhead::new(near);
        let mut got = Vec::new();
        let mut chunk = [0u8; 100];
        loop {
            let n = reader.read(&mut chunk).await.unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&chunk[..n]);
        }
        assert_eq!(got, data);
        // Whatever was spilled was freed once taken.
        assert_eq!(reader.spill.capacity(), 0);
    }
}
