use crate::cli::{Error, GlobalOpts, RmArgs};

pub fn run(g: &GlobalOpts, a: RmArgs) -> Result<i32, Error> {
    let rt = super::runtime(g)?;
    super::each(&a.containers, |q| {
        rt.remove(q, a.force)?;
        Ok(q.to_string())
    })
}
