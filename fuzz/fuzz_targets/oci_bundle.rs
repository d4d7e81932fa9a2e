//! OCI `config.json` → container spec (husk-runtime `create`): the bundle's config goes
//! through the real `bundle::plan` (spec parse, root, process, mounts, namespaces, devices,
//! seccomp, hooks, resources); an `exec --process` file (first input byte odd) through the
//! same parse + `process::convert` husk-runtime's exec uses. What the runtime accepts it must
//! be able to send: the resulting request must pass the agent protocol's own validation.
#![no_main]

use husk::ociruntime::{bundle, process};
use husk_protocol::{encode, Request, RequestBody};
use libfuzzer_sys::fuzz_target;
use oci_spec::runtime::Process;

fuzz_target!(|data: &[u8]| {
    let Some((&which, json)) = data.split_first() else {
        return;
    };
    if which & 1 == 1 {
        let Ok(p) = serde_json::from_slice::<Process>(json) else {
            return;
        };
        if let Ok(spec) = process::convert(&p, (24, 80)) {
            let req = Request::new(
                1,
                RequestBody::ExecProcess {
                    container_id: "fuzz".into(),
                    exec_id: "e".into(),
                    process: Box::new(spec),
                },
            );
            if let Err(e) = encode(&req) {
                panic!("exec process accepted but unsendable: {e}");
            }
        }
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::create_dir(dir.path().join("rootfs")).expect("rootfs");
    std::fs::write(dir.path().join("config.json"), json).expect("config.json");
    if let Ok(plan) = bundle::plan("fuzz", dir.path()) {
        let req = Request::new(1, RequestBody::CreateContainer(Box::new(plan.container)));
        if let Err(e) = encode(&req) {
            panic!("bundle accepted but its container spec is unsendable: {e}");
        }
    }
});
