//! A test CA and the certificates it signs, written as PEM files into a
//! temporary directory that goes with the value.

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};

/// A CA (`ca.pem`) and what it issues.
pub struct Pki {
    dir: tempfile::TempDir,
    issuer: Issuer<'static, KeyPair>,
}

impl Pki {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap_or_else(|error| panic!("no temp dir: {error}"));
        let key = KeyPair::generate().unwrap_or_else(|error| panic!("no CA key: {error}"));
        let mut params = CertificateParams::new(Vec::<String>::new())
            .unwrap_or_else(|error| panic!("CA parameters: {error}"));
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let certificate = params
            .self_signed(&key)
            .unwrap_or_else(|error| panic!("CA certificate: {error}"));
        let pki = Self {
            dir,
            issuer: Issuer::new(params, key),
        };
        pki.write("ca.pem", certificate.pem());
        pki
    }

    /// A file of the PKI's directory (`ca.pem`, `<name>.pem`, `<name>.key`).
    pub fn path(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join(name)
    }

    /// The directory itself (a test may put its server's config beside).
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// `<name>.pem` and `<name>.key` for `subject_alt_names` (IP addresses
    /// or DNS names), with a CN and an OU (which flotilla reads as a role).
    pub fn issue(&self, name: &str, subject_alt_names: &[&str], cn: &str, ou: &str) {
        let key = KeyPair::generate().unwrap_or_else(|error| panic!("no key: {error}"));
        let names: Vec<String> = subject_alt_names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names)
            .unwrap_or_else(|error| panic!("certificate parameters: {error}"));
        params.distinguished_name.push(DnType::CommonName, cn);
        params
            .distinguished_name
            .push(DnType::OrganizationalUnitName, ou);
        let certificate = params
            .signed_by(&key, &self.issuer)
            .unwrap_or_else(|error| panic!("signing {name}: {error}"));
        self.write(&format!("{name}.pem"), certificate.pem());
        self.write(&format!("{name}.key"), key.serialize_pem());
    }

    /// `server.pem` and `server.key` for 127.0.0.1.
    pub fn issue_loopback_server(&self) {
        self.issue("server", &["127.0.0.1"], "127.0.0.1", "server");
    }

    fn write(&self, name: &str, text: String) {
        std::fs::write(self.path(name), text)
            .unwrap_or_else(|error| panic!("writing {name}: {error}"));
    }
}

impl Default for Pki {
    fn default() -> Self {
        Self::new()
    }
}
