//! How the agent reaches its server safely: which `--server` URLs it accepts, and the TLS it
//! speaks for `https://` ones (the server itself speaks plain HTTP behind a TLS proxy, as
//! GoCD's does; see README, "TLS"). The agent's token, the commands it runs and the secrets in
//! a job's variables cross that connection, so a URL or a CA file the agent cannot use is an
//! error at start, and so is a certificate it does not trust: neither gets better by retrying.
//!
//! rustls with the `ring` provider, named here rather than installed process-wide (ring builds
//! with a C compiler alone; aws-lc-rs, reqwest's default, needs cmake and NASM). Trusted roots:
//! the system's (rustls-platform-verifier reads them from the OS store, e.g. Debian's
//! `ca-certificates`) plus the certificates of `--ca-cert FILE`, for a private CA.

use std::path::Path;
use std::sync::Arc;

use reqwest::Url;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use rustls::{ClientConfig, RootCertStore};

/// The `--server` URL as the agent will use it: `http` or `https`, with a host.
pub fn server_url(server: &str) -> Result<Url, String> {
    let url = Url::parse(server.trim_end_matches('/'))
        .map_err(|e| format!("--server {server:?} is not a URL ({e}): use https://HOST[:PORT]"))?;
    match url.scheme() {
        "http" | "https" => {}
        other => {
            return Err(format!(
                "--server {server:?}: the agent speaks http:// or https://, not {other}://"
            ));
        }
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!("--server {server:?} names no host"));
    }
    Ok(url)
}

/// Plain HTTP to anything but this machine sends the agent's token and every job's secrets
/// in the clear.
pub fn is_cleartext_over_a_network(url: &Url) -> bool {
    let host = url.host_str().unwrap_or_default();
    let loopback = host == "localhost"
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    url.scheme() == "http" && !loopback
}

/// The TLS settings of the agent's client: ring, the system's roots and those of `ca_cert`.
pub fn client_config(url: &Url, ca_cert: Option<&Path>) -> Result<ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let extra_roots = match ca_cert {
        Some(path) => read_ca_file(path)?,
        None => Vec::new(),
    };
    let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("the TLS provider cannot be used: {e}"))?;
    let builder = match rustls_platform_verifier::Verifier::new_with_extra_roots(
        extra_roots,
        provider,
    ) {
        // "dangerous" is only rustls's name for a verifier of one's own: this one checks
        // the chain and the host name against the roots, as the built-in one would.
        Ok(verifier) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier)),
        // Plain HTTP checks no certificate, so a machine without a CA store still works; a
        // redirect to https:// then fails as untrusted, which is what it is.
        Err(_) if url.scheme() == "http" => builder.with_root_certificates(RootCertStore::empty()),
        Err(e) => {
            return Err(format!(
                "cannot check the certificate of {url}: {e}. Install the system's CA certificates \
                 (Debian: ca-certificates) or name the server's CA with --ca-cert FILE"
            ));
        }
    };
    let mut config = builder.with_no_client_auth();
    // The agent's client speaks HTTP/1.1 only (reqwest without its http2 feature).
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// The CA certificates of a PEM file; each must be a certificate rustls can trust.
fn read_ca_file(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let shown = path.display();
    let bytes = std::fs::read(path).map_err(|e| format!("--ca-cert {shown}: {e}"))?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("--ca-cert {shown} is not a readable PEM file: {e}"))?;
    if certs.is_empty() {
        return Err(format!(
            "--ca-cert {shown} holds no PEM certificate (no \"-----BEGIN CERTIFICATE-----\")"
        ));
    }
    let mut check = RootCertStore::empty();
    for (n, cert) in certs.iter().enumerate() {
        check.add(cert.clone()).map_err(|e| {
            format!(
                "--ca-cert {shown}: certificate {} of {} cannot be used as a CA: {e}",
                n + 1,
                certs.len()
            )
        })?;
    }
    Ok(certs)
}

/// The TLS error behind a failed request, if the failure was TLS's (an untrusted or
/// mismatched certificate, a handshake the two sides cannot agree on, a plain-HTTP answer on
/// an `https://` URL), as text.
pub fn tls_failure(error: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut cause = Some(error);
    while let Some(current) = cause {
        if let Some(tls) = current.downcast_ref::<rustls::Error>() {
            return Some(tls.to_string());
        }
        cause = match current.downcast_ref::<std::io::Error>() {
            // tokio-rustls and hyper-rustls wrap rustls's error in io::Errors, whose
            // `source()` skips the error they wrap: `get_ref()` is that error.
            Some(io) => io
                .get_ref()
                .map(|inner| inner as &(dyn std::error::Error + 'static)),
            None => current.source(),
        };
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_http_and_https_urls_with_a_host_are_accepted() {
        assert!(server_url("https://ci.example.com").is_ok());
        assert!(server_url("http://127.0.0.1:8153/").is_ok());
        let ftp = server_url("ftp://ci.example.com").unwrap_err();
        assert!(ftp.contains("ftp://"), "{ftp}");
        let garbage = server_url("not a url").unwrap_err();
        assert!(garbage.contains("not a URL"), "{garbage}");
        assert!(server_url("https://").is_err());
    }

    #[test]
    fn plain_http_is_flagged_unless_it_stays_on_this_machine() {
        let flagged = |s: &str| is_cleartext_over_a_network(&server_url(s).unwrap());
        assert!(flagged("http://ci.example.com"));
        assert!(flagged("http://10.0.0.5:8153"));
        assert!(!flagged("http://127.0.0.1:8153"));
        assert!(!flagged("http://localhost:8153"));
        assert!(!flagged("http://[::1]:8153"));
        assert!(!flagged("https://ci.example.com"));
    }

    #[test]
    fn a_tls_error_is_found_inside_the_io_errors_that_carry_it() {
        let tls = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        let inner = std::io::Error::new(std::io::ErrorKind::InvalidData, tls);
        let outer = std::io::Error::other(inner);
        let found = tls_failure(&outer).expect("the TLS error");
        assert!(found.contains("UnknownIssuer"), "{found}");
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(tls_failure(&refused), None);
    }

    #[test]
    fn a_ca_file_must_exist_and_hold_pem_certificates() {
        let dir = tempfile::tempdir().unwrap();
        let url = server_url("https://ci.example.com").unwrap();
        let missing = dir.path().join("missing.pem");
        let error = client_config(&url, Some(&missing)).unwrap_err();
        assert!(error.contains("missing.pem"), "{error}");

        let not_pem = dir.path().join("not.pem");
        std::fs::write(&not_pem, "just some text\n").unwrap();
        let error = client_config(&url, Some(&not_pem)).unwrap_err();
        assert!(error.contains("no PEM certificate"), "{error}");

        let not_a_cert = dir.path().join("bad.pem");
        std::fs::write(
            &not_a_cert,
            "-----BEGIN CERTIFICATE-----\naGVsbG8=\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let error = client_config(&url, Some(&not_a_cert)).unwrap_err();
        assert!(error.contains("cannot be used as a CA"), "{error}");
    }
}
