//! The server's certificate: given (`--tls-cert/--tls-key`), or self-signed on first start
//! and kept in `DATA/tls/`. Clients trust a self-signed certificate explicitly with
//! `--cacert DATA/tls/cert.pem` (copied to them) after comparing its fingerprint; nothing
//! ever accepts any certificate silently.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::{Result, ServerError};

/// A loaded certificate and what to tell the admin about it.
pub struct Loaded {
    pub config: Arc<rustls::ServerConfig>,
    pub cert_path: PathBuf,
    /// SHA-256 of the leaf certificate (DER), as `AA:BB:...`.
    pub fingerprint: String,
    /// base64 of the SHA-256 of the key's SubjectPublicKeyInfo: the public key pin, as
    /// `chromium --ignore-certificate-errors-spki-list` and HPKP-style checks take it.
    pub spki_pin: Option<String>,
    pub generated: bool,
}

/// The public key pin of a PEM private key (`None` for a key rcgen cannot read).
pub fn spki_pin(key_pem: &str) -> Option<String> {
    use base64::Engine;
    use rcgen::PublicKeyData;
    let kp = rcgen::KeyPair::from_pem(key_pem).ok()?;
    let d = ring::digest::digest(&ring::digest::SHA256, &kp.subject_public_key_info());
    Some(base64::engine::general_purpose::STANDARD.encode(d.as_ref()))
}

pub fn fingerprint(der: &[u8]) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, der);
    d.as_ref()
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn tls_err(what: impl std::fmt::Display) -> ServerError {
    ServerError::Tls(what.to_string())
}

/// Write the self-signed certificate for `names` into `dir` unless one is there.
pub fn ensure_self_signed(dir: &Path, names: &[String]) -> Result<bool> {
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    if cert.exists() && key.exists() {
        return Ok(false);
    }
    coffer_backends::create_dir_durable(dir).map_err(|e| tls_err(format!("{}: {e}", dir.display())))?;
    let mut all: Vec<String> = vec!["localhost".into(), "127.0.0.1".into(), "::1".into()];
    for n in names {
        if !all.contains(n) {
            all.push(n.clone());
        }
    }
    let ck = rcgen::generate_simple_self_signed(all).map_err(tls_err)?;
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&key)
        .map_err(|e| tls_err(format!("{}: {e}", key.display())))?;
    f.write_all(ck.signing_key.serialize_pem().as_bytes())
        .and_then(|_| f.sync_all())
        .map_err(|e| tls_err(format!("{}: {e}", key.display())))?;
    drop(f);
    // the certificate in one step, and the directory synced: both files survive a power cut
    // (clients were given this certificate: a new one after a cut would lock them all out)
    let _ = fs::remove_file(dir.join(".cert.pem.tmp"));
    coffer_backends::replace_file(&dir.join(".cert.pem.tmp"), &cert, ck.cert.pem().as_bytes())
        .map_err(|e| tls_err(format!("{}: {e}", cert.display())))?;
    Ok(true)
}

/// Load the certificate and key (generating a self-signed pair in `data/tls` if neither
/// path is given).
pub fn load(data: &Path, cert: Option<&Path>, key: Option<&Path>, names: &[String]) -> Result<Loaded> {
    let (cert_path, key_path, generated) = match (cert, key) {
        (Some(c), Some(k)) => (c.to_path_buf(), k.to_path_buf(), false),
        (None, None) => {
            let dir = data.join("tls");
            let g = ensure_self_signed(&dir, names)?;
            (dir.join("cert.pem"), dir.join("key.pem"), g)
        }
        _ => return Err(tls_err("give both --tls-cert and --tls-key, or neither")),
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert_path)
        .map_err(|e| tls_err(format!("{}: {e}", cert_path.display())))?
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| tls_err(format!("{}: {e}", cert_path.display())))?;
    let Some(leaf) = certs.first() else {
        return Err(tls_err(format!("{}: no certificate in it", cert_path.display())));
    };
    let fingerprint = fingerprint(leaf);
    let spki_pin = fs::read_to_string(&key_path).ok().and_then(|k| spki_pin(&k));
    let key = PrivateKeyDer::from_pem_file(&key_path)
        .map_err(|e| tls_err(format!("{}: {e}", key_path.display())))?;
    let mut config =
        rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(tls_err)?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|e| tls_err(format!("{}: {e}", cert_path.display())))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Loaded {
        config: Arc::new(config),
        cert_path,
        fingerprint,
        spki_pin,
        generated,
    })
}
