//! The crypto behind signed adverts (`voicelink_core::advert::AdvertProof`):
//! signing ours with the device key, and checking a peer's against the
//! certificate it carries, whose hash must be the device ID it claims.

use std::sync::Arc;
use std::time::SystemTime;

use rustls::SignatureScheme;
use rustls::sign::SigningKey;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _};

use voicelink_core::advert::{Advert, AdvertProof};
use voicelink_core::vocab::DeviceId;

use crate::identity::Identity;

/// Why our adverts cannot be signed.
#[derive(Debug, thiserror::Error)]
#[error("cannot sign the mDNS advert with the device key: {0}")]
pub struct SigningError(String);

/// Signs this device's adverts.
pub struct AdvertSigner {
    key: Arc<dyn SigningKey>,
    certificate: Vec<u8>,
    /// The time of the last advert signed: each is newer than the one before,
    /// even if the clock steps back.
    last_ms: u64,
}

impl AdvertSigner {
    /// A signer with the device's key and certificate.
    pub fn new(identity: &Identity) -> Result<Self, SigningError> {
        let der =
            PrivateKeyDer::from_pem_slice(identity.key_pem().as_bytes()).map_err(|e| SigningError(e.to_string()))?;
        let key = rustls::crypto::ring::sign::any_ecdsa_type(&der).map_err(|e| SigningError(e.to_string()))?;
        Ok(AdvertSigner { key, certificate: identity.certificate_der.clone(), last_ms: 0 })
    }

    /// `advert` with a fresh proof.
    pub fn sign(&mut self, advert: Advert) -> Result<Advert, SigningError> {
        let now_ms = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        let time_ms = now_ms.max(self.last_ms + 1);
        let signer = self
            .key
            .choose_scheme(&[SignatureScheme::ECDSA_NISTP256_SHA256])
            .ok_or_else(|| SigningError("the device key is not ECDSA P-256".into()))?;
        let signature = signer.sign(&advert.signed_payload(time_ms)).map_err(|e| SigningError(e.to_string()))?;
        self.last_ms = time_ms;
        let proof = AdvertProof { time_ms, certificate: self.certificate.clone(), signature };
        Ok(Advert { proof: Some(proof), ..advert })
    }
}

/// The time of `advert`'s proof, if it has one that holds: the certificate is
/// the claimed device's and its key signed exactly these fields.
pub fn checked_time(advert: &Advert) -> Option<u64> {
    let proof = advert.proof.as_ref()?;
    if DeviceId::from_certificate_der(&proof.certificate) != advert.device_id {
        return None;
    }
    let certificate = CertificateDer::from(proof.certificate.as_slice());
    let certificate = webpki::EndEntityCert::try_from(&certificate).ok()?;
    let payload = advert.signed_payload(proof.time_ms);
    certificate.verify_signature(webpki::ring::ECDSA_P256_SHA256, &payload, &proof.signature).ok()?;
    Some(proof.time_ms)
}

#[cfg(test)]
mod tests {
    use super::*;
    use voicelink_core::advert::PROTOCOL_VERSION;

    fn advert(identity: &Identity) -> Advert {
        Advert {
            protocol_version: PROTOCOL_VERSION,
            device_id: identity.device_id,
            display_name: "bob".into(),
            signaling_port: 4444,
            leaving: false,
            proof: None,
        }
    }

    #[test]
    fn a_signed_advert_checks_out_and_any_change_or_other_key_breaks_it() {
        let bob = Identity::ephemeral().unwrap();
        let mut signer = AdvertSigner::new(&bob).unwrap();
        let signed = signer.sign(advert(&bob)).unwrap();
        let time = checked_time(&signed).expect("bob's own signature");
        assert!(signer.sign(advert(&bob)).unwrap().proof.unwrap().time_ms > time, "each newer than the last");

        assert_eq!(checked_time(&Advert { signaling_port: 6666, ..signed.clone() }), None, "another port");
        assert_eq!(checked_time(&Advert { leaving: true, ..signed.clone() }), None, "a forged bye");
        assert_eq!(checked_time(&Advert { display_name: "alice".into(), ..signed.clone() }), None);

        // Mallory signs bob's advert with her own key and certificate.
        let mallory = Identity::ephemeral().unwrap();
        let forged = AdvertSigner::new(&mallory).unwrap().sign(advert(&bob)).unwrap();
        assert_eq!(checked_time(&forged), None, "her certificate is not bob's device ID");
        // Or with bob's certificate but her key.
        let mut chimera = forged.clone();
        if let Some(proof) = chimera.proof.as_mut() {
            proof.certificate.clone_from(&bob.certificate_der);
        }
        assert_eq!(checked_time(&chimera), None, "bob's certificate, her signature");
        assert_eq!(checked_time(&advert(&bob)), None, "unsigned");
    }
}
