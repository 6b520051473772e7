//! The device identity: a key pair and a self-signed certificate made on first
//! start and kept in the data directory, and the device ID derived from that
//! certificate (the Syncthing model: the ID is a hash of the certificate, so a peer
//! proves its ID by holding the key).

use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use data_encoding::BASE32_NOPAD;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use sha2::{Digest, Sha256};

/// File names inside the data directory.
const CERT_FILE: &str = "device-cert.pem";
const KEY_FILE: &str = "device-key.pem";

/// The base32 alphabet; check characters are drawn from it too.
const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
/// The 52 base32 characters of the hash are checked in four chunks of 13.
const CHUNK: usize = 13;
/// Characters in the canonical form without dashes: 52 data + 4 check.
const ID_CHARS: usize = 56;

/// A device ID: the SHA-256 of the device's certificate (DER).
///
/// Written as 56 base32 characters in eight dash-separated groups of seven; every
/// 13 data characters carry a Luhn mod 32 check character, so a mistyped ID is
/// caught before anyone is dialed.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DeviceId([u8; 32]);

impl DeviceId {
    /// The ID of the device holding this certificate.
    pub fn from_certificate_der(der: &[u8]) -> Self {
        DeviceId(Sha256::digest(der).into())
    }

    /// The first group of the ID, enough to tell devices apart in a list.
    pub fn short(&self) -> String {
        self.to_string()[..7].to_owned()
    }

    /// The raw hash.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

fn luhn32(chars: &[u8]) -> Result<u8, DeviceIdError> {
    let mut factor = 1;
    let mut sum = 0;
    for &c in chars {
        let codepoint = ALPHABET.iter().position(|&a| a == c).ok_or(DeviceIdError::BadCharacter(char::from(c)))?;
        let addend = factor * codepoint;
        factor = if factor == 2 { 1 } else { 2 };
        sum += addend / 32 + addend % 32;
    }
    Ok(ALPHABET[(32 - sum % 32) % 32])
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let data = BASE32_NOPAD.encode(&self.0);
        let mut with_checks = String::with_capacity(ID_CHARS);
        for chunk in data.as_bytes().chunks(CHUNK) {
            with_checks.push_str(std::str::from_utf8(chunk).map_err(|_| fmt::Error)?);
            with_checks.push(char::from(luhn32(chunk).map_err(|_| fmt::Error)?));
        }
        for (i, group) in with_checks.as_bytes().chunks(7).enumerate() {
            if i > 0 {
                f.write_str("-")?;
            }
            f.write_str(std::str::from_utf8(group).map_err(|_| fmt::Error)?)?;
        }
        Ok(())
    }
}

impl fmt::Debug for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DeviceId({self})")
    }
}

/// Why a string is not a device ID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeviceIdError {
    /// Wrong number of characters (dashes and spaces do not count).
    #[error("a device ID has 56 characters (not counting dashes), this one has {0}")]
    WrongLength(usize),
    /// A character outside A-Z and 2-7.
    #[error("a device ID uses only the letters A-Z and digits 2-7, not {0:?}")]
    BadCharacter(char),
    /// A check character does not match: the ID was mistyped.
    #[error("the device ID fails its check (group {0}): it was probably mistyped")]
    CheckFailed(usize),
}

impl FromStr for DeviceId {
    type Err = DeviceIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let canonical: Vec<u8> =
            s.bytes().filter(|b| !matches!(b, b'-' | b' ')).map(|b| b.to_ascii_uppercase()).collect();
        if canonical.len() != ID_CHARS {
            return Err(DeviceIdError::WrongLength(canonical.len()));
        }
        let mut data = Vec::with_capacity(ID_CHARS - 4);
        for (i, chunk) in canonical.chunks(CHUNK + 1).enumerate() {
            let (body, check) = chunk.split_at(CHUNK);
            if luhn32(body)? != check[0] {
                return Err(DeviceIdError::CheckFailed(i + 1));
            }
            data.extend_from_slice(body);
        }
        let bytes =
            BASE32_NOPAD.decode(&data).map_err(|e| DeviceIdError::BadCharacter(char::from(data[e.position])))?;
        let hash: [u8; 32] = bytes.try_into().map_err(|_| DeviceIdError::WrongLength(canonical.len()))?;
        Ok(DeviceId(hash))
    }
}

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
        // ECDSA P-256: the certificate doubles as the DTLS certificate, and WebRTC
        // stacks handle P-256 in both DTLS roles.
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = rcgen::CertificateParams::new(vec!["voicelink".to_owned()])?;
        params.distinguished_name.push(rcgen::DnType::CommonName, "voicelink device");
        let certificate = params.self_signed(&key)?;
        let key_pem = key.serialize_pem();
        // Key first: a crash between the two writes leaves "key without certificate",
        // which load_or_create reports instead of silently making a new identity.
        write_private(key_path, key_pem.as_bytes())?;
        write_private(cert_path, certificate.pem().as_bytes())?;
        Ok(Identity {
            device_id: DeviceId::from_certificate_der(certificate.der()),
            certificate_der: certificate.der().to_vec(),
            key_pem,
        })
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
    fn device_id_round_trips_through_its_text_form() {
        let id = DeviceId::from_certificate_der(b"some certificate");
        let text = id.to_string();
        assert_eq!(text.len(), 63, "{text}");
        assert_eq!(text.split('-').count(), 8);
        assert_eq!(text.parse::<DeviceId>(), Ok(id));
        // Lower case and no dashes are accepted too.
        assert_eq!(text.replace('-', "").to_lowercase().parse::<DeviceId>(), Ok(id));
        assert_eq!(id.short(), text[..7]);
    }

    #[test]
    fn a_mistyped_device_id_is_caught_by_its_check_characters() {
        let text = DeviceId::from_certificate_der(b"x").to_string();
        let mut bytes = text.into_bytes();
        // Change one data character in the third group.
        bytes[17] = if bytes[17] == b'A' { b'B' } else { b'A' };
        let typo = String::from_utf8(bytes).unwrap();
        assert!(matches!(typo.parse::<DeviceId>(), Err(DeviceIdError::CheckFailed(_))), "{typo}");
    }

    #[test]
    fn malformed_device_ids_are_refused_with_the_reason() {
        assert_eq!("ABC".parse::<DeviceId>(), Err(DeviceIdError::WrongLength(3)));
        let with_bad_char = format!("1{}", "A".repeat(55));
        assert_eq!(with_bad_char.parse::<DeviceId>(), Err(DeviceIdError::BadCharacter('1')));
    }

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
