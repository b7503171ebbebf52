//! TLS for the end-to-end tests: a certificate authority made by the test ([`TestCa`]), the
//! certificate and key files a server is started with ([`TlsFiles`]), and clients that trust
//! only that authority: `wss://` ([`wss_connect`]) and `https://` ([`https_get`]).

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use hyper_util::rt::TokioIo;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_rustls::{
    TlsConnector,
    client::TlsStream,
    rustls::{
        ClientConfig, RootCertStore,
        crypto::aws_lc_rs,
        pki_types::{CertificateDer, ServerName},
    },
};
use tokio_tungstenite::{WebSocketStream, tungstenite::Message};

use crate::TIMEOUT;

/// A WebSocket over TLS.
pub type Wss = WebSocketStream<TlsStream<TcpStream>>;

/// A certificate authority that exists only for one test.
pub struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A leaf certificate chain and its key, as PEM, and the leaf as DER (to recognise it).
pub struct Leaf {
    /// The leaf then the authority's certificate.
    pub chain_pem: String,
    /// The leaf's private key (PKCS#8).
    pub key_pem: String,
    /// The leaf certificate.
    pub der: Vec<u8>,
}

impl TestCa {
    /// A new authority with a fresh key.
    pub fn new() -> anyhow::Result<Self> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "Herald e2e test CA");
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate()?)?;
        Ok(Self { issuer })
    }

    /// A certificate for `localhost` and `127.0.0.1`, signed by this authority.
    pub fn issue(&self) -> anyhow::Result<Leaf> {
        let params = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])?;
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Leaf {
            chain_pem: format!("{}{}", cert.pem(), self.issuer.pem()),
            key_pem: key.serialize_pem(),
            der: cert.der().to_vec(),
        })
    }

    /// A root store holding this authority only (for `herald_client::ClientConfig::tls_roots`).
    pub fn roots(&self) -> anyhow::Result<RootCertStore> {
        let mut roots = RootCertStore::empty();
        roots.add(self.issuer.der().clone())?;
        Ok(roots)
    }

    /// A client configuration that trusts this authority only.
    pub fn connector(&self) -> anyhow::Result<TlsConnector> {
        let mut roots = RootCertStore::empty();
        roots.add(self.issuer.der().clone())?;
        let config = ClientConfig::builder_with_provider(Arc::new(aws_lc_rs::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(TlsConnector::from(Arc::new(config)))
    }
}

/// A directory holding `cert.pem` and `key.pem`, removed when dropped.
pub struct TlsFiles {
    dir: PathBuf,
}

impl TlsFiles {
    /// Writes `leaf` into a fresh directory named after `name` and this process.
    pub fn write(name: &str, leaf: &Leaf) -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!("herald-e2e-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let files = Self { dir };
        files.replace(leaf)?;
        Ok(files)
    }

    /// Replaces both files with `leaf`'s, the certificate first (as an operator would).
    pub fn replace(&self, leaf: &Leaf) -> anyhow::Result<()> {
        std::fs::write(self.cert(), &leaf.chain_pem)?;
        std::fs::write(self.key(), &leaf.key_pem)?;
        Ok(())
    }

    /// The certificate chain's path.
    pub fn cert(&self) -> PathBuf {
        self.dir.join("cert.pem")
    }

    /// The key's path.
    pub fn key(&self) -> PathBuf {
        self.dir.join("key.pem")
    }

    /// The certificate chain's path as a string, for an environment variable.
    pub fn cert_str(&self) -> String {
        path_str(&self.cert())
    }

    /// The key's path as a string, for an environment variable.
    pub fn key_str(&self) -> String {
        path_str(&self.key())
    }
}

impl Drop for TlsFiles {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn path_str(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

/// A TLS connection to `addr` for the name `localhost`, within [`TIMEOUT`].
pub async fn tls_connect(
    connector: &TlsConnector,
    addr: SocketAddr,
) -> anyhow::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from("localhost")?;
    let tls = tokio::time::timeout(TIMEOUT, connector.connect(name, tcp))
        .await
        .context("TLS handshake timed out")??;
    Ok(tls)
}

/// The leaf certificate the server presented on `stream`.
pub fn peer_leaf(stream: &TlsStream<TcpStream>) -> Option<Vec<u8>> {
    let (_, connection) = stream.get_ref();
    connection
        .peer_certificates()
        .and_then(|chain| chain.first())
        .map(|leaf: &CertificateDer<'_>| leaf.to_vec())
}

/// A `wss://` connection to `addr` with `?token={token}`: the WebSocket, the leaf certificate
/// the server presented, and the `connected` frame.
pub async fn wss_connect(
    connector: &TlsConnector,
    addr: SocketAddr,
    token: &str,
) -> anyhow::Result<(Wss, Vec<u8>, Value)> {
    let tls = tls_connect(connector, addr).await?;
    let leaf = peer_leaf(&tls).context("no server certificate")?;
    let url = format!("wss://localhost:{}/ws?token={token}", addr.port());
    let (mut ws, _) = tokio::time::timeout(TIMEOUT, tokio_tungstenite::client_async(url, tls))
        .await
        .context("WebSocket handshake timed out")??;
    let connected = wss_recv(&mut ws).await?;
    if connected["type"] != "connected" {
        bail!("expected connected, got {connected}");
    }
    Ok((ws, leaf, connected))
}

/// Sends `value` as a text frame.
pub async fn wss_send(ws: &mut Wss, value: &Value) -> anyhow::Result<()> {
    use futures_util::SinkExt as _;
    ws.send(Message::text(value.to_string())).await?;
    Ok(())
}

/// The next text frame as JSON, within [`TIMEOUT`] (pings and pongs skipped).
pub async fn wss_recv(ws: &mut Wss) -> anyhow::Result<Value> {
    use futures_util::StreamExt as _;
    tokio::time::timeout(TIMEOUT, async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(text))) => return Ok(serde_json::from_str(text.as_str())?),
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                other => bail!("expected a text frame, got {other:?}"),
            }
        }
    })
    .await
    .context("no frame within the timeout")?
}

/// `GET path` over `https://` to `addr`: the status and the body as text.
pub async fn https_get(
    connector: &TlsConnector,
    addr: SocketAddr,
    path: &str,
) -> anyhow::Result<(u16, String)> {
    let tls = tls_connect(connector, addr).await?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
    tokio::spawn(connection);
    let request = http::Request::get(path)
        .header(http::header::HOST, "localhost")
        .body(Empty::<Bytes>::new())?;
    let response = tokio::time::timeout(TIMEOUT, sender.send_request(request))
        .await
        .context("no HTTPS answer within the timeout")??;
    let status = response.status().as_u16();
    let body = response.into_body().collect().await?.to_bytes();
    Ok((status, String::from_utf8(body.to_vec())?))
}
