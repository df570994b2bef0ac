//! The mesh CA: created by `meshd init`, held by signers, issuing node certificates from
//! CSRs. The signer decides every field of a node certificate itself; from the CSR it
//! takes the public key and nothing else.
//!
//! Must not: take anything from a CSR but its public key, or let the CA key leave a
//! signer except in a `--signer` join.

use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber, PKCS_ECDSA_P256_SHA256,
};
use rustls_pki_types::{CertificateDer, CertificateSigningRequestDer};

use mesh_proto::role::Role;

use super::cert::SpiffeId;

/// How long the CA is valid: long, because replacing a root means touching every host.
pub const CA_LIFETIME: Duration = Duration::from_secs(20 * 365 * 86_400);
/// Node certificates start this long before they are issued, for clock skew.
pub const BACKDATE: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("the CSR is not valid: {0}")]
    BadCsr(String),
}

/// The CA's certificate and, on a signer, its key.
pub struct Ca {
    pub der: CertificateDer<'static>,
    /// The rcgen issuer: the CA certificate's name and key identifier, and its key.
    issuer: Option<Issuer<'static, KeyPair>>,
}

impl Ca {
    /// A new CA for `trust_domain`.
    pub fn create(trust_domain: &str) -> Result<Ca, CaError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "mesh");
        dn.push(DnType::CommonName, format!("mesh CA {trust_domain}"));
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let now = SystemTime::now();
        params.not_before = (now - BACKDATE).into();
        params.not_after = (now + CA_LIFETIME).into();
        params.serial_number = Some(random_serial());
        let cert = params.self_signed(&key)?;
        Ok(Ca { der: cert.der().clone(), issuer: Some(Issuer::new(params, key)) })
    }

    /// The CA as a non-signer holds it: the certificate alone.
    pub fn verify_only(der: CertificateDer<'static>) -> Ca {
        Ca { der, issuer: None }
    }

    /// The CA with its key (PKCS#8 DER), as a signer holds it.
    pub fn with_key(der: CertificateDer<'static>, key_der: &[u8]) -> Result<Ca, CaError> {
        let key = KeyPair::try_from(key_der)?;
        let issuer = Issuer::from_ca_cert_der(&der, key)?;
        Ok(Ca { der, issuer: Some(issuer) })
    }

    pub fn is_signer(&self) -> bool {
        self.issuer.is_some()
    }

    /// The CA key as PKCS#8 DER, for files and `--signer` joins.
    pub fn key_der(&self) -> Option<Vec<u8>> {
        self.issuer.as_ref().map(|i| i.key().serialize_der())
    }

    /// Issues a node certificate for `id` with `role`, valid for `ttl`, for the key in
    /// `csr`. None when this node is not a signer.
    pub fn issue(
        &self,
        csr: &[u8],
        id: &SpiffeId,
        role: Role,
        ttl: Duration,
    ) -> Result<Option<CertificateDer<'static>>, CaError> {
        let Some(issuer) = &self.issuer else { return Ok(None) };
        let csr = CertificateSigningRequestParams::from_der(&CertificateSigningRequestDer::from(csr.to_vec()))
            .map_err(|e| CaError::BadCsr(e.to_string()))?;
        let params = node_params(id, role, ttl)?;
        let cert = params.signed_by(&csr.public_key, issuer)?;
        Ok(Some(cert.der().clone()))
    }
}

/// The fields of every node certificate. The role is the subject's organizational unit
/// (as Kubernetes puts a client's groups in its organization): signed by the CA with the
/// rest, so a node cannot claim another.
fn node_params(id: &SpiffeId, role: Role, ttl: Duration) -> Result<CertificateParams, CaError> {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, id.node.clone());
    dn.push(DnType::OrganizationalUnitName, role.as_str());
    params.distinguished_name = dn;
    params.subject_alt_names = vec![SanType::URI(id.to_string().try_into()?)];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let now = SystemTime::now();
    params.not_before = (now - BACKDATE).into();
    params.not_after = (now + ttl).into();
    params.serial_number = Some(random_serial());
    params.use_authority_key_identifier_extension = true;
    Ok(params)
}

/// A new node key (ECDSA P-256). It never leaves the node.
pub fn new_node_key() -> Result<KeyPair, CaError> {
    Ok(KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?)
}

/// A CSR for `key`. Its fields are ignored by signers; it proves possession of the key.
pub fn csr_for(key: &KeyPair, node: &str) -> Result<Vec<u8>, CaError> {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, node);
    params.distinguished_name = dn;
    Ok(params.serialize_request(key)?.der().to_vec())
}

/// 16 random bytes, the top bit clear so the serial is a positive integer.
fn random_serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    let rng = ring::rand::SystemRandom::new();
    if ring::rand::SecureRandom::fill(&rng, &mut bytes).is_err() {
        // The OS RNG failing is not survivable for a CA; a fixed serial would be worse.
        panic!("the system random number generator failed");
    }
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01;
    SerialNumber::from_slice(&bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::cert;

    #[test]
    fn a_node_cert_has_one_spiffe_san_both_usages_and_is_backdated() {
        let ca = Ca::create("mesh.local").expect("ca");
        let key = new_node_key().expect("key");
        // A CSR that asks for another name: the signer ignores it.
        let csr = csr_for(&key, "someone-else").expect("csr");
        let id = SpiffeId::new("mesh.local", "vm-2");
        let der = ca.issue(&csr, &id, Role::Operator, Duration::from_secs(3600)).expect("issue").expect("signer");
        let info = cert::inspect(&der).expect("a node cert");
        assert_eq!(info.id, id);
        assert_eq!(info.role, Some(Role::Operator), "the role the CA signed in");
        let now = SystemTime::now();
        assert!(info.not_before <= now - Duration::from_secs(55));
        let life = info.not_after.duration_since(now).expect("future");
        assert!(life > Duration::from_secs(3590) && life <= Duration::from_secs(3600));
        assert_eq!(
            info.key_hash,
            cert::hex(
                ring::digest::digest(&ring::digest::SHA256, &rcgen::PublicKeyData::subject_public_key_info(&key))
                    .as_ref()
            )
        );
    }

    #[test]
    fn a_ca_reloaded_from_its_key_issues_certs_that_chain_to_the_original() {
        let ca = Ca::create("mesh.local").expect("ca");
        let again = Ca::with_key(ca.der.clone(), &ca.key_der().expect("key")).expect("reload");
        let key = new_node_key().expect("key");
        let csr = csr_for(&key, "n").expect("csr");
        let der = again
            .issue(&csr, &SpiffeId::new("mesh.local", "n"), Role::Member, Duration::from_secs(60))
            .expect("issue")
            .expect("signer");
        let anchor = webpki::anchor_from_trusted_cert(&ca.der).expect("anchor");
        let ee = webpki::EndEntityCert::try_from(&der).expect("ee");
        ee.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &[anchor],
            &[],
            rustls_pki_types::UnixTime::now(),
            webpki::KeyUsage::client_auth(),
            None,
            None,
        )
        .expect("chains to the original CA certificate");
        assert!(Ca::verify_only(ca.der.clone())
            .issue(&csr, &SpiffeId::new("mesh.local", "n"), Role::Member, Duration::from_secs(60))
            .expect("ok")
            .is_none());
    }
}
