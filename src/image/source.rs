//! The store as the container runtime's [`ImageSource`]: a reference → the image's run config
//! and its layers as read-only disks, and `USER` names → ids from the image's own files.

use super::{users, Reference, Store, StoreError};
use crate::runtime::{self, ImageConfig, ImageSource, ResolvedImage};

impl ImageSource for Store {
    fn resolve(&self, reference: &str) -> Result<ResolvedImage, runtime::Error> {
        let err = |detail: String| runtime::Error::Image {
            reference: reference.to_string(),
            detail,
        };
        let img = match self.get(reference) {
            Ok(i) => i,
            Err(StoreError::NotFound(_)) => {
                return Err(err(
                    "no such image; load it (`husk load -i FILE`) or pull it (`husk pull REF`)"
                        .into(),
                ))
            }
            Err(e) => return Err(err(e.to_string())),
        };
        let disks = self.layer_disks(&img).map_err(|e| err(e.to_string()))?;
        let rc = img.run_config();
        let name = img
            .references
            .iter()
            .find(|r| reference.parse::<Reference>().is_ok_and(|q| q == **r))
            .or(img.references.first())
            .map_or_else(|| img.id().to_string(), |r| r.to_string());
        let some = |v: Vec<String>| (!v.is_empty()).then_some(v);
        Ok(ResolvedImage {
            reference: name,
            id: Some(img.id().to_string()),
            config: ImageConfig {
                entrypoint: some(rc.entrypoint),
                cmd: some(rc.cmd),
                env: rc.env,
                working_dir: rc.working_dir,
                user: rc.user,
            },
            layer_disks: disks,
            layer_fs: "erofs".into(),
        })
    }

    fn user_ids(
        &self,
        image: &ResolvedImage,
        user: &str,
    ) -> Result<(u32, u32, Vec<u32>), runtime::Error> {
        let err = |detail: String| runtime::Error::Image {
            reference: image.reference.clone(),
            detail,
        };
        let what = image.id.as_deref().unwrap_or(&image.reference);
        let img = self.get(what).map_err(|e| err(e.to_string()))?;
        users::resolve(self, &img, user).map_err(|e| err(e.to_string()))
    }
}
