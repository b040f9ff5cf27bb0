//! Shared test harness: real peers (distribution registry, token server, dockerd, containerd,
//! skopeo) and fakes with knobs, all on 127.0.0.1 with ports picked at run time.
//!
//! Every integration test file does `mod support;`; not every file uses every helper.
#![allow(dead_code)]

pub mod certs;
pub mod docker;
pub mod fake_upstream;
pub mod mirror;
pub mod net;
pub mod oci;
pub mod pull;
pub mod redirector;
pub mod registry;
pub mod token_world;
pub mod tokens;
