//! Certificates and keys for a test control plane: a CA, the apiserver's
//! serving certificate, an admin client certificate and the service-account
//! signing key, written as PEM files.

use std::fs;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use anyhow::Result;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

/// Paths of the PEM files for one control plane.
#[derive(Debug, Clone)]
pub struct Pki {
    /// CA certificate that signs the serving and client certificates.
    pub ca_cert: PathBuf,
    /// Key of `ca_cert`, to sign more client certificates ([`Pki::client_cert`]).
    pub ca_key: PathBuf,
    /// kube-apiserver's serving certificate and key.
    pub serving_cert: PathBuf,
    /// Key of `serving_cert`.
    pub serving_key: PathBuf,
    /// Admin client certificate (CN=admin, O=system:masters).
    pub admin_cert: PathBuf,
    /// Key of `admin_cert`.
    pub admin_key: PathBuf,
    /// Service-account token signing key.
    pub service_account_key: PathBuf,
    /// Public half of `service_account_key`, which verifies the tokens.
    pub service_account_pub: PathBuf,
}

impl Pki {
    /// Generates everything into `dir`.
    pub fn generate(dir: &Path) -> Result<Self> {
        fs::create_dir_all(dir)?;
        let ca_key = KeyPair::generate()?;
        let ca_key_pem = ca_key.serialize_pem();
        let ca = CertifiedIssuer::self_signed(ca_params()?, ca_key)?;

        let serving_key = KeyPair::generate()?;
        let mut serving = CertificateParams::new(vec![
            "localhost".to_owned(),
            "kubernetes".to_owned(),
            "kubernetes.default".to_owned(),
            "kubernetes.default.svc".to_owned(),
        ])?;
        serving
            .subject_alt_names
            .push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        serving.distinguished_name.push(DnType::CommonName, "kube-apiserver");
        serving.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let serving_cert = serving.signed_by(&serving_key, &ca)?;

        let admin_key = KeyPair::generate()?;
        let mut admin = CertificateParams::new(Vec::<String>::new())?;
        admin.distinguished_name.push(DnType::CommonName, "admin");
        admin
            .distinguished_name
            .push(DnType::OrganizationName, "system:masters");
        admin.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let admin_cert = admin.signed_by(&admin_key, &ca)?;

        let sa_key = KeyPair::generate()?;

        let pki = Self {
            ca_cert: dir.join("ca.crt"),
            ca_key: dir.join("ca.key"),
            serving_cert: dir.join("apiserver.crt"),
            serving_key: dir.join("apiserver.key"),
            admin_cert: dir.join("admin.crt"),
            admin_key: dir.join("admin.key"),
            service_account_key: dir.join("sa.key"),
            service_account_pub: dir.join("sa.pub"),
        };
        fs::write(&pki.ca_cert, ca.pem())?;
        fs::write(&pki.ca_key, ca_key_pem)?;
        fs::write(&pki.serving_cert, serving_cert.pem())?;
        fs::write(&pki.serving_key, serving_key.serialize_pem())?;
        fs::write(&pki.admin_cert, admin_cert.pem())?;
        fs::write(&pki.admin_key, admin_key.serialize_pem())?;
        fs::write(&pki.service_account_key, sa_key.serialize_pem())?;
        fs::write(&pki.service_account_pub, sa_key.public_key_pem())?;
        Ok(pki)
    }

    /// A client certificate of this CA for user `name` in `groups` (its O fields), written as
    /// NAME.crt and NAME.key into `dir`.
    pub fn client_cert(&self, dir: &Path, name: &str, groups: &[&str]) -> Result<(PathBuf, PathBuf)> {
        let ca = Issuer::new(ca_params()?, KeyPair::from_pem(&fs::read_to_string(&self.ca_key)?)?);
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, name);
        for group in groups {
            params.distinguished_name.push(DnType::OrganizationName, *group);
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params.signed_by(&key, &ca)?;
        let paths = (dir.join(format!("{name}.crt")), dir.join(format!("{name}.key")));
        fs::write(&paths.0, cert.pem())?;
        fs::write(&paths.1, key.serialize_pem())?;
        Ok(paths)
    }
}

/// The CA's parameters: the same each time, so an [`Issuer`] made again from them and the key
/// signs certificates that chain to the CA written at [`Pki::generate`].
fn ca_params() -> Result<CertificateParams> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name.push(DnType::CommonName, "hawser-testbed-ca");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    Ok(params)
}
