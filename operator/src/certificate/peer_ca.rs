//! The pool's internal CA for node-to-node mTLS, and its rotation.
//!
//! Every node trusts a bundle of CAs and presents a certificate from the active one.
//! Rotation never leaves a pair of nodes unable to talk, because trust always moves
//! before issuance and is withdrawn only after it:
//!
//! 1. **Stable** — one CA signs every node certificate; the bundle holds it.
//! 2. **Introduce** (the CA has a third of its life left, or rotation was asked for) — a
//!    next CA joins the bundle; node certificates stay as they are. This lasts at least
//!    `overlap`, long enough for every node to reload the bundle.
//! 3. **Promote** — the next CA becomes active and every node certificate is re-issued by
//!    it; the old CA stays in the bundle for another `overlap`, for nodes that have not
//!    reloaded their own certificate yet.
//! 4. **Retire** — the old CA leaves the bundle.
//!
//! All of it is a pure function of the stored material, the node list and the time, so
//! the controller only reads and writes Secrets.

use std::collections::BTreeMap;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SerialNumber,
};
use x509_parser::prelude::{FromDer, X509Certificate};

/// CA lifetime; rotation starts when a third is left.
pub const CA_DAYS: i64 = 365;
/// Node certificate lifetime; re-issued when a third is left.
pub const NODE_DAYS: i64 = 30;
/// Default time between rotation steps.
pub const OVERLAP_SECONDS: i64 = 3600;

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("cannot issue a peer certificate: {0}")]
    Issue(String),
    #[error("stored peer CA material is unusable: {0}")]
    Stored(String),
}

/// A certificate with its key, as PEM, and the facts rotation needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyedCert {
    pub cert_pem: String,
    pub key_pem: String,
    pub not_before: i64,
    pub not_after: i64,
    /// Subject (for CAs) or issuer (for node certificates), as DER: tells which CA
    /// issued a node certificate.
    pub name_der: Vec<u8>,
}

impl KeyedCert {
    /// Parses stored PEM.
    pub fn parse(cert_pem: &str, key_pem: &str, is_ca: bool) -> Result<Self, PkiError> {
        let der = rustls_pki_types::pem::PemObject::from_pem_slice(cert_pem.as_bytes())
            .map_err(|e: rustls_pki_types::pem::Error| PkiError::Stored(e.to_string()))?;
        let der: rustls_pki_types::CertificateDer<'_> = der;
        let (_, cert) =
            X509Certificate::from_der(der.as_ref()).map_err(|e| PkiError::Stored(e.to_string()))?;
        let name_der = if is_ca {
            cert.subject().as_raw().to_vec()
        } else {
            cert.issuer().as_raw().to_vec()
        };
        Ok(Self {
            cert_pem: cert_pem.to_owned(),
            key_pem: key_pem.to_owned(),
            not_before: cert.validity().not_before.timestamp(),
            not_after: cert.validity().not_after.timestamp(),
            name_der,
        })
    }

    fn needs_renewal(&self, now: i64) -> bool {
        crate::certificate::inspect::needs_renewal(self.not_before, self.not_after, now)
    }
}

/// Everything the pool's peer PKI consists of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerMaterial {
    pub active: KeyedCert,
    /// A CA being introduced, and when it joined the bundle.
    pub next: Option<(KeyedCert, i64)>,
    /// A CA being retired, and when it leaves the bundle.
    pub previous: Option<(KeyedCert, i64)>,
    /// Node name → its certificate.
    pub nodes: BTreeMap<String, KeyedCert>,
}

impl PeerMaterial {
    /// The CAs nodes must trust now, active first.
    pub fn bundle(&self) -> String {
        let mut out = self.active.cert_pem.clone();
        if let Some((next, _)) = &self.next {
            out.push_str(&next.cert_pem);
        }
        if let Some((previous, _)) = &self.previous {
            out.push_str(&previous.cert_pem);
        }
        out
    }
}

/// A node of the pool: its name and the DNS names peers use for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerNode {
    pub name: String,
    pub dns_names: Vec<String>,
}

fn issue_ca(pool: &str, now: i64) -> Result<KeyedCert, PkiError> {
    let err = |e: rcgen::Error| PkiError::Issue(e.to_string());
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    // A distinct name per generation, so node certificates say which CA issued them.
    params.distinguished_name.push(
        DnType::CommonName,
        format!("smtpfleet peer CA {pool} {now}"),
    );
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.not_before = timestamp(now - 3600)?;
    params.not_after = timestamp(now + CA_DAYS * 86_400)?;
    params.serial_number = Some(random_serial());
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(err)?;
    let cert = params.self_signed(&key).map_err(err)?;
    KeyedCert::parse(&cert.pem(), &key.serialize_pem(), true)
}

fn issue_node(ca: &KeyedCert, node: &PeerNode, now: i64) -> Result<KeyedCert, PkiError> {
    let err = |e: rcgen::Error| PkiError::Issue(e.to_string());
    let ca_key = KeyPair::from_pem(&ca.key_pem).map_err(err)?;
    let issuer = Issuer::from_ca_cert_pem(&ca.cert_pem, ca_key).map_err(err)?;
    let mut params = CertificateParams::new(node.dns_names.clone()).map_err(err)?;
    params
        .distinguished_name
        .push(DnType::CommonName, node.name.clone());
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.not_before = timestamp(now - 3600)?;
    params.not_after = timestamp((now + NODE_DAYS * 86_400).min(ca.not_after))?;
    params.serial_number = Some(random_serial());
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(err)?;
    let cert = params.signed_by(&key, &issuer).map_err(err)?;
    KeyedCert::parse(&cert.pem(), &key.serialize_pem(), false)
}

fn timestamp(unix: i64) -> Result<time::OffsetDateTime, PkiError> {
    time::OffsetDateTime::from_unix_timestamp(unix).map_err(|e| PkiError::Issue(e.to_string()))
}

fn random_serial() -> SerialNumber {
    let mut serial: [u8; 16] = rand::random();
    serial[0] &= 0x7f;
    SerialNumber::from_slice(&serial)
}

/// Where rotation stands, for logs and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Stable,
    Introducing,
    Retiring,
}

impl PeerMaterial {
    pub fn phase(&self) -> Phase {
        match (&self.next, &self.previous) {
            (Some(_), _) => Phase::Introducing,
            (None, Some(_)) => Phase::Retiring,
            (None, None) => Phase::Stable,
        }
    }
}

/// The material the pool should have now. `rotate` starts a rotation even when the CA
/// is young (an operator asked for one, or a key is suspected).
pub fn plan(
    pool: &str,
    stored: Option<PeerMaterial>,
    nodes: &[PeerNode],
    now: i64,
    overlap: i64,
    rotate: bool,
) -> Result<PeerMaterial, PkiError> {
    let mut m = match stored {
        // An expired CA cannot be rotated gracefully: start over at once.
        Some(m) if m.active.not_after > now => m,
        _ => PeerMaterial {
            active: issue_ca(pool, now)?,
            next: None,
            previous: None,
            nodes: BTreeMap::new(),
        },
    };
    if let Some((_, until)) = &m.previous
        && now >= *until
    {
        m.previous = None;
    }
    match m.next.take() {
        Some((next, since)) if now >= since + overlap && m.previous.is_none() => {
            let old = std::mem::replace(&mut m.active, next);
            m.previous = Some((old, now + overlap));
        }
        other => m.next = other,
    }
    if m.next.is_none() && m.previous.is_none() && (rotate || m.active.needs_renewal(now)) {
        m.next = Some((issue_ca(pool, now)?, now));
    }
    let mut issued = BTreeMap::new();
    for node in nodes {
        let keep = m.nodes.get(&node.name).filter(|c| {
            c.name_der == m.active.name_der && !c.needs_renewal(now) && c.not_after > now
        });
        let cert = match keep {
            Some(c) => c.clone(),
            None => issue_node(&m.active, node, now)?,
        };
        issued.insert(node.name.clone(), cert);
    }
    m.nodes = issued;
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(names: &[&str]) -> Vec<PeerNode> {
        names
            .iter()
            .map(|n| PeerNode {
                name: n.to_string(),
                dns_names: vec![format!("{n}.pool-peers.mail.svc")],
            })
            .collect()
    }

    const NOW: i64 = 1_795_000_000;

    #[test]
    fn a_new_pool_gets_a_ca_and_a_certificate_per_node() {
        let m = plan("pool", None, &nodes(&["a", "b"]), NOW, 60, false).unwrap();
        assert_eq!(m.phase(), Phase::Stable);
        assert_eq!(m.nodes.len(), 2);
        assert!(m.nodes.values().all(|c| c.name_der == m.active.name_der));
        // Nothing changes when nothing is due.
        let again = plan(
            "pool",
            Some(m.clone()),
            &nodes(&["a", "b"]),
            NOW + 10,
            60,
            false,
        )
        .unwrap();
        assert_eq!(again, m);
    }

    #[test]
    fn rotation_moves_trust_before_issuance_and_withdraws_it_after() {
        let start = plan("pool", None, &nodes(&["a", "b"]), NOW, 60, false).unwrap();
        let old_ca = start.active.clone();
        let introduced = plan(
            "pool",
            Some(start.clone()),
            &nodes(&["a", "b"]),
            NOW + 1,
            60,
            true,
        )
        .unwrap();
        assert_eq!(introduced.phase(), Phase::Introducing);
        assert_eq!(introduced.nodes, start.nodes, "node certificates wait");
        assert!(introduced.bundle().contains(&old_ca.cert_pem));
        let new_ca = introduced.next.clone().unwrap().0;
        assert!(introduced.bundle().contains(&new_ca.cert_pem));

        // Before the overlap has passed nothing moves.
        let early = plan(
            "pool",
            Some(introduced.clone()),
            &nodes(&["a", "b"]),
            NOW + 30,
            60,
            false,
        )
        .unwrap();
        assert_eq!(early, introduced);

        let promoted = plan(
            "pool",
            Some(introduced),
            &nodes(&["a", "b"]),
            NOW + 61,
            60,
            false,
        )
        .unwrap();
        assert_eq!(promoted.phase(), Phase::Retiring);
        assert_eq!(promoted.active, new_ca);
        assert!(
            promoted
                .nodes
                .values()
                .all(|c| c.name_der == new_ca.name_der)
        );
        assert!(
            promoted.bundle().contains(&old_ca.cert_pem),
            "old CA still trusted"
        );

        let retired = plan(
            "pool",
            Some(promoted),
            &nodes(&["a", "b"]),
            NOW + 122,
            60,
            false,
        )
        .unwrap();
        assert_eq!(retired.phase(), Phase::Stable);
        assert!(!retired.bundle().contains(&old_ca.cert_pem));
    }

    #[test]
    fn scaling_adds_and_drops_node_certificates() {
        let m = plan("pool", None, &nodes(&["a"]), NOW, 60, false).unwrap();
        let up = plan(
            "pool",
            Some(m.clone()),
            &nodes(&["a", "b", "c"]),
            NOW,
            60,
            false,
        )
        .unwrap();
        assert_eq!(up.nodes["a"], m.nodes["a"]);
        assert_eq!(up.nodes.len(), 3);
        let down = plan("pool", Some(up), &nodes(&["a"]), NOW, 60, false).unwrap();
        assert_eq!(down.nodes.keys().collect::<Vec<_>>(), ["a"]);
    }

    #[test]
    fn an_aging_ca_rotates_and_an_expired_one_is_replaced_at_once() {
        let m = plan("pool", None, &nodes(&["a"]), NOW, 60, false).unwrap();
        let late = NOW + (CA_DAYS * 2 / 3 + 1) * 86_400;
        let aging = plan("pool", Some(m.clone()), &nodes(&["a"]), late, 60, false).unwrap();
        assert_eq!(aging.phase(), Phase::Introducing);
        let dead = NOW + (CA_DAYS + 1) * 86_400;
        let fresh = plan("pool", Some(m.clone()), &nodes(&["a"]), dead, 60, false).unwrap();
        assert_ne!(fresh.active, m.active);
        assert_eq!(fresh.phase(), Phase::Stable);
        assert_eq!(fresh.nodes["a"].name_der, fresh.active.name_der);
    }

    #[test]
    fn node_certificates_are_renewed_before_they_expire() {
        let m = plan("pool", None, &nodes(&["a"]), NOW, 60, false).unwrap();
        let later = NOW + (NODE_DAYS * 2 / 3 + 1) * 86_400;
        let renewed = plan("pool", Some(m.clone()), &nodes(&["a"]), later, 60, false).unwrap();
        assert_ne!(renewed.nodes["a"], m.nodes["a"]);
    }
}
