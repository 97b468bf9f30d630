//! The CustomResourceDefinitions of the smtpfleet API, as objects and as YAML.
//!
//! `operator crd` prints them; `operator crd --out-dir crds` writes one file per CRD,
//! which is what the repository's `crds/` directory and the Helm chart hold. A test
//! fails when the checked-in files differ from what the types generate.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;
use thiserror::Error;

use crate::api::{MailDomain, RelayPool};

/// The command that regenerates the checked-in CRD files.
pub const REGENERATE_COMMAND: &str = "cargo run -p smtpfleet-operator -- crd --out-dir crds";

/// First lines of every generated file.
const HEADER: &str = "# Generated from the smtpfleet.io/v1alpha1 API types: do not edit.\n\
                      # Regenerate with: cargo run -p smtpfleet-operator -- crd --out-dir crds\n";

/// Failure to render or write the CRDs.
#[derive(Debug, Error)]
pub enum Error {
    /// A CRD did not serialise to YAML.
    #[error("rendering CRD {name} as YAML: {source}")]
    Yaml {
        /// Name of the CRD.
        name: String,
        /// Underlying error.
        source: serde_yaml::Error,
    },
    /// Writing output failed.
    #[error("writing {target}: {source}")]
    Write {
        /// File or stream written to.
        target: String,
        /// Underlying error.
        source: io::Error,
    },
}

/// Arguments of `operator crd`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct CrdArgs {
    /// Write one `<crd-name>.yaml` file per CRD into this directory instead of printing
    /// a multi-document YAML stream to stdout.
    #[arg(long, value_name = "DIR")]
    pub out_dir: Option<PathBuf>,
}

/// Every CRD of the API, ordered by name so that output is stable.
pub fn crds() -> Vec<CustomResourceDefinition> {
    let mut crds = vec![MailDomain::crd(), RelayPool::crd()];
    crds.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    crds
}

/// Name of a CRD (`relaypools.smtpfleet.io`).
pub fn crd_name(crd: &CustomResourceDefinition) -> &str {
    crd.metadata.name.as_deref().unwrap_or_default()
}

/// File name a CRD is written to (`relaypools.smtpfleet.io.yaml`).
pub fn file_name(crd: &CustomResourceDefinition) -> String {
    format!("{}.yaml", crd_name(crd))
}

/// The content of a CRD's file: the header and the CRD as one YAML document.
pub fn render_file(crd: &CustomResourceDefinition) -> Result<String, Error> {
    let yaml = serde_yaml::to_string(crd).map_err(|source| Error::Yaml {
        name: crd_name(crd).to_owned(),
        source,
    })?;
    Ok(format!("{HEADER}{yaml}"))
}

/// Every CRD as one multi-document YAML stream.
pub fn render_yaml() -> Result<String, Error> {
    let mut out = String::new();
    for crd in crds() {
        out.push_str("---\n");
        out.push_str(&render_file(&crd)?);
    }
    Ok(out)
}

/// Writes one file per CRD into `dir` (created if missing), returning the paths.
pub fn write_dir(dir: &Path) -> Result<Vec<PathBuf>, Error> {
    std::fs::create_dir_all(dir).map_err(|source| Error::Write {
        target: dir.display().to_string(),
        source,
    })?;
    crds()
        .iter()
        .map(|crd| {
            let path = dir.join(file_name(crd));
            std::fs::write(&path, render_file(crd)?).map_err(|source| Error::Write {
                target: path.display().to_string(),
                source,
            })?;
            Ok(path)
        })
        .collect()
}

/// Runs `operator crd`: writes files when `--out-dir` is given (listing them on `out`),
/// otherwise prints the YAML stream to `out`.
pub fn run(args: &CrdArgs, out: &mut impl Write) -> Result<(), Error> {
    let text = match &args.out_dir {
        Some(dir) => write_dir(dir)?
            .iter()
            .map(|path| format!("wrote {}\n", path.display()))
            .collect(),
        None => render_yaml()?,
    };
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(|source| Error::Write {
            target: "stdout".to_owned(),
            source,
        })
}
