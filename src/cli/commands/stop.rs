use std::time::Duration;

use crate::cli::{Error, GlobalOpts, StopArgs};

pub fn run(g: &GlobalOpts, a: StopArgs) -> Result<i32, Error> {
    let rt = super::runtime(g)?;
    super::each(&a.containers, |q| {
        rt.stop(q, Duration::from_secs(a.time))?;
        Ok(q.to_string())
    })
}
