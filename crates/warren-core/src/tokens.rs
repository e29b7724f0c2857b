//! Sandbox access and traffic tokens, kept nowhere.
//!
//! A token is derived when it is needed: HMAC-SHA256 under the daemon's secret key
//! (`secret` in the data directory, 0600) of what it is for, the sandbox's id and a
//! generation number. The store records only the generation, so a copy of `warren.db`
//! (a backup, a stolen disk image without the key) holds no credential, while the daemon
//! can still show a sandbox's token to its tenant again (E2B's `connect` needs that) and
//! check a presented one by deriving it afresh. Stores made before this kept tokens in
//! plain text; they are migrated to their SHA-256, checked as such and never shown again.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use crate::{CoreError, Result};

/// What a sandbox's token column says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenRef {
    /// Derived from the key, the id and this generation.
    Derived(u32),
    /// The SHA-256 (hex) of a token made before tokens were derived.
    Legacy(String),
}

impl TokenRef {
    const LEGACY: &'static str = "legacy-sha256:";

    /// As stored in the store's column.
    pub fn to_column(&self) -> String {
        match self {
            Self::Derived(g) => format!("g{g}"),
            Self::Legacy(h) => format!("{}{h}", Self::LEGACY),
        }
    }

    /// From the store's column. Anything else is a plain token of an old store, which
    /// the store migrates on open; read here, it is hashed on the spot.
    pub fn from_column(s: &str) -> Self {
        if let Some(g) = s.strip_prefix('g').and_then(|g| g.parse().ok()) {
            return Self::Derived(g);
        }
        match s.strip_prefix(Self::LEGACY) {
            Some(h) => Self::Legacy(h.to_string()),
            None => Self::Legacy(sha256_hex(s)),
        }
    }
}

/// What a token opens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    /// Exec and files of one sandbox (`X-Access-Token`, E2B's `envdAccessToken`).
    Access,
    /// Traffic to one sandbox's ports (E2B's `e2b-traffic-access-token`).
    Traffic,
}

impl TokenKind {
    fn label(self) -> &'static str {
        match self {
            Self::Access => "access",
            Self::Traffic => "traffic",
        }
    }
}

/// Lowercase hex of `s`'s SHA-256: how secrets are kept.
pub fn sha256_hex(s: &str) -> String {
    warren_types::random::to_hex(&Sha256::digest(s.as_bytes()))
}

/// The daemon's key for deriving tokens.
pub(crate) struct Keyring {
    key: [u8; 32],
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Keyring(..)")
    }
}

impl Keyring {
    /// Reads the key at `path`, or makes one there (0600) on first use.
    pub(crate) fn load_or_create(path: &Path) -> Result<Self> {
        let bad =
            |why: String| CoreError::Invalid(format!("the daemon's key {}: {why}", path.display()));
        match std::fs::read(path) {
            Ok(b) => {
                let key: [u8; 32] = b.try_into().map_err(|_| {
                    bad(
                        "not 32 bytes; remove it to make a new one (every sandbox token changes)"
                            .into(),
                    )
                })?;
                let meta = std::fs::metadata(path).map_err(|e| bad(e.to_string()))?;
                if meta.permissions().mode() & 0o077 != 0 {
                    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
                        .map_err(|e| bad(e.to_string()))?;
                }
                Ok(Self { key })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key: [u8; 32] = warren_types::random::bytes(32)?
                    .try_into()
                    .expect("32 bytes");
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(path)
                    .map_err(|e| bad(e.to_string()))?;
                f.write_all(&key)
                    .and_then(|()| f.sync_all())
                    .map_err(|e| bad(e.to_string()))?;
                Ok(Self { key })
            }
            Err(e) => Err(bad(e.to_string())),
        }
    }

    fn derive(&self, kind: TokenKind, id: &str, generation: u32) -> String {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes a key of any size");
        mac.update(format!("warren {} token\0{id}\0{generation}", kind.label()).as_bytes());
        warren_types::random::to_hex(&mac.finalize().into_bytes()[..24])
    }

    /// The token of sandbox `id`, if it can be shown (a legacy one cannot).
    pub(crate) fn token(&self, kind: TokenKind, id: &str, r: &TokenRef) -> Option<String> {
        match r {
            TokenRef::Derived(g) => Some(self.derive(kind, id, *g)),
            TokenRef::Legacy(_) => None,
        }
    }

    /// Whether `presented` is the token of sandbox `id`.
    pub(crate) fn verify(&self, kind: TokenKind, id: &str, r: &TokenRef, presented: &str) -> bool {
        match r {
            TokenRef::Derived(g) => same_secret(&self.derive(kind, id, *g), presented),
            TokenRef::Legacy(h) => same_secret(h, &sha256_hex(presented)),
        }
    }
}

/// Compares secrets in time independent of where they differ.
pub fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_compare_whole() {
        assert!(same_secret("abc", "abc"));
        assert!(!same_secret("abc", "abd"));
        assert!(!same_secret("abc", "abcd"));
    }

    #[test]
    fn tokens_are_derived_per_kind_id_and_generation_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        let k = Keyring::load_or_create(&path).unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let g0 = TokenRef::Derived(0);
        let a = k.token(TokenKind::Access, "abc", &g0).unwrap();
        assert_eq!(a.len(), 48);
        assert!(k.verify(TokenKind::Access, "abc", &g0, &a));
        assert!(!k.verify(TokenKind::Traffic, "abc", &g0, &a));
        assert!(!k.verify(TokenKind::Access, "abd", &g0, &a));
        assert!(!k.verify(TokenKind::Access, "abc", &TokenRef::Derived(1), &a));
        // The same key gives the same tokens after a restart.
        let again = Keyring::load_or_create(&path).unwrap();
        assert_eq!(again.token(TokenKind::Access, "abc", &g0).unwrap(), a);
        // An old store's plain token: checked by its hash, never shown.
        let legacy = TokenRef::from_column("old-plain-token");
        assert!(k.verify(TokenKind::Access, "abc", &legacy, "old-plain-token"));
        assert_eq!(k.token(TokenKind::Access, "abc", &legacy), None);
        assert_eq!(TokenRef::from_column(&legacy.to_column()), legacy);
        assert_eq!(TokenRef::from_column("g7"), TokenRef::Derived(7));
    }
}
