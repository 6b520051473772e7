//! The device identity: a key pair and a self-signed certificate made on first
//! start and kept in the data directory, and the device ID derived from that
//! certificate (the Syncthing model: the ID is a hash of the certificate, so a peer
//! proves its ID by holding the key). [`DeviceId`] itself is core vocabulary.

use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
pub use voicelink_core::device_id::{DeviceId, DeviceIdError};

/// File names inside the data directory.
const CERT_FILE: &str = "device-cert.pem";
const KEY_FILE: &str = "device-key.pem";

/// This device's identity as loaded from (or created in) the data directory.
pub struct Identity {
    /// Derived from `certificate_der`.
    pub device_id: DeviceId,
    /// The self-signed certificate (DER), presented to peers.
    pub certificate_der: Vec<u8>,
    /// The private key (PKCS#8 PEM). Never logged.
    key_pem: String,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity").field("device_id", &self.device_id).finish_non_exhaustive()
    }
}

/// Why the identity could not be loaded or created.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// Reading or writing a file failed.
    #[error("cannot {action} {path}: {source}")]
    Io {
        /// "read", "create", ...
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// One of the two files exists without the other.
    #[error(
        "{present} exists but {missing} does not; restore the missing file, or move {present} \
         away to create a new identity (this device's ID will change)"
    )]
    Incomplete {
        /// The file that is there.
        present: PathBuf,
        /// The file that is not.
        missing: PathBuf,
    },
    /// A file is there but does not hold what it should.
    #[error(
        "{path} is not a valid {what} ({detail}); restore it from a backup, or move both \
         device-*.pem files away to create a new identity (this device's ID will change)"
    )]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// "certificate", "private key", ...
        what: &'static str,
        /// What is wrong.
        detail: String,
    },
    /// Generating the key or certificate failed.
    #[error("cannot generate the device certificate: {0}")]
    Generate(#[from] rcgen::Error),
}

impl Identity {
    /// Loads the identity from `data_dir`, creating it on first start. Returns the
    /// identity and whether it was just created.
    pub fn load_or_create(data_dir: &Path) -> Result<(Identity, bool), IdentityError> {
        let cert_path = data_dir.join(CERT_FILE);
        let key_path = data_dir.join(KEY_FILE);
        match (cert_path.exists(), key_path.exists()) {
            (true, true) => Ok((Self::load(&cert_path, &key_path)?, false)),
            (false, false) => Ok((Self::create(data_dir, &cert_path, &key_path)?, true)),
            (true, false) => Err(IdentityError::Incomplete { present: cert_path, missing: key_path }),
            (false, true) => Err(IdentityError::Incomplete { present: key_path, missing: cert_path }),
        }
    }

    fn load(cert_path: &Path, key_path: &Path) -> Result<Identity, IdentityError> {
        let read = |path: &Path| {
            fs::read_to_string(path).map_err(|source| IdentityError::Io {
                action: "read",
                path: path.to_owned(),
                source,
            })
        };
        let cert_pem = read(cert_path)?;
        let key_pem = read(key_path)?;
        let certificate = CertificateDer::from_pem_slice(cert_pem.as_bytes()).map_err(|e| IdentityError::Corrupt {
            path: cert_path.to_owned(),
            what: "certificate",
            detail: e.to_string(),
        })?;
        let key = rcgen::KeyPair::from_pem(&key_pem).map_err(|e| IdentityError::Corrupt {
            path: key_path.to_owned(),
            what: "private key",
            detail: e.to_string(),
        })?;
        // The certificate's SubjectPublicKeyInfo carries the raw public key; if it is
        // not there, the two files are from different identities.
        let public = key.public_key_raw();
        if !certificate.windows(public.len()).any(|w| w == public) {
            return Err(IdentityError::Corrupt {
                path: cert_path.to_owned(),
                what: "certificate for the key in device-key.pem",
                detail: "the certificate was made for another key".into(),
            });
        }
        Ok(Identity {
            device_id: DeviceId::from_certificate_der(&certificate),
            certificate_der: certificate.to_vec(),
            key_pem,
        })
    }

    fn create(data_dir: &Path, cert_path: &Path, key_path: &Path) -> Result<Identity, IdentityError> {
        fs::DirBuilder::new().recursive(true).mode(0o700).create(data_dir).map_err(|source| IdentityError::Io {
            action: "create the data directory",
            path: data_dir.to_owned(),
            source,
        })?;
        let (identity, certificate_pem) = Self::generate()?;
        // Key first: a crash between the two writes leaves "key without certificate",
        // which load_or_create reports instead of silently making a new identity.
        write_private(key_path, identity.key_pem.as_bytes())?;
        write_private(cert_path, certificate_pem.as_bytes())?;
        Ok(identity)
    }

    /// A new identity kept only in memory (the hostile-LAN tests mint one per
    /// call request, as an attacker would).
    pub fn ephemeral() -> Result<Identity, IdentityError> {
        Self::generate().map(|(identity, _)| identity)
    }

    /// A new key and its self-signed certificate (also returned as PEM).
    fn generate() -> Result<(Identity, String), IdentityError> {
        // ECDSA P-256: the certificate doubles as the DTLS certificate, and WebRTC
        // stacks handle P-256 in both DTLS roles.
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = rcgen::CertificateParams::new(vec!["voicelink".to_owned()])?;
        params.distinguished_name.push(rcgen::DnType::CommonName, "voicelink device");
        let certificate = params.self_signed(&key)?;
        let identity = Identity {
            device_id: DeviceId::from_certificate_der(certificate.der()),
            certificate_der: certificate.der().to_vec(),
            key_pem: key.serialize_pem(),
        };
        Ok((identity, certificate.pem()))
    }

    /// The private key in PKCS#8 PEM, for TLS and DTLS.
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }
}

/// Writes a new file readable only by its owner.
fn write_private(path: &Path, contents: &[u8]) -> Result<(), IdentityError> {
    let io_error = |source| IdentityError::Io { action: "create", path: path.to_owned(), source };
    let mut file = fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).map_err(io_error)?;
    file.write_all(contents).map_err(io_error)?;
    file.sync_all().map_err(io_error)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn identity_is_created_once_with_private_files_and_stays_stable() {
        let dir = tempfile::tempdir().unwrap();
        let (first, created) = Identity::load_or_create(dir.path()).unwrap();
        assert!(created);
        for file in [CERT_FILE, KEY_FILE] {
            let mode = fs::metadata(dir.path().join(file)).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{file}");
        }
        let (second, created) = Identity::load_or_create(dir.path()).unwrap();
        assert!(!created);
        assert_eq!(first.device_id, second.device_id);
        assert_eq!(first.certificate_der, second.certificate_der);
        assert_eq!(first.device_id, DeviceId::from_certificate_der(&first.certificate_der));
    }

    #[test]
    fn a_missing_or_corrupt_identity_file_is_an_error_not_a_new_identity() {
        let dir = tempfile::tempdir().unwrap();
        Identity::load_or_create(dir.path()).unwrap();
        fs::write(dir.path().join(CERT_FILE), "garbage").unwrap();
        let error = Identity::load_or_create(dir.path()).unwrap_err();
        assert!(matches!(error, IdentityError::Corrupt { what: "certificate", .. }), "{error}");
        assert!(error.to_string().contains("ID will change"));

        fs::remove_file(dir.path().join(CERT_FILE)).unwrap();
        let error = Identity::load_or_create(dir.path()).unwrap_err();
        assert!(matches!(error, IdentityError::Incomplete { .. }), "{error}");
    }

    #[test]
    fn a_certificate_from_another_identity_is_detected() {
        let (one, two) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        Identity::load_or_create(one.path()).unwrap();
        Identity::load_or_create(two.path()).unwrap();
        fs::copy(two.path().join(CERT_FILE), one.path().join(CERT_FILE)).unwrap();
        let error = Identity::load_or_create(one.path()).unwrap_err();
        assert!(error.to_string().contains("made for another key"), "{error}");
    }
}
