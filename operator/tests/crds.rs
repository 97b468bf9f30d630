//! Tests of the generated CustomResourceDefinitions: the checked-in YAML is current,
//! the schemas are structural, every validation rule accepts and rejects what it
//! should, and the API server's defaults agree with the operator's.

#[path = "crds/apiserver.rs"]
mod apiserver;
#[path = "crds/constraints.rs"]
mod constraints;
#[path = "crds/defaults.rs"]
mod defaults;
#[path = "crds/files.rs"]
mod files;
#[path = "crds/fixtures.rs"]
mod fixtures;
#[path = "crds/names.rs"]
mod names;
#[path = "crds/structural.rs"]
mod structural;
#[path = "crds/support.rs"]
mod support;
