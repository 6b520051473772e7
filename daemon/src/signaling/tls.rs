//! Mutual TLS between daemons with their device certificates. There is no CA: a
//! certificate is trusted for what it proves, which is the device ID (its hash).
//! The caller checks the callee's ID against the one it meant to reach; the
//! callee takes the caller's ID from the caller's certificate. Both sides check
//! that the peer holds the certificate's key (the handshake signature).

use std::sync::{Arc, Mutex};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{ClientConfig, DigitallySignedStruct, DistinguishedName, Error, ServerConfig, SignatureScheme};

use crate::identity::Identity;
use voicelink_core::vocab::DeviceId;

/// ALPN protocol name: refuses anything that is not voicelink signaling early.
pub const ALPN: &[u8] = b"voicelink/1";

/// Why TLS could not be set up from the identity.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    /// The key did not parse.
    #[error("the device key cannot be used for TLS: {0}")]
    Key(String),
    /// rustls refused the configuration.
    #[error("cannot configure TLS: {0}")]
    Config(#[from] Error),
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn key_of(identity: &Identity) -> Result<PrivateKeyDer<'static>, TlsSetupError> {
    PrivateKeyDer::from_pem_slice(identity.key_pem().as_bytes()).map_err(|e| TlsSetupError::Key(e.to_string()))
}

/// The server side: requires a client certificate, any device's.
pub fn server_config(identity: &Identity) -> Result<Arc<ServerConfig>, TlsSetupError> {
    let provider = provider();
    let verifier = Arc::new(AnyDevice { algorithms: provider.signature_verification_algorithms });
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![CertificateDer::from(identity.certificate_der.clone())], key_of(identity)?)?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(Arc::new(config))
}

/// Where the client records the device ID the server presented.
pub type PresentedId = Arc<Mutex<Option<DeviceId>>>;

/// The client side for one connection: accepts the server only if its device ID
/// is `expected` (any device when `None`, for a bare `host:port`). The returned
/// cell holds the ID the server presented, for error messages and for learning it.
pub fn client_config(
    identity: &Identity,
    expected: Option<DeviceId>,
) -> Result<(Arc<ClientConfig>, PresentedId), TlsSetupError> {
    let provider = provider();
    let seen = Arc::new(Mutex::new(None));
    let verifier = Arc::new(ExpectedDevice {
        expected,
        seen: seen.clone(),
        algorithms: provider.signature_verification_algorithms,
    });
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(vec![CertificateDer::from(identity.certificate_der.clone())], key_of(identity)?)?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok((Arc::new(config), seen))
}

/// The server name sent in the handshake; identity is checked by device ID instead.
pub fn server_name() -> ServerName<'static> {
    ServerName::try_from("voicelink").unwrap_or_else(|_| ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()))
}

/// The device ID of the peer's end-entity certificate.
pub fn peer_device(certificates: Option<&[CertificateDer<'_>]>) -> Option<DeviceId> {
    certificates.and_then(|c| c.first()).map(|cert| DeviceId::from_certificate_der(cert))
}

/// The handshake-signature checks both verifiers share: the peer must hold the
/// key of the certificate it presented.
macro_rules! handshake_signature_checks {
    () => {
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, Error> {
            rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, Error> {
            rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.algorithms.supported_schemes()
        }
    };
}

#[derive(Debug)]
struct AnyDevice {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ClientCertVerifier for AnyDevice {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        // Any device may call; who it is comes from the certificate's hash, and
        // the handshake signature (below) proves it holds the key.
        Ok(ClientCertVerified::assertion())
    }

    handshake_signature_checks!();
}

#[derive(Debug)]
struct ExpectedDevice {
    expected: Option<DeviceId>,
    seen: Arc<Mutex<Option<DeviceId>>>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for ExpectedDevice {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let presented = DeviceId::from_certificate_der(end_entity);
        if let Ok(mut seen) = self.seen.lock() {
            *seen = Some(presented);
        }
        match self.expected {
            Some(expected) if expected != presented => {
                Err(Error::InvalidCertificate(rustls::CertificateError::ApplicationVerificationFailure))
            }
            _ => Ok(ServerCertVerified::assertion()),
        }
    }

    handshake_signature_checks!();
}
