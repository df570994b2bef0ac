//! Reading node certificates: the SPIFFE ID, serial, key hash and validity, parsed from
//! DER with x509-parser. Pure functions; the verifiers and the signer both use them.
//!
//! Must not: decide trust (the verifiers do): parsing a certificate says what it claims,
//! not whether to believe it.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use mesh_proto::role::Role;

use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

/// `spiffe://TRUST_DOMAIN/node/NAME`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SpiffeId {
    pub trust_domain: String,
    pub node: String,
}

impl SpiffeId {
    pub fn new(trust_domain: &str, node: &str) -> SpiffeId {
        SpiffeId { trust_domain: trust_domain.to_owned(), node: node.to_owned() }
    }

    /// Parses a node ID; anything else (workload IDs, other schemes, bad names) is None.
    pub fn parse(uri: &str) -> Option<SpiffeId> {
        let rest = uri.strip_prefix("spiffe://")?;
        let (domain, path) = rest.split_once('/')?;
        let node = path.strip_prefix("node/")?;
        let valid_domain = !domain.is_empty() && domain.split('.').all(mesh_proto::is_dns_label);
        (valid_domain && mesh_proto::is_dns_label(node)).then(|| SpiffeId::new(domain, node))
    }
}

impl std::fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "spiffe://{}/node/{}", self.trust_domain, self.node)
    }
}

/// What identifies a node certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    pub id: SpiffeId,
    /// The serial, lower-case hex.
    pub serial: String,
    /// SHA-256 of the SubjectPublicKeyInfo, lower-case hex: identifies the key across
    /// renewals.
    pub key_hash: String,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    /// The role the CA signed into it (the subject's organizational unit); None in a
    /// certificate issued before roles.
    pub role: Option<Role>,
}

/// Why a certificate is not a node certificate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertError {
    #[error("not a parsable X.509 certificate")]
    Unparsable,
    #[error("a node certificate has exactly one subject alternative name, a spiffe:// URI; this one has {0}")]
    Names(String),
    #[error("its URI {0:?} is not a node SPIFFE ID (spiffe://DOMAIN/node/NAME)")]
    NotNodeId(String),
}

/// Parses a node certificate, checking the SPIFFE rule: exactly one SAN, and it is a
/// node SPIFFE ID. (The chain, validity and usage are checked by webpki.)
pub fn inspect(der: &[u8]) -> Result<CertInfo, CertError> {
    let (_, cert) = X509Certificate::from_der(der).map_err(|_| CertError::Unparsable)?;
    let names: Vec<GeneralName<'_>> = match cert.subject_alternative_name() {
        Ok(Some(san)) => san.value.general_names.clone(),
        Ok(None) => Vec::new(),
        Err(_) => return Err(CertError::Unparsable),
    };
    let uri = match names.as_slice() {
        [GeneralName::URI(uri)] => *uri,
        [] => return Err(CertError::Names("none".to_owned())),
        [one] => return Err(CertError::Names(format!("one, not a URI ({one})"))),
        many => return Err(CertError::Names(format!("{}", many.len()))),
    };
    let id = SpiffeId::parse(uri).ok_or_else(|| CertError::NotNodeId(uri.to_owned()))?;
    let key_hash = hex(ring::digest::digest(&ring::digest::SHA256, cert.public_key().raw).as_ref());
    let time = |t: i64| UNIX_EPOCH + Duration::from_secs(u64::try_from(t).unwrap_or(0));
    let role = cert.subject().iter_organizational_unit().find_map(|ou| ou.as_str().ok()?.parse::<Role>().ok());
    Ok(CertInfo {
        id,
        serial: hex(cert.raw_serial()),
        key_hash,
        not_before: time(cert.validity().not_before.timestamp()),
        not_after: time(cert.validity().not_after.timestamp()),
        role,
    })
}

/// `sha256:` and the hex SHA-256 of a certificate: the CA fingerprint operators compare.
pub fn fingerprint(der: &[u8]) -> String {
    format!("sha256:{}", hex(&fingerprint_bytes(der)))
}

pub fn fingerprint_bytes(der: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, der).as_ref());
    out
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spiffe_ids() {
        let id = SpiffeId::parse("spiffe://mesh.local/node/vm-1").expect("valid");
        assert_eq!(id, SpiffeId::new("mesh.local", "vm-1"));
        assert_eq!(id.to_string(), "spiffe://mesh.local/node/vm-1");
        for bad in [
            "spiffe://mesh.local/ns/default/sa/x",
            "spiffe://mesh.local/node/VM_1",
            "spiffe:///node/a",
            "https://mesh.local/node/a",
            "spiffe://mesh.local/node/a/b",
            "spiffe://Mesh.Local/node/a",
        ] {
            assert_eq!(SpiffeId::parse(bad), None, "{bad}");
        }
    }
}
