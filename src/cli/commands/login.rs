//! `login`, `logout`: registry credentials, checked against the registry before they are
//! kept, where docker keeps them (`image::credentials`). Secrets are never printed.

use std::io::{self, BufRead, IsTerminal, Read, Write};

use crate::cli::{Error, LoginArgs, LogoutArgs};
use crate::image::credentials::{
    self, registry_key, server_address, Credential, Locations, Stored, DOCKER_HUB_SERVER,
};
use crate::image::login::verify;
use crate::image::transport::Transport;
use crate::image::Reference;

/// Where Docker Hub's registry API answers (`docker.io` only names it).
const DOCKER_HUB_API: &str = "registry-1.docker.io";

/// The credentials key of a `login`/`logout` argument; an error unless it names a registry.
fn registry_arg(arg: Option<&str>) -> Result<String, Error> {
    let arg = arg.unwrap_or(DOCKER_HUB_SERVER);
    let key = registry_key(arg);
    let parsed = format!("{key}/x").parse::<Reference>().ok();
    match parsed {
        Some(r) if r.registry() == key => Ok(key),
        _ => Err(Error::Usage(format!(
            "{arg:?} is not a registry (HOST[:PORT])"
        ))),
    }
}

pub fn login(a: LoginArgs) -> Result<i32, Error> {
    let key = registry_arg(a.registry.as_deref())?;
    let stdin = io::stdin();
    let username = match a.username {
        Some(u) => u,
        None if !a.password_stdin && stdin.is_terminal() => prompt("Username: ")?,
        None => {
            return Err(Error::Usage(
                "login: give the username with -u (no terminal to ask on)".into(),
            ))
        }
    };
    let secret = if let Some(p) = a.password {
        eprintln!("WARNING! Using --password via the CLI is insecure. Use --password-stdin.");
        p
    } else if a.password_stdin {
        let mut s = String::new();
        stdin.lock().read_to_string(&mut s)?;
        s.trim_end_matches(['\n', '\r']).to_string()
    } else if stdin.is_terminal() {
        prompt_hidden("Password: ")?
    } else {
        return Err(Error::Usage(
            "login: give the password with --password-stdin or -p (no terminal to ask on)".into(),
        ));
    };
    if username.is_empty() || secret.is_empty() {
        return Err(Error::Usage(
            "login: the username and the password must not be empty".into(),
        ));
    }
    let cred = Credential { username, secret };
    let transport =
        Transport::from_env(a.tls_verify).map_err(|e| Error::Image(format!("login: {e}")))?;
    let host = if key == registry_key(DOCKER_HUB_SERVER) {
        DOCKER_HUB_API
    } else {
        key.as_str()
    };
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(verify(&transport, host, &cred))
        .map_err(|e| Error::Image(e.to_string()))?;
    let stored = credentials::store(&Locations::from_env(), &key, &cred)
        .map_err(|e| Error::Image(format!("login: credentials not stored: {e}")))?;
    if let Stored::Inline(path) = stored {
        eprintln!(
            "WARNING! Your password will be stored unencrypted in {}.",
            path.display()
        );
    }
    println!("Login Succeeded");
    Ok(0)
}

pub fn logout(a: LogoutArgs) -> Result<i32, Error> {
    let key = registry_arg(a.registry.as_deref())?;
    let had = credentials::erase(&Locations::from_env(), &key)
        .map_err(|e| Error::Image(format!("logout: {e}")))?;
    if had {
        println!("Removing login credentials for {}", server_address(&key));
    } else {
        println!("Not logged in to {}", server_address(&key));
    }
    Ok(0)
}

fn prompt(label: &str) -> Result<String, Error> {
    eprint!("{label}");
    io::stderr().flush()?;
    let mut line = String::new();
    io::stdin().lock().read_line(&mut line)?;
    Ok(line.trim_end_matches(['\n', '\r']).to_string())
}

/// Reads a line from the terminal on stdin with echo off (restored even on error).
fn prompt_hidden(label: &str) -> Result<String, Error> {
    // SAFETY: termios is plain data; an all-zero value is valid and tcgetattr fills it.
    let mut saved: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: fd 0 is open (stdin is a terminal) and `saved` is a valid termios to fill.
    if unsafe { libc::tcgetattr(libc::STDIN_FILENO, &mut saved) } != 0 {
        return Err(io::Error::last_os_error().into());
    }
    let mut quiet = saved;
    quiet.c_lflag &= !libc::ECHO;
    // SAFETY: fd 0 is open and `quiet` is a valid termios.
    if unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &quiet) } != 0 {
        return Err(io::Error::last_os_error().into());
    }
    let line = prompt(label);
    // SAFETY: as above, restoring the settings read before.
    let restored = unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &saved) };
    eprintln!();
    if restored != 0 {
        return Err(io::Error::last_os_error().into());
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_arguments() {
        assert_eq!(registry_arg(None).unwrap(), "docker.io");
        for hub in [
            "docker.io",
            "index.docker.io",
            "https://index.docker.io/v1/",
        ] {
            assert_eq!(registry_arg(Some(hub)).unwrap(), "docker.io");
        }
        assert_eq!(
            registry_arg(Some("127.0.0.2:5000")).unwrap(),
            "127.0.0.2:5000"
        );
        assert_eq!(registry_arg(Some("https://quay.io")).unwrap(), "quay.io");
        assert!(registry_arg(Some("not a host")).is_err());
    }
}
