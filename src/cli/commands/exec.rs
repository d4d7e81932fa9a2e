use crate::cli::{Error, ExecArgs, GlobalOpts};
use crate::runtime::exec::{exec, ExecOptions};

pub fn run(g: &GlobalOpts, a: ExecArgs) -> Result<i32, Error> {
    let rt = super::runtime(g)?;
    let opts = ExecOptions {
        args: a.command,
        env: a.env,
        workdir: a.workdir,
        user: a.user,
        stdin: a.interactive,
        tty: a.tty,
    };
    Ok(exec(&rt, &a.container, &opts)?)
}
