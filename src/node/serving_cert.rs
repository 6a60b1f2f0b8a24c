//! kubelet's serving certificate against the cluster's CA, as `nodeadm debug` checks it
//! (`internal/kubernetes/cert.go`, `internal/certificate/certificate_validator.go`).
//!
//! With `serverTLSBootstrap` (our kubelet config sets it, as nodeadm's does) kubelet asks the
//! cluster for its serving certificate with a `kubernetes.io/kubelet-serving` CSR once it can
//! authenticate, and keeps the issued one in `/var/lib/kubelet/pki/kubelet-server-current.pem`
//! (a link to the newest `kubelet-server-<date>.pem`, the certificate and its key in one file).
//! The API server uses it to reach kubelet for `kubectl logs`, `exec` and `port-forward`, and
//! trusts it only when the cluster's CA issued it. A node that once joined another cluster (or
//! a cluster re-created under the same name) keeps the old certificate, and kubelet does not
//! replace it until it expires: every `kubectl logs` fails with an unknown-authority error.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// kubelet's current serving certificate (its default `--cert-dir`, /var/lib/kubelet/pki).
pub const KUBELET_SERVING_CERT: &str = "/var/lib/kubelet/pki/kubelet-server-current.pem";

/// What is wrong with the certificate; each names what to do in doctor.
#[derive(Debug, thiserror::Error)]
pub enum ServingCertError {
    #[error("kubelet has no serving certificate yet ({})", .0.display())]
    Missing(PathBuf),
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} holds no readable certificate: {reason}", path.display())]
    Format { path: PathBuf, reason: String },
    #[error(
        "the serving certificate is not valid before {not_before}: this host's clock is behind"
    )]
    NotYetValid { not_before: String },
    #[error("the serving certificate expired at {not_after}")]
    Expired { not_after: String },
    #[error(
        "the cluster's CA certificate (from DescribeCluster, in the node record) cannot be read: {0}"
    )]
    ClusterCa(String),
    #[error(
        "the serving certificate (issuer {issuer}) was not issued by this cluster's CA: {reason}"
    )]
    OtherIssuer { issuer: String, reason: String },
}

/// The certificate at `path` checked against `ca_pem`: its subject and expiry when it is good.
pub fn check(path: &Path, ca_pem: &str, now: SystemTime) -> Result<String, ServingCertError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(ServingCertError::Missing(path.to_path_buf()));
        }
        Err(source) => {
            return Err(ServingCertError::Read {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    let format = |reason: String| ServingCertError::Format {
        path: path.to_path_buf(),
        reason,
    };
    // The file also holds the private key: only CERTIFICATE blocks are read, and nothing of
    // the file is ever shown.
    let certs: Vec<Vec<u8>> = crate::identity::pem::decode_all(&text)
        .map_err(|e| format(e.to_string()))?
        .into_iter()
        .filter(|b| b.label == "CERTIFICATE")
        .map(|b| b.der)
        .collect();
    let leaf = certs
        .first()
        .ok_or_else(|| format("no CERTIFICATE block".to_owned()))?;
    let (_, parsed) =
        x509_parser::parse_x509_certificate(leaf).map_err(|e| format(e.to_string()))?;
    let validity = parsed.validity();
    let secs = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    if secs < validity.not_before.timestamp() {
        return Err(ServingCertError::NotYetValid {
            not_before: validity.not_before.to_string(),
        });
    }
    if secs > validity.not_after.timestamp() {
        return Err(ServingCertError::Expired {
            not_after: validity.not_after.to_string(),
        });
    }
    let subject = parsed.subject().to_string();
    let issuer = parsed.issuer().to_string();
    let not_after = validity.not_after.to_string();

    let mut roots = rustls::RootCertStore::empty();
    let cas: Vec<Vec<u8>> = crate::identity::pem::decode_all(ca_pem)
        .map_err(|e| ServingCertError::ClusterCa(e.to_string()))?
        .into_iter()
        .filter(|b| b.label == "CERTIFICATE")
        .map(|b| b.der)
        .collect();
    if cas.is_empty() {
        return Err(ServingCertError::ClusterCa(
            "no CERTIFICATE block".to_owned(),
        ));
    }
    for der in cas {
        roots
            .add(rustls::pki_types::CertificateDer::from(der))
            .map_err(|e| ServingCertError::ClusterCa(e.to_string()))?;
    }
    let leaf_der = rustls::pki_types::CertificateDer::from(leaf.clone());
    let end_entity = rustls::server::ParsedCertificate::try_from(&leaf_der)
        .map_err(|e| format(e.to_string()))?;
    let intermediates: Vec<rustls::pki_types::CertificateDer<'static>> = certs[1..]
        .iter()
        .map(|d| rustls::pki_types::CertificateDer::from(d.clone()))
        .collect();
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    rustls::client::verify_server_cert_signed_by_trust_anchor(
        &end_entity,
        &roots,
        &intermediates,
        rustls::pki_types::UnixTime::since_unix_epoch(std::time::Duration::from_secs(
            secs.max(0) as u64
        )),
        provider.signature_verification_algorithms.all,
    )
    .map_err(|e| ServingCertError::OtherIssuer {
        issuer,
        reason: e.to_string(),
    })?;
    Ok(format!(
        "{subject}, issued by the cluster's CA, valid until {not_after}"
    ))
}
