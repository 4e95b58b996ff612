//! A TCP proxy for the end-to-end tests that forwards to one upstream (Azurite in the chaos suite)
//! and, on command, misbehaves the way a flaky network or an overloaded store does: it resets
//! connections, cuts requests halfway, answers `503 Server Busy`, or stalls.
//!
//! It works on bytes, not HTTP, so the client under test sees real socket errors. Switching to a
//! fault also resets every connection already open, because HTTP clients pool connections and a
//! fault that spared pooled connections would rarely be seen.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What the proxy does with connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fault {
    /// Forwards both ways.
    None,
    /// Accepts, then resets (RST) at once.
    Reset,
    /// Forwards the first half of what the client sends first, then resets both sides.
    CutMidRequest,
    /// Reads the request and answers `503 Server Busy` (retryable in Azure's terms), then closes.
    ServerBusy,
    /// Reads and discards what the client sends, answers nothing, and resets once the fault ends.
    Stall,
}

impl Fault {
    /// The faults, in the order the chaos suite cycles through them.
    pub(crate) const ALL: [Self; 4] = [
        Self::Reset,
        Self::CutMidRequest,
        Self::ServerBusy,
        Self::Stall,
    ];

    /// Index into [`FaultCounts`].
    fn index(self) -> usize {
        match self {
            Self::None => 0,
            Self::Reset => 1,
            Self::CutMidRequest => 2,
            Self::ServerBusy => 3,
            Self::Stall => 4,
        }
    }

    /// A short description for the chaos table.
    pub(crate) fn describe(self) -> &'static str {
        match self {
            Self::None => "forwarded",
            Self::Reset => "reset on accept",
            Self::CutMidRequest => "cut mid-request",
            Self::ServerBusy => "503 Server Busy",
            Self::Stall => "stalled",
        }
    }
}

/// Connections handled under each [`Fault`], plus open connections reset by a switch to a fault.
#[derive(Debug, Default)]
pub(crate) struct FaultCounts {
    by_fault: [AtomicUsize; 5],
    reset_on_switch: AtomicUsize,
}

impl FaultCounts {
    /// Connections handled under `fault`.
    pub(crate) fn connections(&self, fault: Fault) -> usize {
        self.by_fault[fault.index()].load(Ordering::SeqCst)
    }

    /// Forwarding connections reset because the proxy switched to a fault.
    pub(crate) fn reset_on_switch(&self) -> usize {
        self.reset_on_switch.load(Ordering::SeqCst)
    }
}

/// The proxy: listens on a free loopback port until dropped.
pub(crate) struct FaultProxy {
    addr: SocketAddr,
    fault: watch::Sender<Fault>,
    counts: Arc<FaultCounts>,
    accept_loop: tokio::task::JoinHandle<()>,
}

impl FaultProxy {
    /// Listens on `127.0.0.1:0` and forwards to `upstream`.
    pub(crate) async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding the fault proxy");
        let addr = listener.local_addr().expect("the proxy's address");
        let (fault, faults) = watch::channel(Fault::None);
        let counts = Arc::new(FaultCounts::default());
        let accept_counts = Arc::clone(&counts);
        let accept_loop = tokio::spawn(async move {
            loop {
                // Accepting fails transiently (a connection reset before it was accepted, or
                // too many open files); the proxy must outlive that.
                let Ok((client, _)) = listener.accept().await else {
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                    continue;
                };
                let fault = *faults.borrow();
                accept_counts.by_fault[fault.index()].fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve(
                    client,
                    upstream,
                    fault,
                    faults.clone(),
                    Arc::clone(&accept_counts),
                ));
            }
        });
        Self {
            addr,
            fault,
            counts,
            accept_loop,
        }
    }

    /// Where clients connect.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Switches to `fault` for new connections; a fault other than [`Fault::None`] also resets every
    /// forwarding connection, and ending [`Fault::Stall`] resets the stalled ones.
    pub(crate) fn set(&self, fault: Fault) {
        self.fault.send_replace(fault);
    }

    /// What the proxy has done so far.
    pub(crate) fn counts(&self) -> &FaultCounts {
        &self.counts
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.accept_loop.abort();
    }
}

/// Closes `stream` with a TCP reset rather than a FIN.
fn reset(stream: TcpStream) {
    let _ = stream.set_zero_linger();
    drop(stream);
}

/// Returns once the proxy's fault is no longer `current` (never, once the proxy is dropped).
async fn until_fault_leaves(faults: &mut watch::Receiver<Fault>, current: Fault) {
    while faults.changed().await.is_ok() {
        if *faults.borrow() != current {
            return;
        }
    }
    std::future::pending::<()>().await;
}

async fn serve(
    mut client: TcpStream,
    upstream: SocketAddr,
    fault: Fault,
    mut faults: watch::Receiver<Fault>,
    counts: Arc<FaultCounts>,
) {
    let mut buffer = vec![0_u8; 64 * 1024];
    match fault {
        Fault::None => {
            let Ok(mut server) = TcpStream::connect(upstream).await else {
                reset(client);
                return;
            };
            let switched = tokio::select! {
                _ = tokio::io::copy_bidirectional(&mut client, &mut server) => false,
                () = until_fault_leaves(&mut faults, Fault::None) => true,
            };
            if switched {
                counts.reset_on_switch.fetch_add(1, Ordering::SeqCst);
                reset(client);
                reset(server);
            }
        }
        Fault::Reset => reset(client),
        Fault::CutMidRequest => {
            let Ok(mut server) = TcpStream::connect(upstream).await else {
                reset(client);
                return;
            };
            if let Ok(read) = client.read(&mut buffer).await {
                let _ = server.write_all(&buffer[..read.div_ceil(2)]).await;
            }
            reset(server);
            reset(client);
        }
        Fault::ServerBusy => {
            let _ = client.read(&mut buffer).await;
            let _ = client
                .write_all(
                    b"HTTP/1.1 503 Server Busy\r\n\
                      x-ms-error-code: ServerBusy\r\n\
                      content-length: 0\r\n\
                      connection: close\r\n\r\n",
                )
                .await;
            let _ = client.shutdown().await;
        }
        Fault::Stall => {
            tokio::select! {
                () = async {
                    while matches!(client.read(&mut buffer).await, Ok(read) if read > 0) {}
                } => {}
                () = until_fault_leaves(&mut faults, Fault::Stall) => {}
            }
            reset(client);
        }
    }
}

#[tokio::test]
async fn the_fault_proxy_forwards_resets_cuts_answers_503_and_stalls_on_command() {
    // An upstream that echoes and reports every chunk it receives.
    let upstream = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream_addr = upstream.local_addr().unwrap();
    let (chunks_tx, mut chunks) = tokio::sync::mpsc::channel::<Vec<u8>>(16);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = upstream.accept().await {
            let chunks_tx = chunks_tx.clone();
            tokio::spawn(async move {
                let mut buffer = [0_u8; 1024];
                while let Ok(read) = stream.read(&mut buffer).await {
                    if read == 0 {
                        break;
                    }
                    let _ = chunks_tx.send(buffer[..read].to_vec()).await;
                    if stream.write_all(&buffer[..read]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    let proxy = FaultProxy::start(upstream_addr).await;
    let mut answer = [0_u8; 64];
    let quiet = std::time::Duration::from_millis(300);

    let mut forwarded = TcpStream::connect(proxy.addr()).await.unwrap();
    forwarded.write_all(b"ping").await.unwrap();
    forwarded.read_exact(&mut answer[..4]).await.unwrap();
    assert_eq!(&answer[..4], b"ping");
    assert_eq!(chunks.recv().await.unwrap(), b"ping");

    proxy.set(Fault::Reset);
    let closed = forwarded.read(&mut answer).await;
    assert!(
        !matches!(closed, Ok(read) if read > 0),
        "an open connection ends when a fault begins: {closed:?}"
    );
    assert_eq!(proxy.counts().reset_on_switch(), 1);
    let mut reset = TcpStream::connect(proxy.addr()).await.unwrap();
    let _ = reset.write_all(b"GET / HTTP/1.1\r\n\r\n").await;
    assert!(!matches!(reset.read(&mut answer).await, Ok(read) if read > 0));

    proxy.set(Fault::CutMidRequest);
    let mut cut = TcpStream::connect(proxy.addr()).await.unwrap();
    cut.write_all(b"PUT /blob HTTP/1.1\r\n").await.unwrap();
    assert_eq!(
        chunks.recv().await.unwrap(),
        b"PUT /blob ",
        "the first half"
    );
    assert!(!matches!(cut.read(&mut answer).await, Ok(read) if read > 0));

    proxy.set(Fault::ServerBusy);
    let mut busy = TcpStream::connect(proxy.addr()).await.unwrap();
    busy.write_all(b"PUT /blob HTTP/1.1\r\n\r\n").await.unwrap();
    let mut response = Vec::new();
    busy.read_to_end(&mut response).await.unwrap();
    assert!(response.starts_with(b"HTTP/1.1 503 Server Busy\r\n"));

    proxy.set(Fault::Stall);
    let mut stalled = TcpStream::connect(proxy.addr()).await.unwrap();
    stalled
        .write_all(b"PUT /blob HTTP/1.1\r\n\r\n")
        .await
        .unwrap();
    assert!(
        tokio::time::timeout(quiet, stalled.read(&mut answer))
            .await
            .is_err(),
        "a stalled connection answers nothing"
    );
    proxy.set(Fault::None);
    assert!(!matches!(stalled.read(&mut answer).await, Ok(read) if read > 0));
    assert!(
        tokio::time::timeout(quiet, chunks.recv()).await.is_err(),
        "nothing of a reset, busy or stalled request reached the upstream"
    );

    for fault in [
        Fault::None,
        Fault::Reset,
        Fault::CutMidRequest,
        Fault::ServerBusy,
        Fault::Stall,
    ] {
        assert_eq!(proxy.counts().connections(fault), 1, "{fault:?}");
    }
}
