use crate::cli::{Error, GlobalOpts, KillArgs};

pub fn run(g: &GlobalOpts, a: KillArgs) -> Result<i32, Error> {
    let sig = parse_signal(&a.signal)?;
    let rt = super::runtime(g)?;
    super::each(&a.containers, |q| {
        rt.kill(q, sig)?;
        Ok(q.to_string())
    })
}

/// `9`, `KILL` or `SIGKILL` (any case).
pub fn parse_signal(s: &str) -> Result<i32, Error> {
    if let Ok(n) = s.parse::<i32>() {
        if (1..=64).contains(&n) {
            return Ok(n);
        }
    }
    let name = s.to_ascii_uppercase();
    let name = name.strip_prefix("SIG").unwrap_or(&name);
    let n = match name {
        "HUP" => libc::SIGHUP,
        "INT" => libc::SIGINT,
        "QUIT" => libc::SIGQUIT,
        "KILL" => libc::SIGKILL,
        "USR1" => libc::SIGUSR1,
        "USR2" => libc::SIGUSR2,
        "TERM" => libc::SIGTERM,
        "CONT" => libc::SIGCONT,
        "STOP" => libc::SIGSTOP,
        "WINCH" => libc::SIGWINCH,
        "ALRM" => libc::SIGALRM,
        _ => {
            return Err(Error::Usage(format!(
                "invalid signal {s:?}: use a number (1-64) or a name such as TERM or KILL"
            )))
        }
    };
    Ok(n)
}

#[cfg(test)]
mod tests {
    #[test]
    fn signals() {
        assert_eq!(super::parse_signal("9").unwrap(), 9);
        assert_eq!(super::parse_signal("sigterm").unwrap(), 15);
        assert_eq!(super::parse_signal("HUP").unwrap(), 1);
        assert!(super::parse_signal("NOPE").is_err());
        assert!(super::parse_signal("99").is_err());
    }
}
