use crate::cli::{Error, GlobalOpts, StartArgs};
use crate::runtime::monitor;

pub fn run(g: &GlobalOpts, a: StartArgs) -> Result<i32, Error> {
    let rt = super::runtime(g)?;
    super::each(&a.containers, |q| {
        let s = rt.store.resolve(q)?;
        monitor::spawn(&rt, &s.id)?;
        Ok(q.to_string())
    })
}
