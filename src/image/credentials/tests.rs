use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use super::file::{decode, encode};
use super::*;

fn cred(u: &str, p: &str) -> Credential {
    Credential {
        username: u.into(),
        secret: p.into(),
    }
}

#[test]
fn docker_hub_aliases_are_one_key() {
    for alias in [
        "docker.io",
        "index.docker.io",
        "registry-1.docker.io",
        "https://index.docker.io/v1/",
        "http://registry-1.docker.io/v2/",
    ] {
        assert_eq!(registry_key(alias), "docker.io", "{alias}");
        assert_eq!(server_address(alias), DOCKER_HUB_SERVER, "{alias}");
    }
    assert_eq!(registry_key("https://quay.io/v2/"), "quay.io");
    assert_eq!(registry_key("127.0.0.1:5000"), "127.0.0.1:5000");
    assert_eq!(server_address("localhost:5000"), "localhost:5000");
}

#[test]
fn auth_is_base64_of_user_colon_password() {
    let c = cred("alice", "pa:ss");
    assert_eq!(encode(&c), "YWxpY2U6cGE6c3M=");
    assert_eq!(decode("YWxpY2U6cGE6c3M="), Some(c));
    assert_eq!(decode("not base64!"), None);
    // base64 of "nocolon"
    assert_eq!(decode("bm9jb2xvbg=="), None);
}

#[test]
fn debug_never_shows_the_secret() {
    let shown = format!("{:?}", cred("alice", "hunter2"));
    assert!(
        shown.contains("alice") && !shown.contains("hunter2"),
        "{shown}"
    );
}

#[test]
fn reads_entries_under_any_alias() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("config.json");
    fs::write(
        &p,
        r#"{"auths": {
              "https://index.docker.io/v1/": {"auth": "aHViOnNlY3JldA=="},
              "http://quay.io/v2/": {"username": "q", "password": "w"},
              "empty.io": {}
           },
           "credHelpers": {"index.docker.io": "", "gcr.io": "gcloud"},
           "credsStore": "desktop"}"#,
    )
    .unwrap();
    let f = AuthFile::read(&p).unwrap();
    assert_eq!(f.inline("docker.io").unwrap(), Some(cred("hub", "secret")));
    assert_eq!(f.inline("quay.io").unwrap(), Some(cred("q", "w")));
    assert_eq!(f.inline("empty.io").unwrap(), None);
    assert_eq!(f.inline("other.io").unwrap(), None);
    assert_eq!(f.helper_for("gcr.io").as_deref(), Some("gcloud"));
    assert_eq!(f.helper_for("docker.io"), None);
    assert_eq!(f.creds_store().as_deref(), Some("desktop"));

    fs::write(&p, r#"{"auths": {"x.io": {"auth": "%%%"}}}"#).unwrap();
    let err = AuthFile::read(&p).unwrap().inline("x.io").unwrap_err();
    assert!(err.to_string().contains("x.io"), "{err}");
    fs::write(&p, "[1,").unwrap();
    assert!(AuthFile::read(&p).is_err());
    // A missing file is an empty one.
    let none = AuthFile::read(&dir.path().join("absent.json")).unwrap();
    assert_eq!(none.inline("docker.io").unwrap(), None);
}

#[test]
fn save_is_0600_and_keeps_other_fields() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("sub/config.json");
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(
        &p,
        r#"{"auths": {"index.docker.io": {"auth": "b2xkOm9sZA=="}}, "psFormat": "x"}"#,
    )
    .unwrap();
    let mut f = AuthFile::read(&p).unwrap();
    f.set_inline(&server_address("registry-1.docker.io"), &cred("new", "pw"));
    f.save().unwrap();
    assert_eq!(
        fs::metadata(&p).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let v: serde_json::Value = serde_json::from_slice(&fs::read(&p).unwrap()).unwrap();
    assert_eq!(v["psFormat"], "x");
    let auths = v["auths"].as_object().unwrap();
    assert_eq!(auths.len(), 1, "{auths:?}");
    assert_eq!(auths[DOCKER_HUB_SERVER]["auth"], encode(&cred("new", "pw")));
    // No temp file left behind.
    assert_eq!(fs::read_dir(p.parent().unwrap()).unwrap().count(), 1);

    let mut f = AuthFile::read(&p).unwrap();
    assert!(f.remove("docker.io"));
    assert!(!f.remove("docker.io"));
    f.save().unwrap();
    assert_eq!(
        AuthFile::read(&p).unwrap().inline("docker.io").unwrap(),
        None
    );
}

fn write_file(p: &Path, body: &str) {
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, body).unwrap();
}

#[test]
fn lookup_order_and_write_target() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let locs = Locations {
        auth_file: Some(d.join("regauth.json")),
        podman: vec![d.join("run/containers/auth.json")],
        docker: Some(d.join("docker/config.json")),
    };
    let entry = |who: &str| {
        format!(
            r#"{{"auths": {{"r.io": {{"auth": "{}"}}}}}}"#,
            encode(&cred(who, "pw"))
        )
    };
    write_file(&d.join("docker/config.json"), &entry("docker"));
    let found = lookup(&locs, "r.io").unwrap().unwrap();
    assert_eq!(found.credential.username, "docker");
    assert_eq!(
        found.origin,
        d.join("docker/config.json").display().to_string()
    );
    write_file(&d.join("run/containers/auth.json"), &entry("podman"));
    assert_eq!(
        lookup(&locs, "r.io").unwrap().unwrap().credential.username,
        "podman"
    );
    write_file(&d.join("regauth.json"), &entry("regauth"));
    assert_eq!(
        lookup(&locs, "https://r.io")
            .unwrap()
            .unwrap()
            .credential
            .username,
        "regauth"
    );
    assert!(lookup(&locs, "other.io").unwrap().is_none());

    assert_eq!(locs.write_target().unwrap(), d.join("regauth.json"));
    let docker_only = Locations {
        auth_file: None,
        ..locs.clone()
    };
    assert_eq!(
        docker_only.write_target().unwrap(),
        d.join("docker/config.json")
    );
    assert!(matches!(
        Locations::default().write_target(),
        Err(CredentialsError::NoHome)
    ));

    assert_eq!(
        store(&docker_only, "index.docker.io", &cred("u", "p")).unwrap(),
        Stored::Inline(d.join("docker/config.json"))
    );
    assert_eq!(
        lookup(&docker_only, "docker.io")
            .unwrap()
            .unwrap()
            .credential,
        cred("u", "p")
    );
    assert!(erase(&docker_only, "registry-1.docker.io").unwrap());
    assert!(!erase(&docker_only, "docker.io").unwrap());
    assert!(lookup(&docker_only, "docker.io").unwrap().is_none());
}

/// A helper keeping one credential in a file beside it, as the protocol says.
fn fake_helper(dir: &Path) -> Helper {
    let script = dir.join("docker-credential-fake");
    let store = dir.join("kept");
    fs::write(
        &script,
        format!(
            r#"#!/bin/sh
kept={store}
input=$(cat)
case "$1" in
get) if [ -f "$kept" ] && [ "$input" = "$(sed -n 1p "$kept")" ]; then sed -n 2p "$kept"; else echo "credentials not found in native keychain"; exit 1; fi ;;
store) url=$(printf '%s' "$input" | sed 's/.*"ServerURL":"\([^"]*\)".*/\1/')
       printf '%s\n%s\n' "$url" "$input" > "$kept" ;;
erase) if [ -f "$kept" ]; then rm "$kept"; else echo "credentials not found in native keychain"; exit 1; fi ;;
*) echo "unknown action $1" >&2; exit 2 ;;
esac
"#,
            store = store.display()
        ),
    )
    .unwrap();
    fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();
    Helper::at(script)
}

#[test]
fn helper_protocol() {
    let dir = tempfile::tempdir().unwrap();
    let h = fake_helper(dir.path());
    assert_eq!(h.get("r.io").unwrap(), None);
    assert!(!h.erase("r.io").unwrap());
    h.store("r.io", &cred("alice", "s3cret")).unwrap();
    let kept = fs::read_to_string(dir.path().join("kept")).unwrap();
    let sent: serde_json::Value = serde_json::from_str(kept.lines().nth(1).unwrap()).unwrap();
    assert_eq!(
        sent,
        serde_json::json!({"ServerURL": "r.io", "Username": "alice", "Secret": "s3cret"})
    );
    // The stored JSON carries ServerURL too; `get` reads Username and Secret from it.
    assert_eq!(h.get("r.io").unwrap(), Some(cred("alice", "s3cret")));
    assert_eq!(h.get("other.io").unwrap(), None);
    assert!(h.erase("r.io").unwrap());
    assert_eq!(h.get("r.io").unwrap(), None);

    let missing = Helper::named("husk-test-no-such-helper").unwrap();
    assert!(matches!(
        missing.get("r.io"),
        Err(helper::HelperError::Missing { .. })
    ));
    assert!(Helper::named("../x").is_err());
    let broken = Helper::at("/bin/false".into());
    let err = broken.get("r.io").unwrap_err().to_string();
    assert!(err.contains("get failed"), "{err}");
}
