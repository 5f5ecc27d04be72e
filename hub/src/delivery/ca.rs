//! The hub's certificate authority: it signs the hub's server certificate and one client
//! certificate per registered cluster, naming the cluster in a URI subject alternative name.

use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls_pki_types::{CertificateDer, CertificateSigningRequestDer};

/// The URI prefix of the subject alternative name that names a cluster in a client certificate.
pub const CLUSTER_URI_PREFIX: &str = "urn:flotilla:cluster:";

/// Errors of the certificate authority.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// rcgen could not build or sign a certificate.
    #[error("issuing a certificate for {subject}")]
    Issue {
        /// What the certificate was for.
        subject: String,
        /// Why.
        #[source]
        source: rcgen::Error,
    },
    /// The certificate signing request is not valid DER or its signature does not hold.
    #[error("invalid certificate signing request from cluster {cluster}")]
    InvalidCsr {
        /// The cluster that sent it.
        cluster: String,
        /// Why.
        #[source]
        source: rcgen::Error,
    },
    /// A cluster id that cannot be put in a certificate.
    #[error("invalid cluster id {cluster:?}: use lowercase letters, digits, '-' and '.'")]
    InvalidClusterId {
        /// The id.
        cluster: String,
    },
    /// A client certificate that does not name a cluster.
    #[error("client certificate names no flotilla cluster")]
    NoClusterInCertificate,
    /// Bytes that should be a certificate are not one.
    #[error("unparsable certificate")]
    BadCertificate,
}

/// A convenient result type for this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Checks that a cluster id is safe to put in a URI and a common name.
pub fn validate_cluster_id(cluster: &str) -> Result<()> {
    let ok = !cluster.is_empty()
        && cluster.len() <= 253
        && cluster
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidClusterId {
            cluster: cluster.to_owned(),
        })
    }
}

/// The cluster a client certificate (DER) names.
pub fn cluster_from_cert(der: &[u8]) -> Result<String> {
    use x509_parser::prelude::{FromDer as _, GeneralName, X509Certificate};
    let (_, cert) = X509Certificate::from_der(der).map_err(|_| Error::BadCertificate)?;
    let san = cert
        .subject_alternative_name()
        .map_err(|_| Error::BadCertificate)?
        .ok_or(Error::NoClusterInCertificate)?;
    san.value
        .general_names
        .iter()
        .find_map(|n| match n {
            GeneralName::URI(uri) => uri.strip_prefix(CLUSTER_URI_PREFIX).map(str::to_owned),
            _ => None,
        })
        .ok_or(Error::NoClusterInCertificate)
}

/// A certificate and its private key, both PEM. `Debug` hides the key.
#[derive(Clone)]
pub struct PemIdentity {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// The private key, PEM (PKCS#8). Never log it.
    pub key_pem: String,
}

impl std::fmt::Debug for PemIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PemIdentity")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"***")
            .finish()
    }
}

/// The hub CA.
pub struct HubCa {
    issuer: Issuer<'static, KeyPair>,
    key_pem: String,
    cert_der: CertificateDer<'static>,
    cert_pem: String,
}

impl std::fmt::Debug for HubCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HubCa").finish_non_exhaustive()
    }
}

fn random_serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    // A failing OS generator leaves zeros; rcgen still produces a valid, if less unique, serial.
    let _ = getrandom::getrandom(&mut bytes);
    bytes[0] &= 0x7f;
    SerialNumber::from_slice(&bytes)
}

fn validity(params: &mut CertificateParams, not_before: SystemTime, ttl: Duration) {
    params.not_before = time::OffsetDateTime::from(not_before);
    params.not_after = time::OffsetDateTime::from(not_before + ttl);
}

impl HubCa {
    /// A new CA with a fresh ECDSA P-256 key, valid for ten years.
    pub fn generate(name: &str) -> Result<Self> {
        let issue = |source| Error::Issue {
            subject: name.to_owned(),
            source,
        };
        let key = KeyPair::generate().map_err(issue)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.serial_number = Some(random_serial());
        validity(
            &mut params,
            SystemTime::now() - Duration::from_secs(3600),
            Duration::from_secs(10 * 365 * 24 * 3600),
        );
        let cert = params.self_signed(&key).map_err(issue)?;
        Ok(Self {
            cert_pem: cert.pem(),
            cert_der: cert.der().clone(),
            key_pem: key.serialize_pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// The CA kept earlier with [`HubCa::cert_pem`] and [`HubCa::key_pem`] (e.g. in a Secret),
    /// so agents registered before a hub restart stay trusted.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self> {
        let load = |source| Error::Issue {
            subject: "the stored hub CA".into(),
            source,
        };
        let key = KeyPair::from_pem(key_pem).map_err(load)?;
        let cert_der = {
            use rustls_pki_types::pem::PemObject as _;
            CertificateDer::from_pem_slice(cert_pem.as_bytes())
                .map_err(|_| Error::BadCertificate)?
                .into_owned()
        };
        let issuer = Issuer::from_ca_cert_der(&cert_der, key).map_err(load)?;
        Ok(Self {
            issuer,
            key_pem: key_pem.to_owned(),
            cert_der,
            cert_pem: cert_pem.to_owned(),
        })
    }

    /// The CA's private key, PEM, for keeping it in a Secret. Never log it.
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// The CA certificate, PEM: what agents and the hub trust.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA certificate, DER.
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// A server certificate for the hub's listeners, valid for `names` (DNS names or IPs).
    pub fn issue_server(&self, names: &[String], ttl: Duration) -> Result<PemIdentity> {
        let issue = |source| Error::Issue {
            subject: format!("hub server {names:?}"),
            source,
        };
        let key = KeyPair::generate().map_err(issue)?;
        let mut params = CertificateParams::new(names.to_vec()).map_err(issue)?;
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, "flotilla-hub");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.serial_number = Some(random_serial());
        validity(
            &mut params,
            SystemTime::now() - Duration::from_secs(60),
            ttl,
        );
        let cert = params.signed_by(&key, &self.issuer).map_err(issue)?;
        Ok(PemIdentity {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Signs a client certificate for `cluster` over the public key in `csr_der`, valid from
    /// `not_before` for `ttl`. Only the CSR's key is used: subject and names come from the hub.
    pub fn issue_client(
        &self,
        cluster: &str,
        csr_der: &[u8],
        not_before: SystemTime,
        ttl: Duration,
    ) -> Result<CertificateDer<'static>> {
        validate_cluster_id(cluster)?;
        let csr = parse_csr(cluster, csr_der)?;
        let issue = |source| Error::Issue {
            subject: format!("cluster {cluster}"),
            source,
        };
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, cluster);
        params.subject_alt_names = vec![SanType::URI(
            format!("{CLUSTER_URI_PREFIX}{cluster}")
                .try_into()
                .map_err(issue)?,
        )];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.serial_number = Some(random_serial());
        validity(&mut params, not_before, ttl);
        let cert = params
            .signed_by(&csr.public_key, &self.issuer)
            .map_err(issue)?;
        Ok(cert.der().clone())
    }
}

/// Parses and checks a CSR (its self-signature proves possession of the key).
pub fn parse_csr(cluster: &str, csr_der: &[u8]) -> Result<CertificateSigningRequestParams> {
    CertificateSigningRequestParams::from_der(&CertificateSigningRequestDer::from(csr_der)).map_err(
        |source| Error::InvalidCsr {
            cluster: cluster.to_owned(),
            source,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_certificate_names_the_cluster_not_what_the_csr_asks() {
        let ca = HubCa::generate("test ca").unwrap();
        let key = KeyPair::generate().unwrap();
        let mut asked = CertificateParams::new(vec!["evil.example".to_owned()]).unwrap();
        asked
            .distinguished_name
            .push(DnType::CommonName, "other-cluster");
        let csr = asked.serialize_request(&key).unwrap();
        let cert = ca
            .issue_client(
                "eu-1",
                csr.der(),
                SystemTime::now(),
                Duration::from_secs(60),
            )
            .unwrap();
        assert_eq!(cluster_from_cert(&cert).unwrap(), "eu-1");
        assert!(
            ca.issue_client(
                "EU 1",
                csr.der(),
                SystemTime::now(),
                Duration::from_secs(60)
            )
            .is_err()
        );
        assert!(matches!(
            ca.issue_client("eu-1", b"junk", SystemTime::now(), Duration::from_secs(60)),
            Err(Error::InvalidCsr { .. })
        ));
    }
}
