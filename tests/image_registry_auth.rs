//! Private registries: Debian's docker-registry with htpasswd auth — or token auth, with the
//! token server tests/fixtures/token-server.py — and TLS from a CA this test makes with
//! openssl (scripts/start-test-registry.sh --tls --htpasswd|--token), on 127.0.0.2 — not
//! 127.0.0.1, where husk always speaks plain HTTP. The busybox image is pushed with skopeo;
//! `husk login`, `pull`, `images` and `logout` run as the binary with their own HOME,
//! DOCKER_CONFIG, XDG_RUNTIME_DIR, certs.d and registries.json, so the host's own
//! credentials and trust never take part. No VM boots.

#![deny(clippy::undocumented_unsafe_blocks)]

mod common;

use std::io::Write;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use common::cli::Husk;
use common::registry::Registry;

const HOST: &str = "127.0.0.2";
const USER: &str = "husker";
const PASS: &str = "s3cret-pw";

impl Registry {
    fn addr(&self) -> String {
        format!("{HOST}:{}", self.port)
    }

    fn image(&self) -> String {
        format!("{}/busybox:test", self.addr())
    }
}

fn have(cmd: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {cmd}"))
        .output()
        .is_ok_and(|o| o.status.success())
}

fn sh(script: &str, dir: &Path) {
    let o = Command::new("sh")
        .arg("-ec")
        .arg(script)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// How the registry asks for USER:PASS.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Auth {
    /// `WWW-Authenticate: Basic`, checked against an htpasswd file.
    Htpasswd,
    /// `WWW-Authenticate: Bearer`: a token from tests/fixtures/token-server.py.
    Token,
}

/// The token server this test started; killed (by its handle) on drop.
struct TokenServer(Child);

impl Drop for TokenServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the token server on HOST; its realm URL.
fn start_token_server(w: &Path) -> (TokenServer, String) {
    sh(
        "openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=husk-test-token \
           -keyout token.key -out token.crt 2>/dev/null",
        w,
    );
    let mut child = Command::new("python3")
        .arg(common::repo_root().join("tests/fixtures/token-server.py"))
        .args([HOST, USER, PASS])
        .arg(w.join("token.key"))
        .arg(w.join("token.crt"))
        .arg("husk-test-issuer")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let server = TokenServer(child);
    let port: u16 = line.trim().parse().expect("token server port");
    (server, format!("http://{HOST}:{port}/token"))
}

/// Everything one test uses: its CA, registry, husk root and credential/trust locations.
struct Rig {
    work: tempfile::TempDir,
    reg: Registry,
    husk: Husk,
    _token: Option<TokenServer>,
}

impl Rig {
    /// The CA (ca.crt), a server certificate for 127.0.0.2 it signed, the registry asking
    /// for USER:PASS, and busybox pushed; `None` after saying why this host cannot run `test`.
    fn new(test: &str, auth: Auth) -> Option<Rig> {
        // SAFETY: no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            common::not_run(test, "needs root (husk and layer conversion)", true);
            return None;
        }
        // htpasswd (apache2-utils) is start-test-registry.sh's to install when missing.
        for tool in ["skopeo", "docker-registry", "openssl", "python3"] {
            if !have(tool) {
                common::not_run(
                    test,
                    &format!(
                        "{tool} not found: apt-get install skopeo docker-registry openssl \
                         python3"
                    ),
                    true,
                );
                return None;
            }
        }
        if !common::cli::image_tools_present(test) {
            return None;
        }
        let work = tempfile::tempdir().unwrap();
        let w = work.path();
        sh(
            &format!(
                "openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=husk-test-ca \
                   -addext basicConstraints=critical,CA:TRUE -addext keyUsage=keyCertSign,cRLSign \
                   -keyout ca.key -out ca.crt 2>/dev/null
                 openssl req -newkey rsa:2048 -nodes -subj /CN={HOST} \
                   -keyout server.key -out server.csr 2>/dev/null
                 printf 'subjectAltName=IP:{HOST}\\nbasicConstraints=CA:FALSE\\nextendedKeyUsage=serverAuth\\n' > ext
                 openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial \
                   -days 2 -extfile ext -out server.crt 2>/dev/null"
            ),
            w,
        );
        let mut args: Vec<std::ffi::OsString> =
            ["--host", HOST, "--tls"].iter().map(Into::into).collect();
        args.push(w.join("server.crt").into());
        args.push(w.join("server.key").into());
        let token = match auth {
            Auth::Htpasswd => {
                args.extend(["--htpasswd", USER, PASS].iter().map(Into::into));
                None
            }
            Auth::Token => {
                let (server, realm) = start_token_server(w);
                args.extend(
                    ["--token", &realm, "husk-test", "husk-test-issuer"]
                        .iter()
                        .map(Into::into),
                );
                args.push(w.join("token.crt").into());
                Some(server)
            }
        };
        let reg = match Registry::start(&args) {
            Ok(r) => r,
            Err(e) => {
                common::not_run(test, &format!("start-test-registry.sh failed: {e}"), true);
                return None;
            }
        };
        let archive = common::cli::busybox_archive();
        let o = Command::new("skopeo")
            .args(["copy", "--dest-tls-verify=false", "--dest-creds"])
            .arg(format!("{USER}:{PASS}"))
            .arg(format!("docker-archive:{}", archive.display()))
            .arg(format!("docker://{}", reg.image()))
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "skopeo copy: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        for d in ["home", "docker", "run", "certs.d"] {
            std::fs::create_dir_all(w.join(d)).unwrap();
        }
        let husk = Husk::new(
            "/nonexistent/vmlinux".into(),
            "/nonexistent/initramfs".into(),
        );
        Some(Rig {
            work,
            reg,
            husk,
            _token: token,
        })
    }

    fn path(&self, p: &str) -> PathBuf {
        self.work.path().join(p)
    }

    /// Puts the test CA where husk looks for this registry's.
    fn trust_ca(&self) {
        let dir = self.path("certs.d").join(self.reg.addr());
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::copy(self.path("ca.crt"), dir.join("ca.crt")).unwrap();
    }

    /// `husk args…` with this rig's locations, `extra` environment and `stdin`.
    fn husk(&self, args: &[&str], extra: &[(&str, &Path)], stdin: &str) -> Output {
        let mut c = self.husk.cmd(args);
        c.env("HOME", self.path("home"))
            .env("DOCKER_CONFIG", self.path("docker"))
            .env("XDG_RUNTIME_DIR", self.path("run"))
            .env("HUSK_CERTS_DIR", self.path("certs.d"))
            .env("HUSK_REGISTRIES_CONF", self.path("registries.json"))
            .env_remove("REGISTRY_AUTH_FILE")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in extra {
            c.env(k, v);
        }
        let mut child = c.spawn().unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    }

    fn ok(&self, args: &[&str], extra: &[(&str, &Path)], stdin: &str) -> String {
        let o = self.husk(args, extra, stdin);
        assert!(
            o.status.success(),
            "husk {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8(o.stdout).unwrap()
    }

    /// Runs a command that must fail; returns its one stderr line, which must hold `want`.
    fn fails(&self, args: &[&str], extra: &[(&str, &Path)], stdin: &str, want: &str) -> String {
        let o = self.husk(args, extra, stdin);
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert_eq!(o.status.code(), Some(125), "husk {args:?}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
        assert!(err.starts_with("husk: "), "{err}");
        assert!(err.contains(want), "want {want:?} in: {err}");
        assert!(!err.contains(PASS), "the password printed: {err}");
        err
    }

    fn login(&self, password: &str, extra: &[(&str, &Path)]) -> Output {
        self.husk(
            &["login", "-u", USER, "--password-stdin", &self.reg.addr()],
            extra,
            &format!("{password}\n"),
        )
    }

    /// Whether `husk images` lists the pushed image.
    fn has_image(&self) -> bool {
        let out = self.ok(&["images"], &[], "");
        let repo = format!("{}/busybox", self.reg.addr());
        out.lines()
            .any(|l| l.split_whitespace().take(2).eq([repo.as_str(), "test"]))
    }

    fn pull_ok(&self, extra_args: &[&str], extra: &[(&str, &Path)]) {
        let image = self.reg.image();
        let mut args = vec!["pull"];
        args.extend_from_slice(extra_args);
        args.push(&image);
        let out = self.ok(&args, extra, "");
        assert!(out.contains(&format!("Pulled: {image}")), "{out}");
        assert!(self.has_image(), "{}", self.ok(&["images"], &[], ""));
    }
}

fn auth_entry(user: &str, pass: &str) -> String {
    let b64 = Command::new("sh")
        .arg("-c")
        .arg(format!("printf '%s' '{user}:{pass}' | base64 -w0"))
        .output()
        .unwrap()
        .stdout;
    String::from_utf8(b64).unwrap()
}

#[test]
fn login_pull_logout() {
    let Some(rig) = Rig::new("login_pull_logout", Auth::Htpasswd) else {
        return;
    };
    rig.trust_ca();
    let image = rig.reg.image();
    let config = rig.path("docker/config.json");

    rig.fails(&["pull", &image], &[], "", "no credentials for it");
    assert!(!rig.has_image());

    let o = rig.login("wrong-password", &[]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(125), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains("wrong username or password"), "{err}");
    assert!(!config.exists(), "a refused login stored something");

    let o = rig.login(PASS, &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(String::from_utf8_lossy(&o.stdout), "Login Succeeded\n");
    assert_eq!(
        std::fs::metadata(&config).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&config).unwrap()).unwrap();
    assert_eq!(v["auths"][rig.reg.addr()]["auth"], auth_entry(USER, PASS));

    rig.pull_ok(&[], &[]);

    let out = rig.ok(&["logout", &rig.reg.addr()], &[], "");
    assert_eq!(
        out,
        format!("Removing login credentials for {}\n", rig.reg.addr())
    );
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&config).unwrap()).unwrap();
    assert!(v["auths"].get(rig.reg.addr()).is_none(), "{v}");
    let out = rig.ok(&["logout", &rig.reg.addr()], &[], "");
    assert_eq!(out, format!("Not logged in to {}\n", rig.reg.addr()));
    rig.fails(&["pull", &image], &[], "", "no credentials for it");
}

#[test]
fn certificates_and_insecure_registries() {
    let Some(rig) = Rig::new("certificates_and_insecure_registries", Auth::Htpasswd) else {
        return;
    };
    let image = rig.reg.image();
    // Credentials from REGISTRY_AUTH_FILE, as podman users keep them.
    let auth_file = rig.path("auth.json");
    std::fs::write(
        &auth_file,
        format!(
            r#"{{"auths": {{"{}": {{"auth": "{}"}}}}}}"#,
            rig.reg.addr(),
            auth_entry(USER, PASS)
        ),
    )
    .unwrap();
    let env: &[(&str, &Path)] = &[("REGISTRY_AUTH_FILE", &auth_file)];
    let ca_dir = rig.path("certs.d").join(rig.reg.addr());

    let err = rig.fails(&["pull", &image], env, "", "not trusted");
    assert!(err.contains(&ca_dir.display().to_string()), "{err}");
    assert!(!rig.has_image());
    let o = rig.login(PASS, env);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(125), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains("not trusted"), "{err}");

    rig.pull_ok(&["--tls-verify=false"], env);
    rig.ok(&["rmi", &image], &[], "");
    assert!(!rig.has_image());

    std::fs::write(
        rig.path("registries.json"),
        format!(r#"{{"insecure_registries": ["{}"]}}"#, rig.reg.addr()),
    )
    .unwrap();
    rig.pull_ok(&[], env);
    rig.ok(&["rmi", &image], &[], "");
    std::fs::remove_file(rig.path("registries.json")).unwrap();
    rig.fails(&["pull", &image], env, "", "not trusted");

    rig.trust_ca();
    rig.pull_ok(&[], env);
    // A wrong password in the auth file: one line naming where it came from.
    std::fs::write(
        &auth_file,
        format!(
            r#"{{"auths": {{"{}": {{"auth": "{}"}}}}}}"#,
            rig.reg.addr(),
            auth_entry(USER, "nope")
        ),
    )
    .unwrap();
    rig.fails(
        &["pull", &image],
        env,
        "",
        &format!("credentials from {}", auth_file.display()),
    );
}

#[test]
fn credential_helper() {
    let Some(rig) = Rig::new("credential_helper", Auth::Htpasswd) else {
        return;
    };
    rig.trust_ca();
    // docker-credential-test: keeps what `store` gets in a file, answers `get` for that
    // server from it, logs every action.
    let bin = rig.path("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let kept = rig.path("helper-kept");
    let log = rig.path("helper-log");
    let helper = bin.join("docker-credential-test");
    std::fs::write(
        &helper,
        format!(
            r#"#!/bin/sh
input=$(cat)
echo "$1 $(printf '%s' "$input" | head -c 40 | tr -d '\n' | sed 's/"Secret".*//')" >> {log}
case "$1" in
get) if [ -f {kept} ] && [ "$input" = "{addr}" ]; then cat {kept}; else echo "credentials not found in native keychain"; exit 1; fi ;;
store) printf '%s' "$input" > {kept} ;;
erase) if [ -f {kept} ]; then rm {kept}; else echo "credentials not found in native keychain"; exit 1; fi ;;
esac
"#,
            log = log.display(),
            kept = kept.display(),
            addr = rig.reg.addr()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&helper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = std::env::join_paths(std::iter::once(bin.clone()).chain(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    )))
    .unwrap();
    let path = PathBuf::from(path);
    let env: &[(&str, &Path)] = &[("PATH", &path)];
    let config = rig.path("docker/config.json");
    std::fs::write(
        &config,
        format!(r#"{{"credHelpers": {{"{}": "test"}}}}"#, rig.reg.addr()),
    )
    .unwrap();

    // Credentials the helper already has (stored by docker, say).
    std::fs::write(
        &kept,
        format!(
            r#"{{"ServerURL":"{}","Username":"{USER}","Secret":"{PASS}"}}"#,
            rig.reg.addr()
        ),
    )
    .unwrap();
    rig.pull_ok(&[], env);
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(
        logged.contains(&format!("get {}", rig.reg.addr())),
        "{logged}"
    );

    // logout erases them from the helper; a login stores them there again, not inline.
    let out = rig.ok(&["logout", &rig.reg.addr()], env, "");
    assert!(out.starts_with("Removing login credentials"), "{out}");
    assert!(!kept.exists());
    rig.fails(
        &["pull", &rig.reg.image()],
        env,
        "",
        "no credentials for it",
    );
    let o = rig.login(PASS, env);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let stored: serde_json::Value = serde_json::from_slice(&std::fs::read(&kept).unwrap()).unwrap();
    assert_eq!(
        stored,
        serde_json::json!({"ServerURL": rig.reg.addr(), "Username": USER, "Secret": PASS})
    );
    let cfg = std::fs::read_to_string(&config).unwrap();
    assert!(!cfg.contains("auths"), "stored inline too: {cfg}");
    rig.pull_ok(&[], env);
}

#[test]
fn token_auth_registry() {
    let Some(rig) = Rig::new("token_auth_registry", Auth::Token) else {
        return;
    };
    rig.trust_ca();
    let image = rig.reg.image();
    // Anonymous: the token server grants nothing, the registry refuses.
    rig.fails(&["pull", &image], &[], "", "no credentials for it");
    assert!(!rig.has_image());
    let o = rig.login("wrong-password", &[]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(125), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains("wrong username or password"), "{err}");
    assert!(!rig.path("docker/config.json").exists());
    let o = rig.login(PASS, &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(String::from_utf8_lossy(&o.stdout), "Login Succeeded\n");
    rig.pull_ok(&[], &[]);
}
