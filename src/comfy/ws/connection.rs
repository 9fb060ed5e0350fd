//! Opening and closing the one WebSocket of a backend: [`connect`] (capabilities, TLS, the
//! handshake, then `feature_flags`) and [`close_gracefully`] (close, and confirm the close).
//!
//! One socket at a time, nothing more: when to connect, reconnect or give up is the socket task's
//! decision, and no message is read here.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use reqwest::header::AUTHORIZATION;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::comfy::capabilities::Capabilities;
use crate::comfy::client::{ComfyClient, ComfyError};
use crate::comfy::tls;
use crate::comfy::wire::feature_flags_message;

/// The backend's WebSocket.
pub(super) type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Most bytes the socket reads at once. tungstenite zeroes the free part of its read buffer, up
/// to this much, before every read (including the one that finds nothing more to read), and
/// keeps a buffer of this size per socket: its default of 128 KiB cost a job more in `memset`
/// than parsing the frames did. ComfyUI's text messages are a few KiB (a large graph's
/// `progress_state` about 10 KiB); a preview image takes a few reads instead of one.
const READ_BUFFER_BYTES: usize = 16 * 1024;

/// Opens the socket: re-detects capabilities (the server may have changed), connects, and sends
/// `feature_flags` first when the server supports preview metadata.
pub(super) async fn connect(
    client: &ComfyClient,
    client_id: &str,
) -> Result<(Box<Socket>, Capabilities), ComfyError> {
    let capabilities = client.detect_capabilities().await?;
    let ws_error = |message: String| ComfyError::WebSocket {
        server: client.server().to_owned(),
        message,
    };
    let url = client.ws_url(client_id);
    // The HTTP client's choice: the platform's roots, or (verify_ssl = false) any certificate.
    let connector = if url.scheme() == "wss" {
        let config = if client.verify_ssl() {
            tls::verified_client_config().map(Arc::new)
        } else {
            tls::unverified_client_config()
        }
        .map_err(|e| ws_error(format!("tls configuration: {e}")))?;
        Some(tokio_tungstenite::Connector::Rustls(config))
    } else {
        None
    };
    let mut request = url
        .as_str()
        .into_client_request()
        .map_err(|e| ws_error(e.to_string().to_lowercase()))?;
    if let Some(authorization) = client.ws_authorization() {
        request
            .headers_mut()
            .insert(AUTHORIZATION, authorization.clone());
    }
    let (mut socket, _) = tokio::time::timeout(
        client.timeout(),
        tokio_tungstenite::connect_async_tls_with_config(
            request,
            Some(WebSocketConfig::default().read_buffer_size(READ_BUFFER_BYTES)),
            true,
            connector,
        ),
    )
    .await
    .map_err(|_| ws_error("handshake timed out".into()))?
    .map_err(|e| ws_error(e.to_string().to_lowercase()))?;
    if capabilities.preview_metadata {
        socket
            .send(Message::text(feature_flags_message(true)))
            .await
            .map_err(|e| ws_error(e.to_string().to_lowercase()))?;
    }
    Ok((Box::new(socket), capabilities))
}

/// Closes `socket` and waits for the end of the stream. Returns whether the close was confirmed
/// (the stream ended) within `timeout`; a socket that is already dead counts as confirmed.
pub(super) async fn close_gracefully(mut socket: Socket, timeout: Duration) -> bool {
    tokio::time::timeout(timeout, async {
        if socket.close(None).await.is_err() {
            // Already closed or broken: the server side is gone too.
            return;
        }
        while let Some(Ok(_)) = socket.next().await {}
    })
    .await
    .is_ok()
}
