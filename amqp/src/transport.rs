//! The byte stream under a connection: plain TCP or TLS over TCP, as one type both the engine's
//! receiver and the emulator's server read and write.
//!
//! Event Hubs speaks TLS from the first byte on port 5671 (no AMQP TLS header), so TLS is set up
//! here, before any AMQP byte, by whoever opens or accepts the connection.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::websocket::WebSocket;

/// A connection's transport.
#[derive(Debug)]
pub enum Stream {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS over TCP, either side.
    Tls(Box<tokio_rustls::TlsStream<TcpStream>>),
    /// AMQP over WebSockets, over one of the others (see [`crate::websocket`]).
    WebSocket(Box<WebSocket>),
    /// A stream whose first bytes were read ahead; they are read again first.
    Replay(Box<Replay>),
}

/// Bytes read ahead of a stream, and the stream.
#[derive(Debug)]
pub struct Replay {
    prefix: Bytes,
    inner: Stream,
}

impl Stream {
    /// Reads up to `n` first bytes (fewer only if the peer closes) and returns them with a stream
    /// that reads them again before the rest.
    pub async fn read_ahead(mut self, n: usize) -> io::Result<(Stream, Bytes)> {
        let mut prefix = Vec::with_capacity(n);
        while prefix.len() < n {
            let mut byte = [0u8; 64];
            let wanted = (n - prefix.len()).min(byte.len());
            let read = self.read(&mut byte[..wanted]).await?;
            if read == 0 {
                break;
            }
            prefix.extend_from_slice(&byte[..read]);
        }
        let prefix = Bytes::from(prefix);
        let replay = Replay {
            prefix: prefix.clone(),
            inner: self,
        };
        Ok((Stream::Replay(Box::new(replay)), prefix))
    }
}

impl From<TcpStream> for Stream {
    fn from(stream: TcpStream) -> Self {
        Stream::Plain(stream)
    }
}

impl From<tokio_rustls::client::TlsStream<TcpStream>> for Stream {
    fn from(stream: tokio_rustls::client::TlsStream<TcpStream>) -> Self {
        Stream::Tls(Box::new(stream.into()))
    }
}

impl From<tokio_rustls::server::TlsStream<TcpStream>> for Stream {
    fn from(stream: tokio_rustls::server::TlsStream<TcpStream>) -> Self {
        Stream::Tls(Box::new(stream.into()))
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(stream) => Pin::new(stream).poll_read(cx, buf),
            Stream::Tls(stream) => Pin::new(stream.as_mut()).poll_read(cx, buf),
            Stream::WebSocket(stream) => Pin::new(stream.as_mut()).poll_read(cx, buf),
            Stream::Replay(replay) => {
                if replay.prefix.is_empty() {
                    return Pin::new(&mut replay.inner).poll_read(cx, buf);
                }
                let n = replay.prefix.len().min(buf.remaining());
                buf.put_slice(&replay.prefix.split_to(n));
                Poll::Ready(Ok(()))
            }
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(stream) => Pin::new(stream).poll_write(cx, buf),
            Stream::Tls(stream) => Pin::new(stream.as_mut()).poll_write(cx, buf),
            Stream::WebSocket(stream) => Pin::new(stream.as_mut()).poll_write(cx, buf),
            Stream::Replay(replay) => Pin::new(&mut replay.inner).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(stream) => Pin::new(stream).poll_flush(cx),
            Stream::Tls(stream) => Pin::new(stream.as_mut()).poll_flush(cx),
            Stream::WebSocket(stream) => Pin::new(stream.as_mut()).poll_flush(cx),
            Stream::Replay(replay) => Pin::new(&mut replay.inner).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(stream) => Pin::new(stream).poll_shutdown(cx),
            Stream::Tls(stream) => Pin::new(stream.as_mut()).poll_shutdown(cx),
            Stream::WebSocket(stream) => Pin::new(stream.as_mut()).poll_shutdown(cx),
            Stream::Replay(replay) => Pin::new(&mut replay.inner).poll_shutdown(cx),
        }
    }
}
