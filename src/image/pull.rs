//! Pulls an image from a registry over the OCI distribution API (`oci-client`), with the
//! credentials `husk login`, docker or podman left for it ([`credentials`], anonymous when
//! there are none; oci-client answers basic and bearer-token challenges itself), over the
//! connection [`transport`] picks (plain HTTP only for this host's registries and ones
//! configured insecure).
//!
//! Manifests are fetched raw and their digests computed here, so a registry cannot hand
//! over a manifest other than the one a `@sha256:` reference pins; a multi-platform index is
//! resolved to this host's platform (or `--platform`) here too. Blobs download
//! [`MAX_CONCURRENT_DOWNLOADS`] at a time, each with its own progress bar, and a transfer that
//! breaks off (connection reset, timeout, 5xx, 429) is retried from the start after a bounded
//! back-off ([`ATTEMPTS`] tries in all). Every blob goes through a [`BlobWriter`], which
//! bounds it by its descriptor's size and checks its digest before it gets a name in the
//! store; a digest or size that does not match is never retried.

use std::io::Write;
use std::pin::Pin;
use std::task::{Context, Poll};

use std::time::Duration;

use futures_util::{StreamExt, TryStreamExt};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::secrets::RegistryAuth;

use super::credentials::{self, CredentialsError, Locations};

use super::digest::Digest;
use super::import::platform::{self, IndexDoc, Platform};
use super::import::{commit, ImportError};
use super::record::Image;
use super::reference::{Reference, ReferenceError};
use super::store::{BlobWriter, Store, StoreError};
use super::transport::{certificate_failure, root_cause, Transport, TransportError};

/// Layers downloaded at once (docker's default for `max-concurrent-downloads`).
pub const MAX_CONCURRENT_DOWNLOADS: usize = 3;
/// Tries per blob when the transfer breaks off.
pub const ATTEMPTS: u32 = 3;
/// The first pause before a retry; each later one doubles it.
const FIRST_BACKOFF: Duration = Duration::from_millis(500);

/// How `pull` reaches the registry, what it pulls and what it shows.
#[derive(Debug, Clone)]
pub struct PullOptions {
    pub progress: Progress,
    /// The platform a multi-platform index is resolved to.
    pub platform: Platform,
    /// `false`: no certificate checks for this pull (podman's `--tls-verify=false`), and
    /// plain HTTP when the registry does not speak TLS.
    pub tls_verify: bool,
}

impl Default for PullOptions {
    fn default() -> Self {
        PullOptions {
            progress: Progress::Auto,
            platform: Platform::host(),
            tls_verify: true,
        }
    }
}

/// Whether `pull` draws progress bars.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Progress {
    /// A bar per layer on stderr when it is a terminal; nothing otherwise.
    #[default]
    Auto,
    /// Never.
    Quiet,
}

#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error(transparent)]
    Reference(#[from] ReferenceError),
    #[error("pull {reference}: {source}")]
    Registry {
        reference: String,
        source: OciDistributionError,
    },
    #[error("pull {reference}: cannot reach {registry}: {reason}")]
    Unreachable {
        reference: String,
        registry: String,
        reason: String,
        #[source]
        source: Box<OciDistributionError>,
    },
    #[error(
        "pull {reference}: access denied by {registry}, and there are no credentials for it \
         (run `husk login {registry}`, or check the name)"
    )]
    NoCredentials {
        reference: String,
        registry: String,
        #[source]
        source: Box<OciDistributionError>,
    },
    #[error(
        "pull {reference}: access denied by {registry} with the credentials from {origin} \
         (wrong or expired: run `husk login {registry}`; or the image does not exist)"
    )]
    Denied {
        reference: String,
        registry: String,
        origin: String,
        #[source]
        source: Box<OciDistributionError>,
    },
    #[error("pull {reference}: TLS certificate of {registry} not trusted ({reason}); {hint}")]
    Untrusted {
        reference: String,
        registry: String,
        reason: String,
        hint: String,
        #[source]
        source: Box<OciDistributionError>,
    },
    #[error("pull {reference}: credentials for {registry}: {source}")]
    Credentials {
        reference: String,
        registry: String,
        #[source]
        source: Box<CredentialsError>,
    },
    #[error("pull {reference}: {source}")]
    Transport {
        reference: String,
        #[source]
        source: Box<TransportError>,
    },
    #[error("pull {reference}: {reason}")]
    Invalid { reference: String, reason: String },
    #[error("pull {reference}: no image for {platform} (the registry has: {found})")]
    NoPlatform {
        reference: String,
        platform: String,
        found: String,
    },
    #[error("pull {reference}: blob {digest}: gave up after {attempts} tries: {source}")]
    Retries {
        reference: String,
        digest: String,
        attempts: u32,
        source: OciDistributionError,
    },
    #[error("pull {reference}: {source}")]
    Store {
        reference: String,
        source: StoreError,
    },
    #[error(transparent)]
    Import(#[from] ImportError),
    #[error("pull {reference}: cannot start the async runtime: {source}")]
    Runtime {
        reference: String,
        source: std::io::Error,
    },
}

const ACCEPT: &[&str] = &[
    platform::OCI_MANIFEST,
    platform::DOCKER_MANIFEST,
    platform::OCI_INDEX,
    platform::DOCKER_LIST,
];

/// Adapts a [`BlobWriter`] to `AsyncWrite` for `Client::pull_blob`, advancing a bar. Writes
/// are plain file writes; the runtime is single-threaded and has nothing else to do.
struct ProgressWriter<'a, 's> {
    blob: &'a mut BlobWriter<'s>,
    bar: &'a ProgressBar,
}

impl tokio::io::AsyncWrite for ProgressWriter<'_, '_> {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let r = this.blob.write(buf);
        if let Ok(n) = r {
            this.bar.inc(n as u64);
        }
        Poll::Ready(r)
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(self.get_mut().blob.flush())
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Turns what oci-client reports into what the user must do: log in, fix the credentials,
/// trust a CA.
fn classify(
    reference: &str,
    registry: &str,
    transport: &Transport,
    origin: Option<&str>,
    source: OciDistributionError,
) -> PullError {
    let (reference, registry) = (reference.to_string(), registry.to_string());
    let denied = match &source {
        OciDistributionError::UnauthorizedError { .. }
        | OciDistributionError::AuthenticationFailure(_) => true,
        OciDistributionError::RegistryError { envelope, .. } => envelope
            .errors
            .iter()
            .any(|e| matches!(e.code, OciErrorCode::Unauthorized | OciErrorCode::Denied)),
        _ => false,
    };
    if denied {
        return match origin {
            Some(o) => PullError::Denied {
                reference,
                registry,
                origin: o.to_string(),
                source: Box::new(source),
            },
            None => PullError::NoCredentials {
                reference,
                registry,
                source: Box::new(source),
            },
        };
    }
    if let OciDistributionError::RequestError(e) = &source {
        if let Some(reason) = certificate_failure(e) {
            return PullError::Untrusted {
                hint: transport.trust_hint(&registry),
                reference,
                registry,
                reason,
                source: Box::new(source),
            };
        }
        let reason = root_cause(e);
        return PullError::Unreachable {
            reference,
            registry,
            reason,
            source: Box::new(source),
        };
    }
    PullError::Registry { reference, source }
}

fn oci_ref(r: &Reference, digest: Option<&Digest>) -> oci_client::Reference {
    let (registry, repo) = (r.registry().to_string(), r.repository().to_string());
    match (digest.or(r.digest()), r.tag()) {
        (Some(d), _) => oci_client::Reference::with_digest(registry, repo, d.to_string()),
        (None, Some(t)) => oci_client::Reference::with_tag(registry, repo, t.to_string()),
        (None, None) => oci_client::Reference::with_tag(registry, repo, "latest".into()),
    }
}

impl Store {
    /// Pulls `reference` (blocking: runs a small tokio runtime inside), stores it, converts
    /// its layers and names it. Callers inside a tokio runtime use [`Store::pull_async`].
    pub fn pull(&self, reference: &str, opts: &PullOptions) -> Result<Image, PullError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|source| PullError::Runtime {
                reference: reference.to_string(),
                source,
            })?;
        rt.block_on(self.pull_async(reference, opts))
    }

    /// [`Store::pull`] inside a tokio runtime. On failure the store is swept, so a pull that
    /// broke off leaves no blob or layer disk behind.
    pub async fn pull_async(
        &self,
        reference: &str,
        opts: &PullOptions,
    ) -> Result<Image, PullError> {
        let pulled = self.pull_unswept(reference, opts).await;
        if pulled.is_err() {
            self.sweep();
        }
        pulled
    }

    async fn pull_unswept(&self, reference: &str, opts: &PullOptions) -> Result<Image, PullError> {
        let r: Reference = reference.parse()?;
        let shown = r.to_string();
        let transport_err = |source| PullError::Transport {
            reference: shown.clone(),
            source: Box::new(source),
        };
        let transport = Transport::from_env(opts.tls_verify).map_err(transport_err)?;
        let client = transport
            .endpoint(r.registry())
            .await
            .and_then(|e| e.oci_client())
            .map_err(transport_err)?;
        let found =
            credentials::lookup(&Locations::from_env(), r.registry()).map_err(|source| {
                PullError::Credentials {
                    reference: shown.clone(),
                    registry: r.registry().to_string(),
                    source: Box::new(source),
                }
            })?;
        let auth = match &found {
            Some(f) => {
                RegistryAuth::Basic(f.credential.username.clone(), f.credential.secret.clone())
            }
            None => RegistryAuth::Anonymous,
        };
        let origin = found.as_ref().map(|f| f.origin.as_str());
        let registry_err = |source| classify(&shown, r.registry(), &transport, origin, source);
        let store_err = |source| PullError::Store {
            reference: shown.clone(),
            source,
        };
        let invalid = |reason: String| PullError::Invalid {
            reference: shown.clone(),
            reason,
        };
        let _ingest = self.ingest_lock().map_err(store_err)?;

        let (bytes, _) = client
            .pull_manifest_raw(&oci_ref(&r, None), &auth, ACCEPT)
            .await
            .map_err(registry_err)?;
        check_size(self, bytes.len(), &invalid)?;
        let mut json = bytes.to_vec();
        let mut digest = Digest::of(&json);
        if let Some(want) = r.digest() {
            if *want != digest {
                return Err(invalid(format!(
                    "registry sent manifest {digest}, not the {want} asked for"
                )));
            }
        }
        if platform::is_index(&platform::media_type_of(&json)) {
            let index: IndexDoc = serde_json::from_slice(&json)
                .map_err(|e| invalid(format!("index {digest}: {e}")))?;
            let (chosen, _) =
                platform::select(&index.manifests, &opts.platform).map_err(|found| {
                    PullError::NoPlatform {
                        reference: shown.clone(),
                        platform: opts.platform.to_string(),
                        found,
                    }
                })?;
            let (bytes, _) = client
                .pull_manifest_raw(&oci_ref(&r, Some(&chosen)), &auth, ACCEPT)
                .await
                .map_err(registry_err)?;
            check_size(self, bytes.len(), &invalid)?;
            json = bytes.to_vec();
            digest = Digest::of(&json);
            if digest != chosen {
                return Err(invalid(format!(
                    "registry sent manifest {digest}, not the {chosen} its index lists"
                )));
            }
        }
        let manifest = oci_spec::image::ImageManifest::from_reader(&json[..])
            .map_err(|e| invalid(format!("manifest {digest}: {e}")))?;
        let parse = |d: &oci_spec::image::Digest| {
            d.to_string()
                .parse::<Digest>()
                .map_err(|e| invalid(format!("manifest {digest}: {e}")))
        };

        let bars = MultiProgress::with_draw_target(match opts.progress {
            Progress::Auto => ProgressDrawTarget::stderr(),
            Progress::Quiet => ProgressDrawTarget::hidden(),
        });
        let style =
            ProgressStyle::with_template("{prefix:.bold} {wide_bar} {bytes}/{total_bytes} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar());
        let config = parse(manifest.config().digest())?;
        let mut blobs = vec![(config, manifest.config().size(), true)];
        for l in manifest.layers() {
            blobs.push((parse(l.digest())?, l.size(), false));
        }
        let fetches = blobs.into_iter().map(|(d, size, is_config)| {
            let bar = bars.add(
                ProgressBar::new(size)
                    .with_style(style.clone())
                    .with_prefix(d.short().to_string()),
            );
            // The descriptor's size bounds what the registry may send.
            let max = if is_config {
                size.min(self.limits().max_json_bytes)
            } else {
                size
            };
            let (client, r, shown, registry_err) = (&client, &r, &shown, &registry_err);
            async move {
                if self.has_blob(&d) {
                    bar.finish_with_message("already present");
                    return Ok(());
                }
                self.fetch_blob(client, r, &d, max, &bar)
                    .await
                    .map_err(|e| e.into_pull_error(shown, &d, registry_err))?;
                bar.finish_with_message("done");
                Ok::<(), PullError>(())
            }
        });
        futures_util::stream::iter(fetches)
            .buffer_unordered(MAX_CONCURRENT_DOWNLOADS)
            .try_collect::<Vec<()>>()
            .await?;
        self.write_blob(&json[..], Some(&digest), None)
            .map_err(store_err)?;
        Ok(commit(self, &digest, vec![r.clone()])?)
    }
}

/// Why one blob's download failed.
enum FetchError {
    /// The transfer failed and will not be tried again.
    Registry(OciDistributionError),
    /// It kept breaking off.
    Retries(u32, OciDistributionError),
    Store(StoreError),
}

impl FetchError {
    /// `registry`: how a registry's own answer becomes a [`PullError`] ([`classify`]).
    fn into_pull_error(
        self,
        reference: &str,
        digest: &Digest,
        registry: impl Fn(OciDistributionError) -> PullError,
    ) -> PullError {
        let reference = reference.to_string();
        match self {
            FetchError::Registry(source) => registry(source),
            FetchError::Retries(attempts, source) => PullError::Retries {
                reference,
                digest: digest.to_string(),
                attempts,
                source,
            },
            FetchError::Store(source) => PullError::Store { reference, source },
        }
    }
}

/// Whether a failed transfer is worth another try: the connection or the server broke, not
/// the content (a digest or size that does not match, an auth or not-found answer).
fn is_transient(e: &OciDistributionError) -> bool {
    match e {
        // A certificate that is not trusted stays untrusted.
        OciDistributionError::RequestError(e) => certificate_failure(e).is_none(),
        OciDistributionError::ServerError { code, .. } => *code >= 500 || *code == 429,
        _ => false,
    }
}

impl Store {
    /// Downloads blob `d` (at most `max` bytes) into the store, retrying a transfer that
    /// breaks off; each try starts over with a fresh writer (a dropped one leaves nothing).
    async fn fetch_blob(
        &self,
        client: &oci_client::Client,
        r: &Reference,
        d: &Digest,
        max: u64,
        bar: &ProgressBar,
    ) -> Result<(), FetchError> {
        let mut backoff = FIRST_BACKOFF;
        let mut attempt = 1;
        loop {
            bar.set_position(0);
            let mut w = self.blob_writer(Some(max)).map_err(FetchError::Store)?;
            let got = client
                .pull_blob(
                    &oci_ref(r, None),
                    d.to_string().as_str(),
                    ProgressWriter { blob: &mut w, bar },
                )
                .await;
            match got {
                Ok(()) => return w.commit(Some(d)).map(drop).map_err(FetchError::Store),
                Err(e) if !is_transient(&e) => return Err(FetchError::Registry(e)),
                Err(e) if attempt == ATTEMPTS => return Err(FetchError::Retries(attempt, e)),
                Err(e) => {
                    bar.set_message(format!("retrying in {} ms ({e})", backoff.as_millis()));
                    tokio::time::sleep(backoff).await;
                    backoff *= 2;
                    attempt += 1;
                }
            }
        }
    }
}

fn check_size(
    store: &Store,
    len: usize,
    invalid: &impl Fn(String) -> PullError,
) -> Result<(), PullError> {
    if len as u64 > store.limits().max_json_bytes {
        return Err(invalid(format!(
            "manifest larger than {} bytes",
            store.limits().max_json_bytes
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_only_for_this_host() {
        for (r, local) in [
            ("localhost:5000/x", true),
            ("127.0.0.1:5000/x", true),
            ("busybox", false),
            ("quay.io/a/b", false),
        ] {
            assert_eq!(
                r.parse::<Reference>().unwrap().is_local_registry(),
                local,
                "{r}"
            );
        }
        let hex = "a".repeat(64);
        let r: Reference = format!("busybox@sha256:{hex}").parse().unwrap();
        let o = oci_ref(&r, None);
        assert_eq!(o.digest(), Some(format!("sha256:{hex}").as_str()));
        assert_eq!(
            (o.registry(), o.repository()),
            ("docker.io", "library/busybox")
        );
    }
}
