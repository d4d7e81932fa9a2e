//! The CRI tests' pause image: busybox's own layer under a config whose entrypoint runs until
//! SIGTERM, as Kubernetes' pause does (there is no registry.k8s.io to pull one from here).

use std::path::Path;

use sha2::{Digest, Sha256};

fn sha256(data: &[u8]) -> String {
    let d = Sha256::digest(data);
    d.iter().map(|b| format!("{b:02x}")).collect()
}

fn read_json(path: &Path) -> serde_json::Value {
    let data =
        std::fs::read(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_slice(&data).unwrap_or_else(|e| panic!("{}: not JSON: {e}", path.display()))
}

/// Writes at `out` an OCI image layout holding one image, named `pause`: the layers of the
/// single image in the layout at `busybox`, with `Entrypoint ["/bin/sh", "-c", script]`.
pub fn pause_layout(busybox: &Path, out: &Path, script: &str) {
    let blob = |digest: &str| {
        let hex = digest
            .strip_prefix("sha256:")
            .unwrap_or_else(|| panic!("{digest}: not a sha256 digest"));
        busybox.join("blobs/sha256").join(hex)
    };
    let index = read_json(&busybox.join("index.json"));
    let manifest_digest = index["manifests"][0]["digest"]
        .as_str()
        .expect("busybox index: a manifest digest");
    let manifest = read_json(&blob(manifest_digest));
    let mut config = read_json(&blob(
        manifest["config"]["digest"]
            .as_str()
            .expect("busybox manifest: a config digest"),
    ));
    config["config"]["Entrypoint"] = serde_json::json!(["/bin/sh", "-c", script]);
    config["config"]["Cmd"] = serde_json::Value::Null;
    config["config"]["Labels"] =
        serde_json::json!({"org.opencontainers.image.title": "husk CRI test pause"});

    let blobs = out.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).expect("pause layout dir");
    let put = |data: &[u8]| -> String {
        let hex = sha256(data);
        std::fs::write(blobs.join(&hex), data).expect("write a pause blob");
        format!("sha256:{hex}")
    };
    let layers = manifest["layers"]
        .as_array()
        .expect("busybox manifest: layers");
    for layer in layers {
        let digest = layer["digest"].as_str().expect("layer digest");
        let data = std::fs::read(blob(digest)).expect("read a busybox layer");
        assert_eq!(
            put(&data),
            digest,
            "busybox layer blob does not match its digest"
        );
    }
    let config_bytes = serde_json::to_vec(&config).expect("config JSON");
    let config_digest = put(&config_bytes);
    let manifest_bytes = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest,
            "size": config_bytes.len(),
        },
        "layers": layers,
    }))
    .expect("manifest JSON");
    let manifest_digest = put(&manifest_bytes);
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest,
            "size": manifest_bytes.len(),
            "annotations": {"org.opencontainers.image.ref.name": "pause"},
        }],
    });
    std::fs::write(out.join("index.json"), index.to_string()).expect("write index.json");
    std::fs::write(out.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#)
        .expect("write oci-layout");
}
