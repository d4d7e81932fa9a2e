//! How husk reaches a registry, for `pull` and `login`:
//!
//! - this host's registries (`localhost`, `127.0.0.1`, `[::1]`): plain HTTP, as before;
//! - registries listed in `insecure_registries` of `/etc/husk/registries.json`
//!   (`$HUSK_REGISTRIES_CONF`), or any registry with `--tls-verify=false`: HTTPS without
//!   certificate checks, or plain HTTP when the registry does not speak TLS;
//! - every other registry: HTTPS, trusting the system's roots and every `*.crt` in
//!   `/etc/husk/certs.d/HOST[:PORT]/` (`$HUSK_CERTS_DIR`), as docker's `/etc/docker/certs.d`.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};

pub const DEFAULT_CERTS_DIR: &str = "/etc/husk/certs.d";
pub const DEFAULT_REGISTRIES_CONF: &str = "/etc/husk/registries.json";
/// How long the probe of an insecure registry waits for a TLS handshake.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("{path}: {source}")]
    Conf {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path}: not {{\"insecure_registries\": [\"host:port\", …]}}: {source}")]
    ConfJson {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("CA certificate {path}: {source}")]
    Ca {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("CA certificate {path}: not a PEM certificate: {source}")]
    CaPem {
        path: PathBuf,
        #[source]
        source: reqwest::Error,
    },
    #[error("registry {registry}: cannot set up the HTTP client: {source}")]
    Client {
        registry: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("registry {registry}: cannot set up the OCI client: {source}")]
    OciClient {
        registry: String,
        #[source]
        source: oci_client::errors::OciDistributionError,
    },
}

#[derive(Debug, Default, serde::Deserialize)]
struct RegistriesConf {
    #[serde(default)]
    insecure_registries: Vec<String>,
}

/// Where CAs and the insecure list come from, and whether `--tls-verify=false` was given.
#[derive(Debug, Clone)]
pub struct Transport {
    certs_dir: PathBuf,
    conf: PathBuf,
    insecure: Vec<String>,
    tls_verify: bool,
}

impl Transport {
    /// From `$HUSK_CERTS_DIR` and `$HUSK_REGISTRIES_CONF` (else the defaults); a missing
    /// registries.json lists nothing.
    pub fn from_env(tls_verify: bool) -> Result<Transport, TransportError> {
        let var = |k: &str, d: &str| {
            std::env::var_os(k)
                .filter(|v| !v.is_empty())
                .map_or_else(|| PathBuf::from(d), PathBuf::from)
        };
        Transport::new(
            var("HUSK_CERTS_DIR", DEFAULT_CERTS_DIR),
            var("HUSK_REGISTRIES_CONF", DEFAULT_REGISTRIES_CONF),
            tls_verify,
        )
    }

    pub fn new(
        certs_dir: PathBuf,
        conf: PathBuf,
        tls_verify: bool,
    ) -> Result<Transport, TransportError> {
        let parsed = match fs::read(&conf) {
            Ok(b) => serde_json::from_slice::<RegistriesConf>(&b).map_err(|source| {
                TransportError::ConfJson {
                    path: conf.clone(),
                    source,
                }
            })?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => RegistriesConf::default(),
            Err(source) => {
                return Err(TransportError::Conf {
                    path: conf.clone(),
                    source,
                })
            }
        };
        Ok(Transport {
            certs_dir,
            conf,
            insecure: parsed.insecure_registries,
            tls_verify,
        })
    }

    /// The directory whose `*.crt` husk trusts for `registry`.
    pub fn ca_dir(&self, registry: &str) -> PathBuf {
        self.certs_dir.join(registry)
    }

    /// What to do about `registry`'s untrusted certificate, for error messages.
    pub fn trust_hint(&self, registry: &str) -> String {
        format!(
            "put the registry's CA in {}/ca.crt, or, for a registry you trust anyway, list it \
             in insecure_registries of {} or use --tls-verify=false",
            self.ca_dir(registry).display(),
            self.conf.display()
        )
    }

    fn is_insecure(&self, registry: &str) -> bool {
        !self.tls_verify || self.insecure.iter().any(|r| r == registry)
    }

    /// How to talk to `registry`: for an insecure one, a probe decides between unverified
    /// HTTPS and plain HTTP.
    pub async fn endpoint(&self, registry: &str) -> Result<Endpoint, TransportError> {
        let mut e = Endpoint {
            registry: registry.to_string(),
            plain_http: is_local(registry),
            verify: true,
            roots: Vec::new(),
        };
        if e.plain_http {
            return Ok(e);
        }
        if self.is_insecure(registry) {
            e.verify = false;
            let probe = e.http_client()?;
            let speaks_tls = tokio::time::timeout(
                PROBE_TIMEOUT,
                probe.get(format!("https://{registry}/v2/")).send(),
            )
            .await
            .is_ok_and(|r| r.is_ok());
            e.plain_http = !speaks_tls;
            return Ok(e);
        }
        e.roots = read_cas(&self.ca_dir(registry))?;
        Ok(e)
    }
}

/// Whether `registry` is this host, where plain HTTP is allowed.
pub fn is_local(registry: &str) -> bool {
    let host = match registry.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => registry,
    };
    matches!(host, "localhost" | "127.0.0.1" | "[::1]")
}

/// Every `*.crt` in `dir` (PEM), checked so that a bad file is named; none when `dir` is
/// missing.
fn read_cas(dir: &Path) -> Result<Vec<Vec<u8>>, TransportError> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(TransportError::Ca {
                path: dir.to_path_buf(),
                source,
            })
        }
    };
    let mut paths: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "crt"))
        .collect();
    paths.sort();
    let mut out = Vec::new();
    for path in paths {
        let pem = fs::read(&path).map_err(|source| TransportError::Ca {
            path: path.clone(),
            source,
        })?;
        reqwest::Certificate::from_pem(&pem)
            .map_err(|source| TransportError::CaPem { path, source })?;
        out.push(pem);
    }
    Ok(out)
}

/// One registry's connection settings.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub registry: String,
    pub plain_http: bool,
    /// Whether TLS certificates are checked.
    pub verify: bool,
    /// PEM CAs trusted besides the system's.
    pub roots: Vec<Vec<u8>>,
}

impl Endpoint {
    /// `https://REGISTRY` or `http://REGISTRY`.
    pub fn base_url(&self) -> String {
        let scheme = if self.plain_http { "http" } else { "https" };
        format!("{scheme}://{}", self.registry)
    }

    pub fn oci_client(&self) -> Result<oci_client::Client, TransportError> {
        let protocol = if self.plain_http {
            ClientProtocol::HttpsExcept(vec![self.registry.clone()])
        } else {
            ClientProtocol::Https
        };
        let config = ClientConfig {
            protocol,
            accept_invalid_certificates: !self.verify,
            accept_invalid_hostnames: !self.verify,
            extra_root_certificates: self
                .roots
                .iter()
                .map(|pem| Certificate {
                    encoding: CertificateEncoding::Pem,
                    data: pem.clone(),
                })
                .collect(),
            ..Default::default()
        };
        oci_client::Client::try_from(config).map_err(|source| TransportError::OciClient {
            registry: self.registry.clone(),
            source,
        })
    }

    pub fn http_client(&self) -> Result<reqwest::Client, TransportError> {
        let client_err = |source| TransportError::Client {
            registry: self.registry.clone(),
            source,
        };
        let mut b = reqwest::Client::builder()
            .danger_accept_invalid_certs(!self.verify)
            .danger_accept_invalid_hostnames(!self.verify);
        for pem in &self.roots {
            b = b.add_root_certificate(reqwest::Certificate::from_pem(pem).map_err(client_err)?);
        }
        b.build().map_err(client_err)
    }
}

/// The TLS certificate failure somewhere in `err`'s causes, as its innermost message says.
pub fn certificate_failure(err: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut found = None;
    let mut cur = Some(err);
    while let Some(e) = cur {
        let text = e.to_string();
        if text.contains("certificate") {
            found = Some(openssl_reason(&text));
        }
        cur = e.source();
    }
    found
}

/// The reason in OpenSSL's `error:CODE:LIB:FUNC:REASON:FILE:LINE:DETAIL`, with its detail;
/// any other text as it is.
fn openssl_reason(text: &str) -> String {
    let parts: Vec<&str> = text.splitn(8, ':').collect();
    match parts.as_slice() {
        ["error", _, _, _, reason, _, _, detail] if !detail.trim().is_empty() => {
            format!("{reason}: {}", detail.trim())
        }
        ["error", _, _, _, reason, ..] => reason.to_string(),
        _ => text.to_string(),
    }
}

/// The innermost cause of `err` (what a transport failure's outer layers wrap).
pub fn root_cause(err: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = err;
    while let Some(s) = cur.source() {
        cur = s;
    }
    cur.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insecure_list_and_ca_dir() {
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("registries.json");
        let certs = dir.path().join("certs.d");
        fs::write(&conf, r#"{"insecure_registries": ["reg.lan:5000"]}"#).unwrap();
        let t = Transport::new(certs.clone(), conf.clone(), true).unwrap();
        assert!(t.is_insecure("reg.lan:5000"));
        assert!(!t.is_insecure("reg.lan"));
        assert_eq!(t.ca_dir("reg.lan:5000"), certs.join("reg.lan:5000"));
        let off = Transport::new(certs.clone(), dir.path().join("absent.json"), false).unwrap();
        assert!(off.is_insecure("quay.io"));
        fs::write(&conf, r#"{"insecure_registries": "reg.lan"}"#).unwrap();
        let err = Transport::new(certs, conf.clone(), true).unwrap_err();
        assert!(err.to_string().contains(conf.to_str().unwrap()), "{err}");
    }

    #[test]
    fn local_registries_use_plain_http() {
        for (r, local) in [
            ("localhost:5000", true),
            ("127.0.0.1:5000", true),
            ("[::1]:5000", true),
            ("localhost", true),
            ("127.0.0.2:5000", false),
            ("docker.io", false),
        ] {
            assert_eq!(is_local(r), local, "{r}");
        }
    }

    #[test]
    fn openssl_reasons() {
        assert_eq!(
            openssl_reason(
                "error:0A000086:SSL routines:tls_post_process_server_certificate:certificate \
                 verify failed:../ssl/statem/statem_clnt.c:1889:"
            ),
            "certificate verify failed"
        );
        assert_eq!(
            openssl_reason("error:0A000086:SSL routines:f:certificate verify failed:x.c:1: (self-signed certificate)"),
            "certificate verify failed: (self-signed certificate)"
        );
        assert_eq!(
            openssl_reason("invalid peer certificate"),
            "invalid peer certificate"
        );
    }

    #[test]
    fn bad_ca_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let reg = dir.path().join("r.io");
        fs::create_dir_all(&reg).unwrap();
        assert!(read_cas(&reg).unwrap().is_empty());
        fs::write(reg.join("ca.crt"), "not a certificate").unwrap();
        fs::write(reg.join("notes.txt"), "ignored").unwrap();
        let err = read_cas(&reg).unwrap_err().to_string();
        assert!(err.contains("ca.crt"), "{err}");
        assert!(read_cas(&dir.path().join("absent")).unwrap().is_empty());
    }
}
