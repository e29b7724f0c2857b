//! The one source of randomness for ids, tokens and keys: the kernel's CSPRNG through
//! getrandom(2), which needs no file descriptor and fails instead of returning
//! predictable bytes. A caller that cannot get randomness fails its operation: an id or
//! a credential is never made from anything weaker.

/// The kernel would not give random bytes.
#[derive(Debug, Clone, thiserror::Error)]
#[error("the kernel's random number generator failed: {0}")]
pub struct RandomError(String);

/// `n` random bytes.
pub fn bytes(n: usize) -> Result<Vec<u8>, RandomError> {
    let mut b = vec![0u8; n];
    getrandom::fill(&mut b).map_err(|e| RandomError(e.to_string()))?;
    Ok(b)
}

/// `n` random bytes as `2n` lowercase hex digits.
pub fn hex(n: usize) -> Result<String, RandomError> {
    Ok(to_hex(&bytes(n)?))
}

/// Lowercase hex of `b`.
pub fn to_hex(b: &[u8]) -> String {
    use std::fmt::Write;
    b.iter()
        .fold(String::with_capacity(b.len() * 2), |mut s, x| {
            let _ = write!(s, "{x:02x}");
            s
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_is_fresh_and_sized() {
        let (a, b) = (hex(16).unwrap(), hex(16).unwrap());
        assert_eq!(a.len(), 32);
        assert_ne!(a, b);
        assert!(a
            .bytes()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
    }
}
