//! AMQP over WebSockets (the OASIS AMQP WebSocket Binding): the AMQP byte stream carried in binary
//! WebSocket messages, for networks that only let HTTPS (port 443) out.
//!
//! Azure's services expect the subprotocol `AMQPWSB10` on `/$servicebus/websocket` (Event Hubs) or
//! `/$iothub/websocket` (IoT Hub), which every official SDK sends. `fe2o3-amqp-ws` was the obvious
//! candidate but hard-codes the binding's `amqp` subprotocol and refuses a handshake that answers
//! anything else, so this module drives `tokio-tungstenite` (which `fe2o3-amqp-ws` wraps) itself,
//! without any TLS of its own: TLS, when wanted, is the [`Stream`] underneath, so there is one TLS
//! stack (rustls with ring) for every transport.
//!
//! [`WebSocket`] turns messages back into a byte stream. A write becomes one binary message and is
//! pushed to the socket at once; should the socket not take it all, the rest goes out at the next
//! read or write (both ends of hubroute always have a read pending), so nothing written waits for
//! an explicit flush that the AMQP layers above never call. Reads are cancel-safe: the unread rest
//! of a message stays in the adapter.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use futures::{Sink, Stream as _};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::tungstenite::handshake::client::generate_key;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode, header};
use tokio_tungstenite::tungstenite::{self, Message};

use crate::transport::Stream;

/// A WebSocket connection seen as a byte stream.
#[derive(Debug)]
pub struct WebSocket {
    inner: tokio_tungstenite::WebSocketStream<Stream>,
    /// The unread rest of the last binary message.
    reading: Bytes,
    /// A message was queued but the socket has not taken all of it yet.
    unflushed: bool,
}

fn io_error(error: tungstenite::Error) -> io::Error {
    match error {
        tungstenite::Error::Io(error) => error,
        tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed => {
            io::ErrorKind::NotConnected.into()
        }
        other => io::Error::other(other),
    }
}

impl WebSocket {
    fn new(inner: tokio_tungstenite::WebSocketStream<Stream>) -> Self {
        Self {
            inner,
            reading: Bytes::new(),
            unflushed: false,
        }
    }

    /// Pushes a queued message on; `Pending` while the socket is full.
    fn poll_push(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.unflushed {
            ready!(Pin::new(&mut self.inner).poll_flush(cx)).map_err(io_error)?;
            self.unflushed = false;
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncRead for WebSocket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        // Whatever is still queued goes out while this side waits for the peer (whose answer may
        // depend on it). A full socket does not keep the read from proceeding.
        if let Poll::Ready(Err(error)) = this.poll_push(cx) {
            return Poll::Ready(Err(error));
        }
        while this.reading.is_empty() {
            match ready!(Pin::new(&mut this.inner).poll_next(cx)) {
                Some(Ok(Message::Binary(data))) => this.reading = data,
                // tungstenite answers pings itself.
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                Some(Ok(Message::Text(_))) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "a text WebSocket message: the AMQP binding uses binary messages only",
                    )));
                }
                // The peer's close: the end of the byte stream.
                Some(Ok(Message::Close(_))) | None => return Poll::Ready(Ok(())),
                Some(Err(error)) => return Poll::Ready(Err(io_error(error))),
            }
        }
        let n = this.reading.len().min(buf.remaining());
        buf.put_slice(&this.reading.split_to(n));
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for WebSocket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_push(cx))?;
        ready!(Pin::new(&mut this.inner).poll_ready(cx)).map_err(io_error)?;
        Pin::new(&mut this.inner)
            .start_send(Message::Binary(Bytes::copy_from_slice(data)))
            .map_err(io_error)?;
        this.unflushed = true;
        // The message is queued whatever the socket says now: report it written.
        if let Poll::Ready(Err(error)) = this.poll_push(cx) {
            return Poll::Ready(Err(error));
        }
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(Pin::new(&mut this.inner).poll_flush(cx)).map_err(io_error)?;
        this.unflushed = false;
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        Pin::new(&mut this.inner).poll_close(cx).map_err(io_error)
    }
}

/// Opens the WebSocket binding over `stream` (TCP or TLS, already connected): `url` is
/// `ws[s]://host[:port]/path`, and the handshake asks for `subprotocol`. Errors say what the server
/// answered (a status, a missing subprotocol).
pub async fn connect(stream: Stream, url: &str, subprotocol: &str) -> io::Result<Stream> {
    let failed =
        |problem: String| io::Error::other(format!("WebSocket handshake with {url}: {problem}"));
    let uri: tungstenite::http::Uri = url
        .parse()
        .map_err(|error| failed(format!("not a URL: {error}")))?;
    let authority = uri
        .authority()
        .ok_or_else(|| failed("the URL has no host".to_owned()))?
        .to_string();
    let request = Request::builder()
        .method("GET")
        .uri(uri)
        .header(header::HOST, authority)
        .header(header::CONNECTION, "Upgrade")
        .header(header::UPGRADE, "websocket")
        .header(header::SEC_WEBSOCKET_VERSION, "13")
        .header(header::SEC_WEBSOCKET_KEY, generate_key())
        .header(header::SEC_WEBSOCKET_PROTOCOL, subprotocol)
        .body(())
        .map_err(|error| failed(error.to_string()))?;
    let (socket, response) = tokio_tungstenite::client_async(request, stream)
        .await
        .map_err(|error| match error {
            tungstenite::Error::Http(response) => failed(format!(
                "the server answered HTTP {} instead of switching to WebSocket",
                response.status()
            )),
            tungstenite::Error::Io(error) => error,
            other => failed(other.to_string()),
        })?;
    let agreed = response
        .headers()
        .get(header::SEC_WEBSOCKET_PROTOCOL)
        .and_then(|value| value.to_str().ok());
    if !agreed.is_some_and(|agreed| agreed.eq_ignore_ascii_case(subprotocol)) {
        return Err(failed(format!(
            "the server did not agree to subprotocol {subprotocol} (it answered {agreed:?})"
        )));
    }
    Ok(Stream::WebSocket(Box::new(WebSocket::new(socket))))
}

/// Accepts the WebSocket binding on `stream` (a server whose client sent an HTTP upgrade): the
/// request must name one of `paths` and offer one of `subprotocols`, else it is answered 404 or
/// 400 with the reason. The first offered subprotocol the server knows is agreed to.
pub async fn accept(stream: Stream, paths: &[&str], subprotocols: &[&str]) -> io::Result<Stream> {
    #[expect(
        clippy::result_large_err,
        reason = "tungstenite's handshake callback returns its ErrorResponse by value"
    )]
    let check = |request: &Request, mut response: Response| {
        let reject = |status: StatusCode, reason: String| -> ErrorResponse {
            let mut rejection = ErrorResponse::new(Some(reason));
            *rejection.status_mut() = status;
            rejection
        };
        let path = request.uri().path().trim_end_matches('/');
        if !paths.iter().any(|known| known.eq_ignore_ascii_case(path)) {
            return Err(reject(
                StatusCode::NOT_FOUND,
                format!("no WebSocket endpoint at `{path}`; use one of {paths:?}"),
            ));
        }
        let offered = request
            .headers()
            .get_all(header::SEC_WEBSOCKET_PROTOCOL)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .map(str::trim)
            .find(|offer| {
                subprotocols
                    .iter()
                    .any(|known| known.eq_ignore_ascii_case(offer))
            });
        let Some(agreed) = offered.and_then(|agreed| HeaderValue::from_str(agreed).ok()) else {
            return Err(reject(
                StatusCode::BAD_REQUEST,
                format!("offer one of the subprotocols {subprotocols:?}"),
            ));
        };
        response
            .headers_mut()
            .insert(header::SEC_WEBSOCKET_PROTOCOL, agreed);
        Ok(response)
    };
    let socket = tokio_tungstenite::accept_hdr_async(stream, check)
        .await
        .map_err(io_error)?;
    Ok(Stream::WebSocket(Box::new(WebSocket::new(socket))))
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use super::*;

    async fn pair(
        paths: &'static [&'static str],
        path: &str,
        subprotocol: &str,
    ) -> (io::Result<Stream>, io::Result<Stream>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (socket, _) = listener.accept().await.unwrap();
            accept(Stream::from(socket), paths, &["AMQPWSB10", "amqp"]).await
        });
        let socket = TcpStream::connect(address).await.unwrap();
        let url = format!("ws://{address}{path}");
        let client = connect(Stream::from(socket), &url, subprotocol).await;
        (client, server.await.unwrap())
    }

    #[tokio::test]
    async fn carries_bytes_both_ways_in_binary_messages() {
        let (client, server) = pair(
            &["/$servicebus/websocket"],
            "/$servicebus/websocket/",
            "AMQPWSB10",
        )
        .await;
        let (mut client, mut server) = (client.unwrap(), server.unwrap());
        let big = vec![7u8; 300_000];
        client.write_all(b"AMQP\x03\x01\x00\x00").await.unwrap();
        client.write_all(&big).await.unwrap();
        let mut header = [0u8; 8];
        server.read_exact(&mut header).await.unwrap();
        assert_eq!(&header, b"AMQP\x03\x01\x00\x00");
        let mut received = vec![0u8; big.len()];
        server.read_exact(&mut received).await.unwrap();
        assert_eq!(received, big);
        server.write_all(b"answer").await.unwrap();
        let mut answer = [0u8; 6];
        client.read_exact(&mut answer).await.unwrap();
        assert_eq!(&answer, b"answer");
        client.shutdown().await.unwrap();
        let mut rest = Vec::new();
        assert_eq!(
            server.read_to_end(&mut rest).await.unwrap(),
            0,
            "a close is the end of the stream"
        );
    }

    #[tokio::test]
    async fn refuses_unknown_paths_and_subprotocols_with_the_reason() {
        let (client, _) = pair(&["/$servicebus/websocket"], "/elsewhere", "AMQPWSB10").await;
        let error = client.unwrap_err().to_string();
        assert!(error.contains("HTTP 404"), "{error}");
        let (client, _) = pair(
            &["/$servicebus/websocket"],
            "/$servicebus/websocket",
            "mqtt",
        )
        .await;
        let error = client.unwrap_err().to_string();
        assert!(error.contains("HTTP 400"), "{error}");
    }
}
