//! Layers as read-only disks: each layer blob is unpacked (hostile input) into a staging
//! directory with OCI whiteouts turned into overlayfs ones, then packed by `mkfs.erofs` into
//! an image cached by the layer's digest and shared by every image that uses it.

pub mod compression;
pub mod convert;
pub mod path;
pub mod unpack;
pub mod whiteout;

pub use convert::{convert, ConvertError, Converted};
pub use unpack::UnpackError;

#[cfg(test)]
mod tests;
