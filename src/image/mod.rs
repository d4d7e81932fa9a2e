//! The image store: OCI images kept as content-addressed blobs, imported from docker-archive
//! and oci-archive tars, OCI layout directories and registries, with each layer converted
//! once into a read-only erofs disk that every image and container using it shares.
//!
//! The store is what a container's image comes from ([`ImageSource`], `source.rs`), and
//! cleans up after itself: a failed load or pull is swept ([`Store::gc`]). Images go back out
//! as docker-archive or oci-archive tars (`export.rs`, `husk save`) and are pruned in bulk
//! through the same index update and GC (`prune.rs`).
//!
//! Everything an image supplies is untrusted: digests are checked before a blob gets its
//! name, JSON is size-bounded, and layers are unpacked by [`layer::unpack`], which refuses any
//! entry that would land outside the layer root.
//!
//! ```no_run
//! use husk::image::{Store, Progress};
//! let store = Store::open("/var/lib/husk")?;
//! let images = store.load("busybox.tar".as_ref())?;
//! let disks = store.layer_disks(&images[0])?; // bottom layer first
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod credentials;
pub mod digest;
pub mod export;
pub mod import;
pub mod index;
pub mod layer;
pub mod login;
pub mod prune;
pub mod pull;
pub mod record;
pub mod reference;
pub mod scratch;
mod source;
pub mod store;
pub mod transport;
pub mod users;

pub use digest::Digest;
pub use export::{ArchiveFormat, ExportError};
pub use import::ImportError;
pub use layer::{ConvertError, Converted};
pub use prune::{PruneScope, Pruned};
pub use pull::{Progress, PullError, PullOptions};
pub use record::{Image, Layer, RunConfig};
pub use reference::Reference;
pub use source::{ImageConfig, ImageSource, ResolvedImage, SourceError};
pub use store::{GcStats, Limits, Store, StoreError, DEFAULT_ROOT};
pub use users::UserError;
