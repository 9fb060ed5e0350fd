//! The fake's connection layer: the listener that, while
//! `refuse_connections` is on, closes new connections at once (still
//! admitting control requests), and the TCP wrapper a handler can cut.
//!
//! It only accepts, screens and cuts connections: which answers a fault
//! changes is the fault middleware's business (`control`), and it knows no
//! route.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::connect_info::Connected;
use axum::serve::{IncomingStream, Listener};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::faults::FaultState;

/// The request prefix of the control routes, which faults never block.
const CONTROL_PREFIX: &[u8] = b"POST /__fake/";
/// How long a connection accepted while refusing may take to show it is a
/// control request.
const SCREEN_TIMEOUT: Duration = Duration::from_secs(1);

/// Per-connection state the fault layer can act on.
#[derive(Debug, Default)]
pub(crate) struct ConnState {
    /// Set to cut the connection: reads and writes fail from then on.
    killed: AtomicBool,
}

/// The connection handle handlers receive as `ConnectInfo`.
#[derive(Debug, Clone)]
pub(crate) struct ConnHandle(Arc<ConnState>);

impl ConnHandle {
    /// Cuts the connection: the answer being written is lost.
    pub(super) fn kill(&self) {
        self.0.killed.store(true, Ordering::SeqCst);
    }
}

impl Connected<IncomingStream<'_, FakeListener>> for ConnHandle {
    fn connect_info(stream: IncomingStream<'_, FakeListener>) -> Self {
        ConnHandle(stream.io().state.clone())
    }
}

/// A TCP connection that can be cut from a handler.
#[derive(Debug)]
pub(crate) struct FakeIo {
    /// The socket.
    stream: TcpStream,
    /// The cut switch.
    state: Arc<ConnState>,
}

impl FakeIo {
    /// Wraps an accepted socket, not cut.
    fn new(stream: TcpStream) -> Self {
        Self {
            stream,
            state: Arc::new(ConnState::default()),
        }
    }

    /// The error reads and writes get once the connection is cut.
    fn cut() -> io::Error {
        io::Error::new(
            io::ErrorKind::ConnectionReset,
            "cut by the fake's fault injection",
        )
    }
}

impl AsyncRead for FakeIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.state.killed.load(Ordering::SeqCst) {
            return Poll::Ready(Err(Self::cut()));
        }
        Pin::new(&mut this.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for FakeIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.state.killed.load(Ordering::SeqCst) {
            return Poll::Ready(Err(Self::cut()));
        }
        Pin::new(&mut this.stream).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.state.killed.load(Ordering::SeqCst) {
            return Poll::Ready(Err(Self::cut()));
        }
        Pin::new(&mut this.stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

/// The listener: while connections are refused it closes new ones at once,
/// except those whose first bytes are a control request.
#[derive(Debug)]
pub(crate) struct FakeListener {
    /// The bound socket.
    inner: TcpListener,
    /// The fault switches.
    faults: Arc<FaultState>,
    /// Screened control connections come back through here.
    admitted_tx: mpsc::Sender<(TcpStream, SocketAddr)>,
    /// See `admitted_tx`.
    admitted_rx: mpsc::Receiver<(TcpStream, SocketAddr)>,
    /// Tracks the screening tasks.
    tracker: TaskTracker,
    /// Stops screening on shutdown.
    shutdown: CancellationToken,
}

impl FakeListener {
    /// Wraps a bound listener.
    pub(crate) fn new(
        inner: TcpListener,
        faults: Arc<FaultState>,
        tracker: TaskTracker,
        shutdown: CancellationToken,
    ) -> Self {
        let (admitted_tx, admitted_rx) = mpsc::channel(64);
        Self {
            inner,
            faults,
            admitted_tx,
            admitted_rx,
            tracker,
            shutdown,
        }
    }
}

impl Listener for FakeListener {
    type Io = FakeIo;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            tokio::select! {
                admitted = self.admitted_rx.recv() => {
                    if let Some((stream, addr)) = admitted {
                        return (FakeIo::new(stream), addr);
                    }
                }
                accepted = self.inner.accept() => match accepted {
                    Ok((stream, addr)) => {
                        // aiohttp sets TCP_NODELAY on every connection; without
                        // it, Nagle and delayed ACKs hold small WebSocket frames
                        // for ~40 ms.
                        let _ = stream.set_nodelay(true);
                        if !self.faults.refuse_connections() {
                            return (FakeIo::new(stream), addr);
                        }
                        let admitted = self.admitted_tx.clone();
                        let shutdown = self.shutdown.clone();
                        self.tracker.spawn(async move {
                            tokio::select! {
                                keep = screen(&stream) => if keep {
                                    let _ = admitted.send((stream, addr)).await;
                                },
                                _ = shutdown.cancelled() => {}
                            }
                        });
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "fake comfyui: accept failed");
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                },
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// Whether a connection accepted while refusing starts with a control
/// request (peeked, not consumed).
async fn screen(stream: &TcpStream) -> bool {
    let check = async {
        let mut buf = [0u8; CONTROL_PREFIX.len()];
        loop {
            let n = match stream.peek(&mut buf).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => n,
            };
            if buf[..n] != CONTROL_PREFIX[..n] {
                return false;
            }
            if n == CONTROL_PREFIX.len() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    tokio::time::timeout(SCREEN_TIMEOUT, check)
        .await
        .unwrap_or(false)
}
