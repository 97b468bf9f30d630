//! Validate: the MailDomain spec → [`DomainSettings`] (pure).
//!
//! The API server enforces the schema and CEL rules; this step parses what patterns can
//! only approximate (durations, SPF mechanisms, IP addresses) and names the field of the
//! first problem, which becomes the `Ready` condition's message.

use chrono::Duration;

use super::settings::{
    DomainSettings, InvalidSpec, KeySettings, check_dns_name, check_report_uri,
    check_spf_mechanisms,
};
use crate::api::SpecError;
use crate::api::mail_domain::{
    DkimAlgorithm, DmarcPolicy as ApiDmarcPolicy, MailDomainSpec, MtaStsMode as ApiMtaStsMode,
    SpfAll as ApiSpfAll,
};
use crate::dkim_keys::KeyAlgorithm;
use crate::dns::{DmarcPolicy, DmarcSpec, MtaStsMode, MtaStsSpec, SpfAll, TlsRptSpec};

/// RFC 8461 §3.2: `max_age` is at most 31557600 seconds (a year).
const MTA_STS_MAX_AGE_LIMIT: u64 = 31_557_600;

fn from_spec_error(e: SpecError) -> InvalidSpec {
    match &e {
        SpecError::Duration { field, .. }
        | SpecError::Quantity { field, .. }
        | SpecError::ExactlyOne { field, .. } => {
            let text = e.to_string();
            let problem = text
                .strip_prefix(&format!("{field}: "))
                .unwrap_or(&text)
                .to_string();
            InvalidSpec::new(field.clone(), problem)
        }
    }
}

fn chrono_duration(field: &str, d: std::time::Duration) -> Result<Duration, InvalidSpec> {
    Duration::from_std(d).map_err(|_| InvalidSpec::new(field, "duration too large"))
}

/// Validates `spec` and resolves its defaults.
pub fn settings_from_spec(spec: &MailDomainSpec) -> Result<DomainSettings, InvalidSpec> {
    let domain = check_dns_name("spec.domain", &spec.domain, 2)?;
    let selector = check_dns_name("spec.dkim.selector", &spec.dkim.selector, 1)?;

    let key = match &spec.dkim.private_key_secret_ref {
        Some(secret) => {
            if spec.dkim.rotate_after.is_some() {
                return Err(InvalidSpec::new(
                    "spec.dkim.rotateAfter",
                    "cannot be combined with privateKeySecretRef: the operator does not \
                     rotate a key it did not generate",
                ));
            }
            KeySettings::UserProvided {
                selector,
                secret_name: secret.name.clone(),
                secret_key: secret.key.clone(),
            }
        }
        None => KeySettings::Generated {
            selector,
            algorithm: match spec.dkim.algorithm {
                DkimAlgorithm::Rsa2048 => KeyAlgorithm::Rsa,
                DkimAlgorithm::Ed25519 => KeyAlgorithm::Ed25519,
            },
            rotate_after: spec
                .dkim
                .rotate_after()
                .map_err(from_spec_error)?
                .map(|d| chrono_duration("spec.dkim.rotateAfter", d))
                .transpose()?,
            overlap: chrono_duration(
                "spec.dkim.rotationOverlap",
                spec.dkim.rotation_overlap().map_err(from_spec_error)?,
            )?,
        },
    };

    let (spf_mechanisms, spf_all) = match &spec.spf {
        Some(spf) => (
            check_spf_mechanisms("spec.spf.mechanisms", &spf.mechanisms)?,
            match spf.all {
                ApiSpfAll::Softfail => SpfAll::SoftFail,
                ApiSpfAll::Fail => SpfAll::Fail,
                ApiSpfAll::Neutral => SpfAll::Neutral,
            },
        ),
        None => (vec![], SpfAll::default()),
    };

    let dmarc =
        spec.dmarc
            .as_ref()
            .map(|d| -> Result<DmarcSpec, InvalidSpec> {
                let rua = d
                    .rua
                    .iter()
                    .enumerate()
                    .map(|(i, u)| check_report_uri(&format!("spec.dmarc.rua[{i}]"), u))
                    .collect::<Result<Vec<_>, _>>()?;
                let pct =
                    d.pct
                        .map(|p| {
                            u8::try_from(p).ok().filter(|p| *p <= 100).ok_or_else(|| {
                                InvalidSpec::new("spec.dmarc.pct", "must be 0 to 100")
                            })
                        })
                        .transpose()?;
                Ok(DmarcSpec {
                    policy: Some(match d.policy {
                        ApiDmarcPolicy::None => DmarcPolicy::None,
                        ApiDmarcPolicy::Quarantine => DmarcPolicy::Quarantine,
                        ApiDmarcPolicy::Reject => DmarcPolicy::Reject,
                    }),
                    rua,
                    pct,
                })
            })
            .transpose()?;

    let mta_sts = spec
        .mta_sts
        .as_ref()
        .map(|m| -> Result<MtaStsSpec, InvalidSpec> {
            let max_age = m.max_age().map_err(from_spec_error)?.as_secs();
            if max_age > MTA_STS_MAX_AGE_LIMIT {
                return Err(InvalidSpec::new(
                    "spec.mtaSts.maxAge",
                    "RFC 8461 allows at most one year (31557600 s)",
                ));
            }
            Ok(MtaStsSpec {
                mode: match m.mode {
                    ApiMtaStsMode::Testing => MtaStsMode::Testing,
                    ApiMtaStsMode::Enforce => MtaStsMode::Enforce,
                    ApiMtaStsMode::None => MtaStsMode::None,
                },
                max_age: u32::try_from(max_age).unwrap_or(u32::MAX),
            })
        })
        .transpose()?;

    let tls_rpt = spec
        .tls_rpt
        .as_ref()
        .map(|t| -> Result<TlsRptSpec, InvalidSpec> {
            if t.rua.is_empty() {
                return Err(InvalidSpec::new(
                    "spec.tlsRpt.rua",
                    "needs at least one address",
                ));
            }
            Ok(TlsRptSpec {
                rua: t
                    .rua
                    .iter()
                    .enumerate()
                    .map(|(i, u)| check_report_uri(&format!("spec.tlsRpt.rua[{i}]"), u))
                    .collect::<Result<Vec<_>, _>>()?,
            })
        })
        .transpose()?;

    Ok(DomainSettings {
        domain,
        relay_pool: spec.relay_pool_ref.name.clone(),
        key,
        spf_mechanisms,
        spf_all,
        dmarc,
        mta_sts,
        tls_rpt,
    })
}
