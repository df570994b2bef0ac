//! Authorization: a pure decision per tunnelled connection, taken by the receiving node
//! after it has checked who the caller is (its certificate) and what it may speak for
//! (the services it hosts). Allow-all until `meshctl policy` lands; the hook is where
//! those policies will be read.
//!
//! Must not: do I/O, or decide on a name the handshake did not prove.

/// Who asks for what, every part already verified.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub source_node: &'a str,
    pub source_service: Option<&'a str>,
    pub service: &'a str,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow,
    Deny { why: String },
}

pub fn authorize(_request: &Request<'_>) -> Decision {
    Decision::Allow
}
