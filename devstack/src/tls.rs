//! TLS for the devstack's own listener (`hybrid-devstack --tls`) and the registry stand-in: a CA
//! made at start and a serving certificate it signs for 127.0.0.1 and localhost. Clients trust
//! the CA (rustls, like webpki, refuses a CA certificate presented as the server's own, hence two
//! certificates). Every real AWS call is TLS, so benchmarks that measure the agent's shipping
//! cost run against this listener.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

/// Time a client has to complete its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshaken connections waiting for the server to take them.
const READY_BACKLOG: usize = 64;

/// A CA and the serving certificate it signed, PEM and DER.
pub struct Issued {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
    cert_der: rustls::pki_types::CertificateDer<'static>,
    key_der: Vec<u8>,
}

/// A CA (CN `{name} CA`) and a serving certificate it signs (CN `name`) for localhost and
/// 127.0.0.1, valid from an hour ago for a year.
pub fn issue(name: &str) -> Result<Issued, String> {
    let e = |e: rcgen::Error| format!("{name} certificate: {e}");
    let ca_key = rcgen::KeyPair::generate().map_err(e)?;
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(e)?;
    ca_params.distinguished_name = rcgen::DistinguishedName::new();
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, format!("{name} CA"));
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    let now = time::OffsetDateTime::now_utc();
    ca_params.not_before = now - time::Duration::hours(1);
    ca_params.not_after = now + time::Duration::days(365);
    let ca_cert = ca_params.self_signed(&ca_key).map_err(e)?;
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = rcgen::KeyPair::generate().map_err(e)?;
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).map_err(e)?;
    params
        .subject_alt_names
        .push(rcgen::SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(365);
    let cert = params.signed_by(&key, &issuer).map_err(e)?;
    Ok(Issued {
        ca_pem: ca_cert.pem(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        cert_der: cert.der().clone(),
        key_der: key.serialize_der(),
    })
}

/// A TLS server configuration (rustls on aws-lc, its safe default versions, HTTP/1.1 by ALPN as
/// the devstack serves only that) presenting `issued`'s serving certificate.
pub fn server_config(issued: &Issued) -> Result<rustls::ServerConfig, String> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(
            vec![issued.cert_der.clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(issued.key_der.clone().into()),
        )
        .map_err(|e| e.to_string())?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// Makes the devstack listener's CA and certificate and writes the CA to `dir/tls/ca.pem`;
/// returns the acceptor and that path.
pub fn listener_tls(dir: &Path) -> Result<(tokio_rustls::TlsAcceptor, PathBuf), String> {
    let issued = issue("hybrid-devstack")?;
    let config = server_config(&issued)?;
    let tls_dir = dir.join("tls");
    std::fs::create_dir_all(&tls_dir).map_err(|e| format!("create {}: {e}", tls_dir.display()))?;
    let ca_file = tls_dir.join("ca.pem");
    std::fs::write(&ca_file, issued.ca_pem.as_bytes())
        .map_err(|e| format!("write {}: {e}", ca_file.display()))?;
    Ok((tokio_rustls::TlsAcceptor::from(Arc::new(config)), ca_file))
}

/// Wraps a listener (the devstack's [`crate::control::GatedListener`], so outages apply over TLS
/// too) and hands the server connections whose handshake completed. Handshakes run on their own
/// tasks, so one slow or failing client does not hold up the others; a client that does not
/// trust the certificate fails its handshake and is dropped.
pub struct TlsListener {
    ready: mpsc::Receiver<(
        tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
        SocketAddr,
    )>,
    addr: SocketAddr,
}

impl TlsListener {
    /// Starts accepting on `inner` (from within a Tokio runtime); stops once the `TlsListener`
    /// is dropped.
    pub fn new<L>(mut inner: L, acceptor: tokio_rustls::TlsAcceptor) -> std::io::Result<Self>
    where
        L: axum::serve::Listener<Io = tokio::net::TcpStream, Addr = SocketAddr>,
    {
        let addr = inner.local_addr()?;
        let (tx, ready) = mpsc::channel(READY_BACKLOG);
        tokio::spawn(async move {
            loop {
                let (tcp, peer) = tokio::select! {
                    c = inner.accept() => c,
                    _ = tx.closed() => return,
                };
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    if let Ok(Ok(tls)) =
                        tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await
                    {
                        let _ = tx.send((tls, peer)).await;
                    }
                });
            }
        });
        Ok(Self { ready, addr })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(c) => c,
            // The accept task ends only once this listener is gone; never reached.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.addr)
    }
}
