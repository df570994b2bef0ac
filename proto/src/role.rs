//! A node's role in the mesh, carried in its certificate (the CA signs it): what it may
//! write beyond its own entries.
//!
//! Must not: be taken from anything but a certificate the mesh CA signed.

use serde::{Deserialize, Serialize};

/// Ordered: each role may do what the ones before it may.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Serves its own services, reads everything.
    Member,
    /// Also writes mesh-wide configuration: routes and policies.
    Operator,
    /// Also holds the CA key: issues certificates and join tokens, removes nodes.
    Signer,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Member, Role::Operator, Role::Signer];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Member => "member",
            Role::Operator => "operator",
            Role::Signer => "signer",
        }
    }

    /// Whether this role may do what `needed` may.
    pub fn allows(self, needed: Role) -> bool {
        self >= needed
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Role, String> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| format!("{s:?} is not a role: member, operator or signer"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_role_allows_what_the_lesser_ones_do() {
        assert!(Role::Signer.allows(Role::Operator) && Role::Operator.allows(Role::Member));
        assert!(!Role::Member.allows(Role::Operator) && !Role::Operator.allows(Role::Signer));
        for r in Role::ALL {
            assert_eq!(r.as_str().parse::<Role>(), Ok(r));
        }
        assert!("admin".parse::<Role>().is_err());
    }
}
