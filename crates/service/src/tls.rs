//! TLS termination with rustls: a listener's certificate chain and key, read at start-up (a
//! missing file, a file without PEM blocks or a key that does not match the certificate
//! refuses to start) and read again on SIGHUP, when the new pair serves new connections while
//! open ones keep theirs.
//!
//! One crypto provider, aws-lc-rs (also jsonwebtoken's), passed explicitly rather than
//! installed process-wide. TLS 1.2 and 1.3 only; ALPN offers `http/1.1`, the one protocol
//! served.

use std::{
    io,
    path::{Path, PathBuf},
    sync::Arc,
};

use arc_swap::ArcSwap;
use tokio_rustls::{
    TlsAcceptor,
    rustls::{
        self, ServerConfig,
        crypto::aws_lc_rs,
        pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _},
    },
};

/// Where a listener's certificate chain and key live, and which settings named them.
#[derive(Debug, Clone)]
pub(crate) struct TlsFiles {
    /// The PEM certificate chain, leaf first.
    pub(crate) cert: PathBuf,
    /// The PEM private key.
    pub(crate) key: PathBuf,
    /// The settings, as `HERALD_TLS_CERT_FILE (tls_cert_file)`, for messages.
    pub(crate) cert_setting: &'static str,
    /// As above, for the key.
    pub(crate) key_setting: &'static str,
}

/// Why a certificate chain and key cannot serve TLS.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TlsError {
    /// A file cannot be read.
    #[error("{setting}: cannot read {}: {source}", .path.display())]
    Read {
        /// The setting that names the file.
        setting: &'static str,
        /// The file.
        path: PathBuf,
        /// What the operating system reported.
        source: io::Error,
    },
    /// The certificate file holds no usable certificate.
    #[error("{setting}: {} holds no PEM certificate", .path.display())]
    NoCertificate {
        /// The setting that names the file.
        setting: &'static str,
        /// The file.
        path: PathBuf,
    },
    /// The key file holds no usable private key.
    #[error(
        "{setting}: {} holds no PEM private key (PKCS#8, PKCS#1 or SEC1)",
        .path.display()
    )]
    NoKey {
        /// The setting that names the file.
        setting: &'static str,
        /// The file.
        path: PathBuf,
    },
    /// The key is not the certificate's.
    #[error("{key_setting}: the private key does not match the certificate of {cert_setting}")]
    Mismatch {
        /// The certificate's setting.
        cert_setting: &'static str,
        /// The key's setting.
        key_setting: &'static str,
    },
    /// rustls refused the pair for another reason (an unsupported key type, say).
    #[error("{cert_setting} and {key_setting}: {source}")]
    Refused {
        /// The certificate's setting.
        cert_setting: &'static str,
        /// The key's setting.
        key_setting: &'static str,
        /// What rustls reported.
        source: rustls::Error,
    },
}

impl TlsFiles {
    /// The main listener's files, when TLS is configured (`load` checked that both or neither
    /// are set).
    pub(crate) fn main(config: &herald_config::BaseConfig) -> Option<Self> {
        Some(Self {
            cert: config.tls_cert_file.clone()?,
            key: config.tls_key_file.clone()?,
            cert_setting: "HERALD_TLS_CERT_FILE (tls_cert_file)",
            key_setting: "HERALD_TLS_KEY_FILE (tls_key_file)",
        })
    }

    /// The admin listener's files, when TLS is configured there.
    pub(crate) fn admin(config: &herald_config::BaseConfig) -> Option<Self> {
        Some(Self {
            cert: config.admin_tls_cert_file.clone()?,
            key: config.admin_tls_key_file.clone()?,
            cert_setting: "HERALD_ADMIN_TLS_CERT_FILE (admin_tls_cert_file)",
            key_setting: "HERALD_ADMIN_TLS_KEY_FILE (admin_tls_key_file)",
        })
    }

    /// Reads both files and builds the server configuration they make.
    fn server_config(&self) -> Result<ServerConfig, TlsError> {
        let cert_pem = read(&self.cert, self.cert_setting)?;
        let key_pem = read(&self.key, self.key_setting)?;
        let chain = CertificateDer::pem_slice_iter(&cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .ok()
            .filter(|chain| !chain.is_empty())
            .ok_or_else(|| TlsError::NoCertificate {
                setting: self.cert_setting,
                path: self.cert.clone(),
            })?;
        let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|_| TlsError::NoKey {
            setting: self.key_setting,
            path: self.key.clone(),
        })?;
        server_config(chain, key).map_err(|source| match source {
            rustls::Error::InconsistentKeys(_) => TlsError::Mismatch {
                cert_setting: self.cert_setting,
                key_setting: self.key_setting,
            },
            source => TlsError::Refused {
                cert_setting: self.cert_setting,
                key_setting: self.key_setting,
                source,
            },
        })
    }
}

/// A listener's TLS: the configuration new connections are accepted with, replaced whole on
/// reload.
pub(crate) struct Tls {
    files: TlsFiles,
    config: ArcSwap<ServerConfig>,
}

impl Tls {
    /// Reads the files; an error names the setting and the file.
    pub(crate) fn load(files: TlsFiles) -> Result<Self, TlsError> {
        let config = files.server_config()?;
        Ok(Self {
            files,
            config: ArcSwap::from_pointee(config),
        })
    }

    /// Reads the files again and, when they make a usable pair, accepts new connections with
    /// it; otherwise keeps the current pair. Open connections are not touched either way.
    pub(crate) fn reload(&self) -> Result<(), TlsError> {
        let config = self.files.server_config()?;
        self.config.store(Arc::new(config));
        Ok(())
    }

    /// The acceptor for the next connection, with the current pair.
    pub(crate) fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.config.load_full())
    }

    /// The certificate file, for logs.
    pub(crate) fn cert_file(&self) -> &Path {
        &self.files.cert
    }
}

/// The server configuration of a certificate chain and key: aws-lc-rs, TLS 1.2 and 1.3, no
/// client certificates, ALPN `http/1.1`. A key that is not the leaf's is
/// `rustls::Error::InconsistentKeys`.
fn server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<ServerConfig, rustls::Error> {
    let mut config = ServerConfig::builder_with_provider(Arc::new(aws_lc_rs::default_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// A file's bytes; the error names the setting.
fn read(path: &Path, setting: &'static str) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        setting,
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A self-signed certificate for `localhost` and its key, as PEM.
    fn pair() -> (String, String) {
        let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])
            .expect("rcgen makes a certificate");
        (certified.cert.pem(), certified.signing_key.serialize_pem())
    }

    /// Writes the files into a fresh directory and returns their `TlsFiles`.
    fn files(name: &str, cert: &str, key: &str) -> TlsFiles {
        let dir = std::env::temp_dir().join(format!("herald-tls-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
        std::fs::write(&cert_path, cert).expect("write cert");
        std::fs::write(&key_path, key).expect("write key");
        TlsFiles {
            cert: cert_path,
            key: key_path,
            cert_setting: "HERALD_TLS_CERT_FILE (tls_cert_file)",
            key_setting: "HERALD_TLS_KEY_FILE (tls_key_file)",
        }
    }

    fn error(files: &TlsFiles) -> String {
        match Tls::load(files.clone()) {
            Ok(_) => panic!("loaded"),
            Err(error) => error.to_string(),
        }
    }

    #[test]
    fn a_matching_pair_loads_and_offers_http_1_1() {
        let (cert, key) = pair();
        let tls = Tls::load(files("ok", &cert, &key)).expect("loads");
        assert_eq!(
            tls.config.load().alpn_protocols,
            [b"http/1.1".to_vec()],
            "ALPN"
        );
    }

    #[test]
    fn a_missing_file_names_the_setting_and_the_path() {
        let (cert, key) = pair();
        let mut files = files("missing", &cert, &key);
        files.key = files.key.with_file_name("absent.pem");
        let message = error(&files);
        assert!(
            message.starts_with("HERALD_TLS_KEY_FILE (tls_key_file): cannot read ")
                && message.contains("absent.pem"),
            "{message}"
        );
    }

    #[test]
    fn a_key_of_another_certificate_is_a_mismatch() {
        let (cert, _) = pair();
        let (_, other_key) = pair();
        assert_eq!(
            error(&files("mismatch", &cert, &other_key)),
            "HERALD_TLS_KEY_FILE (tls_key_file): the private key does not match the certificate \
             of HERALD_TLS_CERT_FILE (tls_cert_file)"
        );
    }

    #[test]
    fn files_without_pem_blocks_are_named() {
        let (cert, key) = pair();
        let message = error(&files("nocert", "not a certificate", &key));
        assert!(message.contains("holds no PEM certificate"), "{message}");
        let message = error(&files("nokey", &cert, &cert));
        assert!(message.contains("holds no PEM private key"), "{message}");
    }

    #[test]
    fn a_failed_reload_keeps_the_current_pair() {
        let (cert, key) = pair();
        let files = files("reload", &cert, &key);
        let tls = Tls::load(files.clone()).expect("loads");
        let before = tls.config.load_full();
        std::fs::write(&files.key, "garbage").expect("write");
        assert!(tls.reload().is_err());
        assert!(Arc::ptr_eq(&before, &tls.config.load_full()), "kept");
        let (cert, key) = pair();
        std::fs::write(&files.cert, cert).expect("write");
        std::fs::write(&files.key, key).expect("write");
        tls.reload().expect("reloads");
        assert!(!Arc::ptr_eq(&before, &tls.config.load_full()), "replaced");
    }
}
