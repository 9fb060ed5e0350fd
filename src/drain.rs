//! Connections that can be cut: every accepted socket is wrapped so that,
//! once the drain deadline has passed, its reads and writes fail and hyper
//! drops the connection. Without this, calls still open at the deadline
//! (long streams) would outlive `run()`, because tonic serves each
//! connection on a task of its own.

use std::future::Future as _;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tonic::transport::server::Connected;

use crate::api::access::PeerInfo;

/// A TCP stream that fails every operation once `cut` is cancelled.
pub struct CuttableStream {
    /// The socket.
    inner: TcpStream,
    /// Resolves when the connection must be cut; polled before each
    /// operation so a blocked read wakes up when it fires.
    cut: Pin<Box<WaitForCancellationFutureOwned>>,
}

impl CuttableStream {
    /// Wraps `inner`; cancelling `cut` cuts it.
    pub fn new(inner: TcpStream, cut: &CancellationToken) -> Self {
        Self {
            inner,
            cut: Box::pin(cut.clone().cancelled_owned()),
        }
    }

    fn check(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        match self.cut.as_mut().poll(cx) {
            Poll::Ready(()) => Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "drain deadline passed",
            )),
            Poll::Pending => Ok(()),
        }
    }
}

impl AsyncRead for CuttableStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.check(cx)?;
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for CuttableStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.check(cx)?;
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.check(cx)?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.check(cx)?;
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

impl Connected for CuttableStream {
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        PeerInfo {
            remote: self.inner.peer_addr().ok(),
            cert_names: None,
        }
    }
}
