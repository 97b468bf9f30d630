//! The checked-in CRD files and the `operator crd` command.

use std::path::{Path, PathBuf};
use std::process::Command;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use smtpfleet_operator::crdgen;

fn repo_crds_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../crds")
}

#[test]
fn checked_in_crds_match_the_generated_ones() {
    let dir = repo_crds_dir();
    let mut stale = Vec::new();
    for crd in crdgen::crds() {
        let path = dir.join(crdgen::file_name(&crd));
        let expected = crdgen::render_file(&crd).expect("CRD renders");
        match std::fs::read_to_string(&path) {
            Ok(actual) if actual == expected => {}
            Ok(_) => stale.push(format!("{} differs", path.display())),
            Err(e) => stale.push(format!("{} unreadable: {e}", path.display())),
        }
    }
    assert!(
        stale.is_empty(),
        "the checked-in CRDs are out of date with the API types:\n  {}\n\
         regenerate them from the repository root with:\n  {}",
        stale.join("\n  "),
        crdgen::REGENERATE_COMMAND
    );
}

#[test]
fn crds_directory_holds_nothing_else() {
    let expected: Vec<String> = crdgen::crds().iter().map(crdgen::file_name).collect();
    let mut found: Vec<String> = std::fs::read_dir(repo_crds_dir())
        .expect("crds/ exists")
        .map(|entry| {
            entry
                .expect("entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    found.sort();
    assert_eq!(
        found,
        expected,
        "crds/ should hold exactly one file per CRD; regenerate with: {}",
        crdgen::REGENERATE_COMMAND
    );
}

#[test]
fn crds_are_ordered_by_name() {
    let names: Vec<String> = crdgen::crds()
        .iter()
        .map(|crd| crdgen::crd_name(crd).to_owned())
        .collect();
    assert_eq!(
        names,
        ["maildomains.smtpfleet.io", "relaypools.smtpfleet.io"]
    );
}

fn parse_stream(text: &str) -> Vec<CustomResourceDefinition> {
    serde_yaml::Deserializer::from_str(text)
        .map(|doc| serde::Deserialize::deserialize(doc).expect("document is a CRD"))
        .collect()
}

#[test]
fn yaml_stream_parses_back_to_the_crds() {
    let text = crdgen::render_yaml().expect("renders");
    assert!(text.starts_with("---\n"));
    assert_eq!(parse_stream(&text), crdgen::crds());
}

#[test]
fn operator_crd_prints_the_stream() {
    let output = Command::new(env!("CARGO_BIN_EXE_operator"))
        .arg("crd")
        .output()
        .expect("operator binary runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8(output.stdout).expect("UTF-8 output");
    assert_eq!(stdout, crdgen::render_yaml().expect("renders"));
}

#[test]
fn operator_crd_out_dir_writes_one_file_per_crd() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("nested/crds");
    let output = Command::new(env!("CARGO_BIN_EXE_operator"))
        .args(["crd", "--out-dir"])
        .arg(&out)
        .output()
        .expect("operator binary runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for crd in crdgen::crds() {
        let path = out.join(crdgen::file_name(&crd));
        let text = std::fs::read_to_string(&path).expect("file written");
        assert_eq!(text, crdgen::render_file(&crd).expect("renders"));
        assert_eq!(parse_stream(&text), [crd]);
        assert!(
            String::from_utf8_lossy(&output.stdout).contains(&path.display().to_string()),
            "output names {}",
            path.display()
        );
    }
}

#[test]
fn operator_crd_reports_an_unwritable_directory() {
    let dir = tempfile::tempdir().expect("temp dir");
    let blocker = dir.path().join("file");
    std::fs::write(&blocker, "not a directory").expect("write");
    let output = Command::new(env!("CARGO_BIN_EXE_operator"))
        .args(["crd", "--out-dir"])
        .arg(blocker.join("crds"))
        .output()
        .expect("operator binary runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("writing"), "{stderr}");
}
