use crate::cli::images;
use crate::cli::{Error, ExecArgs, GlobalOpts};
use crate::image::ImageSource;
use crate::runtime::exec::{exec, ExecOptions, CUT_EXIT_CODE};
use crate::runtime::spec;

pub fn run(g: &GlobalOpts, a: ExecArgs) -> Result<i32, Error> {
    let rt = super::runtime(g)?;
    let mut additional_gids = Vec::new();
    let user = match a.user {
        // A name is looked up in the container's image, as `run -u` does.
        Some(u) if spec::parse_user(&u).is_err() => {
            let state = rt.store.resolve(&a.container)?;
            let image_store = images::open(&g.root)?;
            let what = state.image_id.as_deref().unwrap_or(&state.image);
            let img = image_store
                .resolve(what)
                .map_err(crate::runtime::Error::from)?;
            let (uid, gid, groups) = image_store
                .user_ids(&img, &u)
                .map_err(crate::runtime::Error::from)?;
            additional_gids = groups;
            Some(format!("{uid}:{gid}"))
        }
        u => u,
    };
    let opts = ExecOptions {
        args: a.command,
        env: a.env,
        workdir: a.workdir,
        user,
        additional_gids,
        stdin: a.interactive,
        tty: a.tty,
    };
    match exec(&rt, &a.container, &opts) {
        // Said in one line, and the exit code of a process killed with its VM.
        Err(e @ crate::runtime::Error::ExecCut { .. }) => {
            eprintln!("husk: {e}");
            Ok(CUT_EXIT_CODE)
        }
        r => Ok(r?),
    }
}
