//! Opening a connection: the upgrade request (URL with `?thread=`, bearer token, the
//! `herald.v1` subprotocol), TCP and, for `wss://`, TLS (tokio-rustls on aws-lc-rs) under it,
//! and what a refused upgrade means for reconnecting.

use std::{
    future::Future,
    io,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
};
use tokio_rustls::{
    TlsConnector,
    client::TlsStream,
    rustls::{self, pki_types::ServerName},
};
use tokio_tungstenite::{
    WebSocketStream,
    tungstenite::{
        self, client::IntoClientRequest as _, error::UrlError, handshake::client::Request,
    },
};

use crate::{
    config::{ClientConfig, Tls},
    link::Ended,
};

/// The byte stream under a WebSocket: plain TCP (`ws://`) or TLS over TCP (`wss://`).
#[derive(Debug)]
pub(crate) enum Stream {
    /// `ws://`.
    Plain(TcpStream),
    /// `wss://`.
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(tcp) => Pin::new(tcp).poll_read(cx, buf),
            Self::Tls(tls) => Pin::new(tls.as_mut()).poll_read(cx, buf),
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
            Self::Plain(tcp) => Pin::new(tcp).poll_write(cx, buf),
            Self::Tls(tls) => Pin::new(tls.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(tcp) => Pin::new(tcp).poll_write_vectored(cx, bufs),
            Self::Tls(tls) => Pin::new(tls.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Self::Plain(tcp) => tcp.is_write_vectored(),
            Self::Tls(tls) => tls.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(tcp) => Pin::new(tcp).poll_flush(cx),
            Self::Tls(tls) => Pin::new(tls.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(tcp) => Pin::new(tcp).poll_shutdown(cx),
            Self::Tls(tls) => Pin::new(tls.as_mut()).poll_shutdown(cx),
        }
    }
}

/// A WebSocket connection to Herald.
pub(crate) type Socket = WebSocketStream<Stream>;
/// What opening a connection yields: the socket, or how the attempt ended.
pub(crate) type DialFuture = Pin<Box<dyn Future<Output = Result<Socket, Ended>> + Send>>;
/// Opens a connection for an upgrade request; a seam so tests can fail attempts without I/O.
pub(crate) type Dial = Arc<dyn Fn(Request) -> DialFuture + Send + Sync>;

/// Opens real connections: TCP, TLS for `wss://` with `tls` (built once, when the client
/// starts; `Err` says why there is none, and ends the client at its first attempt), then the
/// WebSocket upgrade.
pub(crate) fn network_dial(tls: Result<Option<Arc<rustls::ClientConfig>>, String>) -> Dial {
    let tls = tls.map(|config| config.map(TlsConnector::from));
    Arc::new(move |request| {
        let tls = tls.clone();
        Box::pin(async move {
            let connector = tls.map_err(|reason| Ended::early(None, reason, true))?;
            open(request, connector)
                .await
                .map_err(|error| refused_upgrade(&error))
        })
    })
}

/// TCP, TLS when the URL is `wss://`, and the upgrade.
async fn open(request: Request, tls: Option<TlsConnector>) -> Result<Socket, tungstenite::Error> {
    let uri = request.uri();
    let secure = match uri.scheme_str() {
        Some(scheme) if scheme.eq_ignore_ascii_case("ws") => false,
        Some(scheme) if scheme.eq_ignore_ascii_case("wss") => true,
        _ => return Err(tungstenite::Error::Url(UrlError::UnsupportedUrlScheme)),
    };
    let host = uri
        .host()
        .ok_or(tungstenite::Error::Url(UrlError::NoHostName))?;
    // `[::1]` in a URL is `::1` to resolve and to verify.
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = uri.port_u16().unwrap_or(if secure { 443 } else { 80 });
    let tcp = TcpStream::connect((host.as_str(), port)).await?;
    // Requests are small and latency matters more than packing.
    tcp.set_nodelay(true)?;
    let stream = match (secure, tls) {
        (false, _) => Stream::Plain(tcp),
        (true, Some(tls)) => {
            let name = ServerName::try_from(host)
                .map_err(|_| tungstenite::Error::Url(UrlError::NoHostName))?;
            Stream::Tls(Box::new(tls.connect(name, tcp).await?))
        }
        (true, None) => return Err(tungstenite::Error::Url(UrlError::TlsFeatureNotEnabled)),
    };
    tokio_tungstenite::client_async(request, stream)
        .await
        .map(|(socket, _)| socket)
}

/// The TLS configuration for `wss://`: the one configured, the roots configured, else the
/// platform's trusted roots (rustls-native-certs), on aws-lc-rs; `None` for `ws://`.
pub(crate) fn tls_config(
    config: &ClientConfig,
) -> Result<Option<Arc<rustls::ClientConfig>>, String> {
    if !is_secure(&config.url) {
        return Ok(None);
    }
    let roots = match &config.tls {
        Some(Tls::Config(tls)) => return Ok(Some(Arc::clone(tls))),
        Some(Tls::Roots(roots)) => roots.clone(),
        None => {
            let found = rustls_native_certs::load_native_certs();
            let mut roots = rustls::RootCertStore::empty();
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err(format!(
                    "no trusted root certificates found on this machine ({} errors); \
                     give the client its roots with ClientConfig::tls_roots",
                    found.errors.len()
                ));
            }
            roots
        }
    };
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|error| format!("TLS configuration: {error}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Some(Arc::new(tls)))
}

/// Whether `url` is a `wss://` URL (the scheme in any case).
fn is_secure(url: &str) -> bool {
    url.get(..6)
        .is_some_and(|scheme| scheme.eq_ignore_ascii_case("wss://"))
}

/// The upgrade request: the URL with `?thread=`, the token as a bearer header, and the
/// `herald.v1` subprotocol.
pub(crate) fn upgrade_request(config: &ClientConfig, token: &str) -> Result<Request, Ended> {
    let url = match &config.thread {
        Some(thread) => {
            let join = if config.url.contains('?') { '&' } else { '?' };
            format!("{}{join}thread={}", config.url, percent_encode(thread))
        }
        None => config.url.clone(),
    };
    let mut request = url
        .into_client_request()
        .map_err(|error| Ended::early(None, format!("invalid url: {error}"), true))?;
    let bearer = format!("Bearer {token}")
        .parse()
        .map_err(|_| Ended::early(Some(4001), "the token is not a valid header value", false))?;
    request.headers_mut().insert("authorization", bearer);
    request.headers_mut().insert(
        "sec-websocket-protocol",
        tungstenite::http::HeaderValue::from_static("herald.v1"),
    );
    Ok(request)
}

/// How a failed connection attempt ends: a 401 is a refused token (as 4001), 400, 403 and
/// 426 cannot be fixed by retrying, anything else is retried.
pub(crate) fn refused_upgrade(error: &tungstenite::Error) -> Ended {
    match error {
        tungstenite::Error::Http(response) => {
            let status = response.status().as_u16();
            let body = response
                .body()
                .as_deref()
                .map(String::from_utf8_lossy)
                .unwrap_or_default();
            let reason = format!("upgrade refused with {status}: {body}");
            match status {
                401 => Ended::early(Some(4001), reason, false),
                400 | 403 | 426 => Ended::early(None, reason, true),
                _ => Ended::early(None, reason, false),
            }
        }
        tungstenite::Error::Url(error) => Ended::early(None, format!("invalid url: {error}"), true),
        other => Ended::early(None, format!("cannot connect: {other}"), false),
    }
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
pub(crate) fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_wss_urls_get_a_tls_configuration_and_configured_roots_are_used() {
        let plain = ClientConfig::new("ws://127.0.0.1:1/ws");
        assert!(matches!(tls_config(&plain), Ok(None)));
        let secure =
            ClientConfig::new("WSS://herald.test/ws").tls_roots(rustls::RootCertStore::empty());
        assert!(matches!(tls_config(&secure), Ok(Some(_))));
        assert!(!is_secure("ws:/"));
    }

    #[test]
    fn upgrade_requests_carry_the_bearer_token_the_subprotocol_and_the_thread() {
        let config = ClientConfig::new("ws://h:1/ws?x=1").thread("a b/é");
        let Ok(request) = upgrade_request(&config, "tok") else {
            panic!("a request");
        };
        assert_eq!(request.uri().query(), Some("x=1&thread=a%20b%2F%C3%A9"));
        assert_eq!(request.headers()["authorization"], "Bearer tok");
        assert_eq!(request.headers()["sec-websocket-protocol"], "herald.v1");
        let refused = upgrade_request(&ClientConfig::new("not a url"), "tok");
        assert!(matches!(refused, Err(Ended::Lost { fatal: true, .. })));
    }
}
