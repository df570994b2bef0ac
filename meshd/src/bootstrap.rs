//! `meshd init` and `meshd join`: what turns an empty `data_dir` into a node of a mesh.
//! (The data plane starts in [`app`](crate::app); this module only prepares files.)
//!
//! Must not: start serving, or overwrite an existing identity.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use mesh_proto::token::{Token, TokenError};
use mesh_proto::wire::{JoinRequest, JoinResponse, Refusal};

use crate::config::Config;
use crate::datadir::{self, DataDirError};
use crate::identity::signer::{node_cert_key, NodeCertRecord};
use crate::identity::{self, ca, cert, seal, IdentityError};
use crate::store::{self, Store, StoreError};

/// How long `meshd join` waits for the signer.
pub const JOIN_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    #[error(transparent)]
    DataDir(#[from] DataDirError),
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The token's text is not a token.
    #[error("malformed token: {0}")]
    Token(#[from] TokenError),
    /// The signer said no.
    #[error("join refused: {0}")]
    Refused(Refusal),
    /// The signer could not be reached, or answered nonsense.
    #[error("cannot join: {0}")]
    Join(String),
}

impl BootstrapError {
    /// The exit status: 2 for what the operator must fix in the command or files, 1 for
    /// refusals and failures.
    pub fn exit_code(&self) -> u8 {
        match self {
            BootstrapError::DataDir(e) if e.is_usage() => 2,
            BootstrapError::Identity(e) if e.is_usage() => 2,
            BootstrapError::Token(_) => 2,
            _ => 1,
        }
    }
}

/// Opens the store sealing as this node, and records this node's key in it.
fn open_store(config: &Config) -> Result<Store, BootstrapError> {
    let id = Arc::new(identity::Identity::load(&config.data_dir, &config.node_name, Default::default())?);
    let store = Store::open(
        &datadir::store_path(&config.data_dir),
        &config.node_name,
        Arc::new(id.entry_authority()?),
        store::Metrics::new(),
        |_| {},
    )?;
    seal::record_own_key(&store, &id)?;
    Ok(store)
}

/// A signer's record of its own certificate (a joining node's is written by its signer).
fn record_own_cert(store: &Store, data_dir: &Path, node: &str) -> Result<(), BootstrapError> {
    let id = identity::Identity::load(data_dir, node, Default::default())?;
    let info = id.current().info.clone();
    let record = NodeCertRecord {
        serial: info.serial,
        key_hash: info.key_hash,
        not_after_ms: info.not_after.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64),
        issued_by: node.to_owned(),
        role: info.role,
    };
    store.put(&node_cert_key(node), serde_json::to_vec(&record).unwrap_or_default())?;
    Ok(())
}

/// `meshd init`: `data_dir`, the store, a new mesh CA and this node's certificate.
/// Returns the CA fingerprint.
pub fn init(config: &Config) -> Result<String, BootstrapError> {
    datadir::init(&config.data_dir, &config.node_name)?;
    let fingerprint =
        identity::init(&config.data_dir, &config.node_name, &config.trust_domain, config.identity.cert_ttl)?;
    let store = open_store(config)?;
    record_own_cert(&store, &config.data_dir, &config.node_name)?;
    Ok(fingerprint)
}

/// What a successful join brought.
pub struct Joined {
    pub ca_fingerprint: String,
    pub signer: bool,
}

/// `meshd join TOKEN`: a key made here, a certificate from the token's signer.
pub async fn join(config: &Config, token_text: &str) -> Result<Joined, BootstrapError> {
    let token = Token::decode(token_text)?;
    if identity::dir_of(&config.data_dir).join("node.pem").exists() {
        return Err(IdentityError::Exists { dir: config.data_dir.clone() }.into());
    }
    let key = ca::new_node_key().map_err(IdentityError::from)?;
    let csr = ca::csr_for(&key, &config.node_name).map_err(IdentityError::from)?;
    let tls = identity::join_client_config(token.ca_fingerprint)?;
    let request = JoinRequest::V1 { secret: token.secret, node: config.node_name.clone(), csr };
    let answer = tokio::time::timeout(JOIN_TIMEOUT, crate::peer::client::join(token.signer, tls, request))
        .await
        .map_err(|_| {
            BootstrapError::Join(format!("the signer at {} did not answer in {JOIN_TIMEOUT:?}", token.signer))
        })?
        .map_err(|e| BootstrapError::Join(e.to_string()))?;
    let (cert_der, ca_der, ca_key) = match answer {
        JoinResponse::Granted { cert, ca, ca_key } => (cert, ca, ca_key),
        JoinResponse::Refused(r) => return Err(BootstrapError::Refused(r)),
    };
    if cert::fingerprint_bytes(&ca_der) != token.ca_fingerprint {
        return Err(BootstrapError::Join("the signer sent another CA than the token pins".to_owned()));
    }
    let info = cert::inspect(&cert_der).map_err(|e| BootstrapError::Join(e.to_string()))?;
    if info.id.node != config.node_name {
        return Err(BootstrapError::Join(format!("the signer issued a certificate for {}", info.id)));
    }
    datadir::init(&config.data_dir, &config.node_name)?;
    let signer = ca_key.is_some();
    identity::install(
        &config.data_dir,
        &identity::Material {
            key: &key,
            cert: &cert_der.into(),
            ca: &ca_der.clone().into(),
            ca_key: ca_key.as_deref(),
            signers: &[token.signer.to_string()],
        },
    )?;
    open_store(config)?;
    Ok(Joined { ca_fingerprint: cert::fingerprint(&ca_der), signer })
}
