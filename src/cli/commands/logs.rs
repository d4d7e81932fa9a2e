use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::time::Duration;

use crate::cli::{Error, GlobalOpts, LogsArgs};

pub fn run(g: &GlobalOpts, a: LogsArgs) -> Result<i32, Error> {
    let rt = super::runtime(g)?;
    let state = rt.store.resolve(&a.container)?;
    let mut out = std::io::stdout().lock();
    let mut file = match std::fs::File::open(&state.log_file) {
        Ok(f) => f,
        // A container run in the foreground (or not started) has no log.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !a.follow => return Ok(0),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&state.log_file)
            .map_err(|source| crate::runtime::Error::Io {
                path: state.log_file.clone(),
                source,
            })?,
        Err(source) => {
            return Err(crate::runtime::Error::Io {
                path: state.log_file.clone(),
                source,
            }
            .into())
        }
    };
    let mut buf = vec![0u8; 64 << 10];
    let mut pos = 0u64;
    loop {
        file.seek(SeekFrom::Start(pos))?;
        let n = file.read(&mut buf)?;
        if n > 0 {
            out.write_all(&buf[..n])?;
            out.flush()?;
            pos += n as u64;
            continue;
        }
        if !a.follow {
            return Ok(0);
        }
        // Follow while the monitor still writes; then one last drain.
        let live = rt
            .load(&state.id)
            .map(|s| s.monitor_alive())
            .unwrap_or(false);
        if !live {
            let mut rest = Vec::new();
            file.read_to_end(&mut rest)?;
            out.write_all(&rest)?;
            return Ok(0);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
