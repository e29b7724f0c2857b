//! TLS for the E2B listener: the operator's certificate and key, or a self-signed pair
//! made once for trying it out.
//!
//! E2B's SDKs build `https://api.DOMAIN`, `https://49983-ID.DOMAIN` (envd) and
//! `https://PORT-ID.DOMAIN` (a sandbox's ports) from `E2B_DOMAIN`: one listener serves
//! them all by `Host`, so one certificate for `DOMAIN` and `*.DOMAIN` covers them.

use std::io;
use std::path::Path;
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls;

/// The server side of TLS from PEM files: the chain (leaf first) and its private key.
pub fn server_config(cert: &Path, key: &Path) -> io::Result<Arc<rustls::ServerConfig>> {
    let bad = |what: &str, p: &Path, e: &dyn std::fmt::Display| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("TLS {what} {}: {e}", p.display()),
        )
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| bad("certificate", cert, &e))?
        .collect::<Result<_, _>>()
        .map_err(|e| bad("certificate", cert, &e))?;
    if chain.is_empty() {
        return Err(bad("certificate", cert, &"no CERTIFICATE block in it"));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| bad("key", key, &e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(io::Error::other)?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("TLS certificate and key do not go together: {e}"),
            )
        })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A self-signed certificate for `domain` and `*.domain` (and localhost), written to
/// `dir` as `cert.pem` and `key.pem` the first time and kept: clients trust `cert.pem`
/// (`SSL_CERT_FILE`, `NODE_EXTRA_CA_CERTS`). Returns the two paths.
pub fn self_signed(
    dir: &Path,
    domain: &str,
) -> io::Result<(std::path::PathBuf, std::path::PathBuf)> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let names_file = dir.join("names");
    let names = vec![
        domain.to_string(),
        format!("*.{domain}"),
        "localhost".to_string(),
    ];
    let want = names.join("\n");
    if cert.exists()
        && key.exists()
        && std::fs::read_to_string(&names_file).is_ok_and(|n| n == want)
    {
        return Ok((cert, key));
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let made = rcgen::generate_simple_self_signed(names)
        .map_err(|e| io::Error::other(format!("make a self-signed certificate: {e}")))?;
    let write = |p: &Path, data: &str, mode: u32| -> io::Result<()> {
        let tmp = p.with_extension("tmp");
        let _ = std::fs::remove_file(&tmp);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        io::Write::write_all(&mut f, data.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, p)
    };
    write(&key, &made.key_pair.serialize_pem(), 0o600)?;
    write(&cert, &made.cert.pem(), 0o644)?;
    write(&names_file, &want, 0o644)?;
    Ok((cert, key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_self_signed_pair_is_made_once_and_loads() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = self_signed(dir.path(), "warren.test").unwrap();
        let first = std::fs::read(&cert).unwrap();
        server_config(&cert, &key).unwrap();
        let (cert2, _) = self_signed(dir.path(), "warren.test").unwrap();
        assert_eq!(std::fs::read(cert2).unwrap(), first, "kept, not made again");
        // Another domain makes another certificate.
        let (cert3, _) = self_signed(dir.path(), "other.test").unwrap();
        assert_ne!(std::fs::read(cert3).unwrap(), first);
    }

    #[test]
    fn a_key_that_is_not_the_certificates_is_refused() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let (cert, _) = self_signed(a.path(), "a.test").unwrap();
        let (_, key) = self_signed(b.path(), "b.test").unwrap();
        let e = server_config(&cert, &key).unwrap_err().to_string();
        assert!(e.contains("do not go together"), "{e}");
        let e = server_config(&key, &key).unwrap_err().to_string();
        assert!(e.contains("certificate"), "{e}");
    }
}
