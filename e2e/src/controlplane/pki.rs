//! Throw-away certificates and keys for one test control plane.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};

/// Paths of the files [`write`] creates under a cluster's `pki/` directory.
#[derive(Debug, Clone)]
pub struct Pki {
    /// CA that signs the serving certificate and every client certificate.
    pub ca_cert: PathBuf,
    /// kube-apiserver's serving certificate (SANs 127.0.0.1, localhost, kubernetes.default...).
    pub server_cert: PathBuf,
    /// Key of [`Pki::server_cert`].
    pub server_key: PathBuf,
    /// Client certificate of the cluster admin (`O=system:masters`).
    pub admin_cert: PathBuf,
    /// Key of [`Pki::admin_cert`].
    pub admin_key: PathBuf,
    /// Private key that signs service-account tokens.
    pub sa_key: PathBuf,
    /// Public half of [`Pki::sa_key`], used to verify service-account tokens.
    pub sa_pub: PathBuf,
}

/// Creates a CA, a serving certificate, an admin client certificate and a service-account key
/// pair under `dir`.
pub fn write(dir: &Path, cluster: &str) -> Result<Pki> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let pki = Pki {
        ca_cert: dir.join("ca.crt"),
        server_cert: dir.join("apiserver.crt"),
        server_key: dir.join("apiserver.key"),
        admin_cert: dir.join("admin.crt"),
        admin_key: dir.join("admin.key"),
        sa_key: dir.join("sa.key"),
        sa_pub: dir.join("sa.pub"),
    };

    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::default();
    ca.distinguished_name = name(&format!("flotilla-e2e {cluster} CA"), None);
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca, ca_key);
    save(&pki.ca_cert, &ca_cert.pem())?;

    let server_key = KeyPair::generate()?;
    let mut server = CertificateParams::new(vec![
        "127.0.0.1".to_string(),
        "localhost".to_string(),
        "kubernetes".to_string(),
        "kubernetes.default".to_string(),
        "kubernetes.default.svc".to_string(),
        "10.0.0.1".to_string(),
    ])?;
    server.distinguished_name = name("kube-apiserver", None);
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    save(
        &pki.server_cert,
        &server.signed_by(&server_key, &issuer)?.pem(),
    )?;
    save(&pki.server_key, &server_key.serialize_pem())?;

    let admin_key = KeyPair::generate()?;
    let mut admin = CertificateParams::default();
    admin.distinguished_name = name("flotilla-e2e-admin", Some("system:masters"));
    admin.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    save(
        &pki.admin_cert,
        &admin.signed_by(&admin_key, &issuer)?.pem(),
    )?;
    save(&pki.admin_key, &admin_key.serialize_pem())?;

    let sa = KeyPair::generate()?;
    save(&pki.sa_key, &sa.serialize_pem())?;
    save(&pki.sa_pub, &sa.public_key_pem())?;
    Ok(pki)
}

fn name(common: &str, organization: Option<&str>) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common);
    if let Some(o) = organization {
        dn.push(DnType::OrganizationName, o);
    }
    dn
}

fn save(path: &Path, pem: &str) -> Result<()> {
    std::fs::write(path, pem).with_context(|| format!("writing {}", path.display()))
}

/// Writes a kubeconfig for the admin identity that talks to `https://127.0.0.1:port`.
pub fn write_kubeconfig(path: &Path, cluster: &str, port: u16, pki: &Pki) -> Result<()> {
    let yaml = format!(
        "apiVersion: v1
kind: Config
clusters:
- name: {cluster}
  cluster:
    server: https://127.0.0.1:{port}
    certificate-authority: {ca}
users:
- name: {cluster}-admin
  user:
    client-certificate: {cert}
    client-key: {key}
contexts:
- name: {cluster}
  context:
    cluster: {cluster}
    user: {cluster}-admin
current-context: {cluster}
",
        ca = pki.ca_cert.display(),
        cert = pki.admin_cert.display(),
        key = pki.admin_key.display(),
    );
    save(path, &yaml)
}
