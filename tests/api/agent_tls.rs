//! `ferrocd agent` over TLS, as a real process: the server speaks plain HTTP behind a TLS
//! proxy (as behind Caddy or nginx, README "TLS"); the agent reaches it at
//! `https://localhost:PORT`, trusting a private CA named with `--ca-cert`. A certificate it
//! does not trust, a URL it cannot use and a CA file it cannot read end it at start with the
//! reason, instead of a retry that never ends.
//!
//! The CA and the server certificate are made here with rcgen; the proxy is tokio-rustls
//! forwarding bytes to the test server's plain port.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::json;
use tempfile::TempDir;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

use crate::agent_runtime::{AgentProcess, KEY, completed, registered_enabled};
use crate::helpers::{TestApp, eventually, spawn_app_with};

/// A private CA and a certificate it signed for `localhost` and 127.0.0.1.
struct PrivateCa {
    ca_pem: String,
    server_cert: CertificateDer<'static>,
    server_key: PrivateKeyDer<'static>,
}

impl PrivateCa {
    fn new() -> PrivateCa {
        let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "ferrocd test CA");
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().expect("CA key"))
            .expect("the CA certificate");

        let mut server = CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])
            .expect("server params");
        server
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate().expect("server key");
        let cert = server.signed_by(&key, &ca).expect("the server certificate");
        PrivateCa {
            ca_pem: ca.pem(),
            server_cert: cert.der().clone(),
            server_key: PrivatePkcs8KeyDer::from(key.serialize_der()).into(),
        }
    }

    /// Writes the CA certificate as a PEM file in `dir`.
    fn write_ca(&self, dir: &Path) -> PathBuf {
        let path = dir.join("ca.pem");
        std::fs::write(&path, &self.ca_pem).expect("ca.pem");
        path
    }
}

/// Terminates TLS with the CA's server certificate on a free loopback port and forwards the
/// bytes to `backend`; returns the port. Runs until the test's runtime ends.
async fn tls_proxy(ca: &PrivateCa, backend: SocketAddr) -> u16 {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(vec![ca.server_cert.clone()], ca.server_key.clone_key())
        .expect("the server certificate and key");
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("a free port");
    let port = listener.local_addr().expect("the port").port();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                // A client that does not trust the certificate ends the handshake: then
                // there is nothing to forward.
                let Ok(mut tls) = acceptor.accept(client).await else {
                    return;
                };
                let Ok(mut server) = TcpStream::connect(backend).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut server).await;
            });
        }
    });
    port
}

/// The test server's plain-HTTP address.
fn plain_address(app: &TestApp) -> SocketAddr {
    app.base
        .strip_prefix("http://")
        .and_then(|address| address.parse().ok())
        .unwrap_or_else(|| panic!("a plain-HTTP test server, got {}", app.base))
}

/// A server with the registration key, behind a TLS proxy: the server, the CA, the https URL.
async fn server_behind_tls() -> (TestApp, PrivateCa, String) {
    let app = spawn_app_with(|c| c.agent_registration_key = Some(KEY.into())).await;
    let ca = PrivateCa::new();
    let port = tls_proxy(&ca, plain_address(&app)).await;
    (app, ca, format!("https://localhost:{port}"))
}

/// Waits for the agent to exit by itself and returns its status.
async fn exit_status(agent: &mut AgentProcess) -> std::process::ExitStatus {
    eventually("the agent exits by itself", || {
        let status = agent.exited();
        async move { status }
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_trusting_the_private_ca_runs_a_job_over_https() {
    let (app, ca, url) = server_behind_tls().await;
    let files = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let logs = tempfile::tempdir().unwrap();
    let mut command = AgentProcess::command(&url, work.path());
    command
        .arg("--ca-cert")
        .arg(ca.write_ca(files.path()))
        .arg("--registration-key")
        .arg(KEY);
    let agent = AgentProcess::spawn(command, work.path(), &logs);

    let uuid = registered_enabled(&app, &agent).await;

    let script = r#"echo "over TLS"; echo "$GO_SERVER_URL""#;
    let build_id = app
        .schedule_ok(
            json!({"pipeline_name": "tls", "stage_name": "s", "job_name": "j",
               "tasks": [{"command": "sh", "args": ["-c", script]}], "resources": []}),
        )
        .await;
    let run = completed(&app, build_id).await;
    assert_eq!(run["result"], "Passed", "{run}");
    assert_eq!(run["agent_uuid"], uuid.as_str(), "{run}");
    let stored = String::from_utf8(app.console(build_id, Some(0)).await.0).unwrap();
    assert_eq!(
        stored,
        format!(
            "[ferrocd] Task: sh -c '{script}'\nover TLS\n{url}/go\n[ferrocd] Job completed: Passed\n"
        )
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn without_the_ca_the_agent_stops_at_start_naming_the_certificate() {
    let (app, _ca, url) = server_behind_tls().await;
    let work = tempfile::tempdir().unwrap();
    let logs = tempfile::tempdir().unwrap();
    let mut command = AgentProcess::command(&url, work.path());
    command.arg("--registration-key").arg(KEY);
    let mut agent = AgentProcess::spawn(command, work.path(), &logs);

    let status = exit_status(&mut agent).await;
    let log = agent.log();
    assert!(!status.success(), "{status:?}: {log}");
    assert!(log.contains("invalid peer certificate"), "{log}");
    assert!(log.contains("--ca-cert"), "the way out is named: {log}");
    assert_eq!(agent.identity(), None, "{log}");
    assert!(app.agent_uuids().await.is_empty(), "nothing registered");
}

/// Starts an agent with `args` that must stop at once; returns its log.
async fn refused_at_start(server: &str, args: &[&std::ffi::OsStr]) -> String {
    let scratch = tempfile::tempdir().unwrap();
    let logs: TempDir = tempfile::tempdir().unwrap();
    // Not created yet: a bad URL or CA file stops the agent before it touches its work dir.
    let work = scratch.path().join("agent");
    let mut command = AgentProcess::command(server, &work);
    command.args(args);
    let mut agent = AgentProcess::spawn(command, &work, &logs);
    let status = exit_status(&mut agent).await;
    let log = agent.log();
    assert!(!status.success(), "{server} {args:?}: {status:?}: {log}");
    assert!(
        !work.exists(),
        "{server} {args:?}: the work dir was created: {log}"
    );
    log
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_url_or_ca_file_the_agent_cannot_use_stops_it_at_start() {
    let log = refused_at_start("ftp://localhost:2121", &[]).await;
    assert!(log.contains("ferrocd: "), "{log}");
    assert!(log.contains("not ftp://"), "{log}");

    let log = refused_at_start("garbage", &[]).await;
    assert!(log.contains("--server \"garbage\" is not a URL"), "{log}");

    let files = tempfile::tempdir().unwrap();
    let missing = files.path().join("missing-ca.pem");
    let log = refused_at_start(
        "https://localhost:1",
        &["--ca-cert".as_ref(), missing.as_os_str()],
    )
    .await;
    assert!(
        log.contains(&format!("--ca-cert {}", missing.display())),
        "{log}"
    );

    let not_pem = files.path().join("not-a-ca.pem");
    std::fs::write(&not_pem, "this is no certificate\n").unwrap();
    let log = refused_at_start(
        "https://localhost:1",
        &["--ca-cert".as_ref(), not_pem.as_os_str()],
    )
    .await;
    assert!(log.contains("holds no PEM certificate"), "{log}");
}
