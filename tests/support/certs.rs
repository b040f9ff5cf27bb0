//! A throwaway certificate authority (rcgen) issuing server certificates for 127.0.0.1 and
//! localhost, and a rustls client that trusts only it, to see which certificate and ALPN
//! protocol a TLS listener really serves.
//!
//! Files live in the CA's temp dir: `ca.crt` (what `skopeo --src-cert-dir` and
//! `curl --cacert` want) and the server certificates the tests hand to the mirror.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls::pki_types::{CertificateDer, ServerName};

/// The CA; its certificate is in `dir/ca.crt`.
pub struct TestCa {
    pub dir: tempfile::TempDir,
    cert: rcgen::Certificate,
    key: KeyPair,
}

/// One issued server certificate, as files and as DER for comparisons.
pub struct ServerCert {
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
    pub der: Vec<u8>,
}

fn name(common: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common);
    dn
}

impl TestCa {
    pub fn new() -> TestCa {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name = name("regmirror test CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key).unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.crt"), cert.pem()).unwrap();
        TestCa { dir, cert, key }
    }

    /// The directory holding `ca.crt` (skopeo's `--src-cert-dir`).
    pub fn cert_dir(&self) -> &Path {
        self.dir.path()
    }

    /// `ca.crt`, for `curl --cacert`.
    pub fn ca_path(&self) -> PathBuf {
        self.dir.path().join("ca.crt")
    }

    pub fn ca_der(&self) -> Vec<u8> {
        self.cert.der().to_vec()
    }

    /// Issues a certificate for 127.0.0.1 and localhost with `serial`, written to
    /// `server.crt`/`server.key` in the CA's dir (replacing the previous ones: key first, then
    /// certificate, each by rename, so a reader never sees half a file).
    pub fn issue(&self, serial: u64) -> ServerCert {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        params
            .subject_alt_names
            .push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        params.distinguished_name = name(&format!("regmirror test server {serial}"));
        params.serial_number = Some(SerialNumber::from(serial));
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        let cert_path = self.dir.path().join("server.pem");
        let key_path = self.dir.path().join("server-key.pem");
        replace(&key_path, key.serialize_pem().as_bytes());
        replace(&cert_path, cert.pem().as_bytes());
        ServerCert {
            cert_path,
            key_path,
            der: cert.der().to_vec(),
        }
    }

    /// A TLS client trusting only this CA, offering `alpn` (e.g. `[b"h2"]`).
    pub async fn connect(
        &self,
        addr: SocketAddr,
        alpn: &[&[u8]],
    ) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(CertificateDer::from(self.ca_der())).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let server = ServerName::try_from("localhost").unwrap();
        connector
            .connect(server, tcp)
            .await
            .expect("TLS handshake with the mirror")
    }
}

/// The DER of the certificate the server presented on `tls`.
pub fn peer_cert(tls: &tokio_rustls::client::TlsStream<tokio::net::TcpStream>) -> Vec<u8> {
    let (_, conn) = tls.get_ref();
    conn.peer_certificates().expect("server sent certificates")[0].to_vec()
}

fn replace(path: &Path, bytes: &[u8]) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}
