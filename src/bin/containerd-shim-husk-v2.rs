//! containerd-shim-husk-v2: containerd's runtime v2 shim for husk (runtime type
//! `io.containerd.husk.v2`): one microVM per Kubernetes pod. See `husk::shim`.

fn main() {
    containerd_shim::run::<husk::shim::launch::HuskShim>(
        husk::shim::RUNTIME_ID,
        Some(husk::shim::launch::config()),
    );
}
