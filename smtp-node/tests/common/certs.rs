//! Test certificates: a private CA and server certificates, written as PEM files.

use std::path::PathBuf;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};

pub struct Pki {
    dir: tempfile::TempDir,
    ca: CertifiedIssuer<'static, KeyPair>,
}

/// A certificate and its key, as files.
pub struct ServerCert {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Pki {
    pub fn new() -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "smtpfleet test CA");
        let ca =
            CertifiedIssuer::self_signed(params, KeyPair::generate().expect("ca key")).expect("ca");
        Self {
            dir: tempfile::tempdir().expect("tempdir"),
            ca,
        }
    }

    pub fn ca_file(&self) -> PathBuf {
        let path = self.dir.path().join("ca.pem");
        std::fs::write(&path, self.ca.as_ref().pem()).expect("write ca");
        path
    }

    /// A certificate for `name` issued by this CA.
    pub fn issue(&self, name: &str) -> ServerCert {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(vec![name.to_string()]).expect("params");
        // A random serial, so that reissued certificates can be told apart.
        let mut serial: [u8; 16] = rand::random();
        serial[0] &= 0x7f;
        params.serial_number = Some(rcgen::SerialNumber::from_slice(&serial));
        let cert = params.signed_by(&key, &self.ca).expect("sign");
        self.write(name, cert.pem(), key.serialize_pem())
    }

    /// A self-signed certificate for `name`, trusted by nobody.
    pub fn self_signed(&self, name: &str) -> ServerCert {
        let certified = rcgen::generate_simple_self_signed(vec![name.to_string()]).expect("cert");
        self.write(
            &format!("self-{name}"),
            certified.cert.pem(),
            certified.signing_key.serialize_pem(),
        )
    }

    fn write(&self, stem: &str, cert: String, key: String) -> ServerCert {
        let out = ServerCert {
            cert: self.dir.path().join(format!("{stem}.crt")),
            key: self.dir.path().join(format!("{stem}.key")),
        };
        std::fs::write(&out.cert, cert).expect("write cert");
        std::fs::write(&out.key, key).expect("write key");
        out
    }
}
