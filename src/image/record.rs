//! One stored image: its manifest, its config, and what a container takes from them.

use std::collections::BTreeMap;

use oci_spec::image::{ImageConfiguration, ImageManifest};

use super::digest::Digest;
use super::reference::Reference;

/// Annotation on a manifest husk wrote itself for an image that came without one (a
/// docker-archive load): its digest is no registry's, so the image has no repo digest.
pub const SYNTHESIZED: &str = "io.husk.manifest.synthesized-from";

/// A layer of an image, bottom first, as its manifest lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layer {
    /// Digest of the blob as stored (compressed or not); also the key of its erofs image.
    pub digest: Digest,
    pub media_type: String,
    pub size: u64,
}

/// An image in the store.
#[derive(Debug, Clone)]
pub struct Image {
    /// The references in the index that name this manifest (sorted; may be empty only for
    /// an image looked up by digest).
    pub references: Vec<Reference>,
    pub manifest_digest: Digest,
    /// The image ID, as docker shows it: the digest of the config blob.
    pub config_digest: Digest,
    pub manifest: ImageManifest,
    pub config: ImageConfiguration,
    /// The layers, bottom first; their digests were checked when the manifest was stored.
    pub layers: Vec<Layer>,
}

/// The parts of the image config that decide how a container runs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunConfig {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    /// `KEY=VALUE` entries, in the image's order.
    pub env: Vec<String>,
    pub working_dir: Option<String>,
    pub user: Option<String>,
    /// `80/tcp`-style port specs, sorted.
    pub exposed_ports: Vec<String>,
    pub labels: BTreeMap<String, String>,
}

impl Image {
    /// The image ID (config digest).
    pub fn id(&self) -> &Digest {
        &self.config_digest
    }

    /// Entrypoint, Cmd, Env, WorkingDir, User, ExposedPorts and Labels, empty where unset.
    pub fn run_config(&self) -> RunConfig {
        let Some(c) = self.config.config() else {
            return RunConfig::default();
        };
        let mut exposed_ports = c.exposed_ports().clone().unwrap_or_default();
        exposed_ports.sort();
        RunConfig {
            entrypoint: c.entrypoint().clone().unwrap_or_default(),
            cmd: c.cmd().clone().unwrap_or_default(),
            env: c.env().clone().unwrap_or_default(),
            working_dir: c.working_dir().clone().filter(|w| !w.is_empty()),
            user: c.user().clone().filter(|u| !u.is_empty()),
            exposed_ports,
            labels: c.labels().clone().unwrap_or_default().into_iter().collect(),
        }
    }

    /// The manifest digest as a registry knows it (`name@digest` pulls this image), or `None`
    /// when husk wrote the manifest itself.
    pub fn repo_digest(&self) -> Option<&Digest> {
        let synthesized = self
            .manifest
            .annotations()
            .as_ref()
            .is_some_and(|a| a.contains_key(SYNTHESIZED));
        (!synthesized).then_some(&self.manifest_digest)
    }

    /// The total size of the layer blobs as stored.
    pub fn size(&self) -> u64 {
        self.layers.iter().map(|l| l.size).sum()
    }
}
