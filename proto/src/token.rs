//! The join token as operators copy it: one line, `mesh1_` and base64url of the signer's
//! address, the CA fingerprint and a 128-bit secret, with a checksum so that a token cut
//! short or mistyped is reported as malformed before anything is dialled.

use std::net::SocketAddr;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::{Deserialize, Serialize};

const PREFIX: &str = "mesh1_";

/// What a token carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Token {
    /// Where the signer that issued it listens (its advertise address).
    pub signer: SocketAddr,
    /// SHA-256 of the mesh CA certificate: the joining node pins it.
    pub ca_fingerprint: [u8; 32],
    /// The secret; the signer keeps only its SHA-256.
    pub secret: [u8; 16],
}

/// Why a token's text is not a token. Malformed tokens exit 2.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("not a mesh join token (it starts with {PREFIX})")]
    Prefix,
    #[error("the token is damaged or cut short: copy the whole line printed by `meshctl token create`")]
    Damaged,
}

impl Token {
    pub fn encode(&self) -> String {
        let mut bytes = postcard::to_stdvec(self).unwrap_or_default();
        let sum = checksum(&bytes);
        bytes.extend_from_slice(&sum.to_be_bytes());
        format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes))
    }

    pub fn decode(text: &str) -> Result<Token, TokenError> {
        let body = text.trim().strip_prefix(PREFIX).ok_or(TokenError::Prefix)?;
        let bytes = URL_SAFE_NO_PAD.decode(body).map_err(|_| TokenError::Damaged)?;
        if bytes.len() < 5 {
            return Err(TokenError::Damaged);
        }
        let (payload, sum) = bytes.split_at(bytes.len() - 4);
        if checksum(payload).to_be_bytes() != sum {
            return Err(TokenError::Damaged);
        }
        let (token, rest) = postcard::take_from_bytes::<Token>(payload).map_err(|_| TokenError::Damaged)?;
        if !rest.is_empty() {
            return Err(TokenError::Damaged);
        }
        Ok(token)
    }
}

/// FNV-1a, 32 bits: catches copy-paste damage, not attackers (the secret does that).
fn checksum(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5u32, |h, b| (h ^ u32::from(*b)).wrapping_mul(0x0100_0193))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token() -> Token {
        Token { signer: "198.18.0.1:7946".parse().expect("addr"), ca_fingerprint: [7; 32], secret: [9; 16] }
    }

    #[test]
    fn round_trip() {
        let t = token();
        let text = t.encode();
        assert!(text.starts_with("mesh1_"));
        assert!(!text.contains(['\n', ' ', '+', '/']));
        assert_eq!(Token::decode(&text), Ok(t.clone()));
        assert_eq!(Token::decode(&format!("  {text}\n")), Ok(t));
    }

    #[test]
    fn truncated_or_damaged_tokens_are_malformed() {
        let text = token().encode();
        for cut in [text.len() - 1, text.len() - 5, 10, 6] {
            assert_eq!(Token::decode(&text[..cut]), Err(TokenError::Damaged), "cut at {cut}");
        }
        let mut flipped = text.clone().into_bytes();
        let i = flipped.len() / 2;
        flipped[i] = if flipped[i] == b'A' { b'B' } else { b'A' };
        assert_eq!(Token::decode(&String::from_utf8(flipped).expect("ascii")), Err(TokenError::Damaged));
        assert_eq!(Token::decode("garbage"), Err(TokenError::Prefix));
        assert_eq!(Token::decode("mesh1_!!!"), Err(TokenError::Damaged));
        assert_eq!(Token::decode(""), Err(TokenError::Prefix));
    }
}
