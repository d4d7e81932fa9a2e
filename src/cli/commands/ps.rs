use crate::cli::{Error, Format, GlobalOpts, PsArgs};
use crate::runtime::state::now;
use crate::runtime::{State, Status};
use crate::util::time::docker_time;

/// `.Field`s of `husk ps --format`, as docker names them.
const PS_FIELDS: &[&str] = &[
    "ID",
    "Image",
    "Command",
    "CreatedAt",
    "RunningFor",
    "Ports",
    "Status",
    "State",
    "Names",
];

pub fn run(g: &GlobalOpts, a: PsArgs) -> Result<i32, Error> {
    if let Format::Template(t) = &a.format {
        t.check(PS_FIELDS)?;
    }
    let rt = super::runtime(g)?;
    let shown: Vec<State> = rt
        .store
        .list()?
        .into_iter()
        .map(|mut s| {
            // Liveness from /proc, not from the file: right after a `kill -9` of a VMM.
            s.status = s.effective_status();
            s
        })
        .filter(|s| a.all || s.status == Status::Running)
        .collect();
    if a.quiet {
        for s in &shown {
            println!("{}", s.short_id());
        }
        return Ok(0);
    }
    let t = now();
    match &a.format {
        Format::Json => {
            println!(
                "{}",
                serde_json::to_string_pretty(&shown).expect("state serializes")
            );
            return Ok(0);
        }
        Format::Template(tmpl) => {
            for s in &shown {
                println!(
                    "{}",
                    tmpl.render(|f| match f {
                        "ID" => s.short_id().to_string(),
                        "Image" => s.image.clone(),
                        "Command" => command(s),
                        "CreatedAt" => docker_time(s.created),
                        "RunningFor" => format!("{} ago", ago(t.saturating_sub(s.created))),
                        "Ports" => ports(s),
                        "Status" => status(s, t),
                        "State" => s.status.as_str().to_string(),
                        "Names" => s.name.clone(),
                        _ => unreachable!("fields were checked against PS_FIELDS"),
                    })
                );
            }
            return Ok(0);
        }
        Format::Table => {}
    }
    let rows: Vec<[String; 8]> = shown
        .iter()
        .map(|s| {
            [
                s.short_id().to_string(),
                s.image.clone(),
                command(s),
                format!("{} ago", ago(t.saturating_sub(s.created))),
                status(s, t),
                addresses(s),
                ports(s),
                s.name.clone(),
            ]
        })
        .collect();
    let header = [
        "CONTAINER ID",
        "IMAGE",
        "COMMAND",
        "CREATED",
        "STATUS",
        "IP",
        "PORTS",
        "NAMES",
    ];
    let mut widths = header.map(str::len);
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: &[String]| {
        let mut l = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                l.push_str(c);
            } else {
                l.push_str(&format!("{c:<w$}   ", w = widths[i]));
            }
        }
        println!("{}", l.trim_end());
    };
    line(&header.map(String::from));
    for r in &rows {
        line(r);
    }
    Ok(0)
}

/// The guest's addresses while its network is up.
fn addresses(s: &State) -> String {
    s.network
        .as_ref()
        .map(|n| n.addresses.join(","))
        .unwrap_or_default()
}

fn ports(s: &State) -> String {
    let p: Vec<String> = s
        .config
        .network
        .ports
        .iter()
        .map(|p| p.to_string())
        .collect();
    p.join(", ")
}

pub(super) fn command(s: &State) -> String {
    let c = s.config.args.join(" ");
    let c = if c.chars().count() > 20 {
        format!("{}…", c.chars().take(19).collect::<String>())
    } else {
        c
    };
    format!("\"{c}\"")
}

pub(super) fn status(s: &State, t: u64) -> String {
    let since = |at: Option<u64>| ago(t.saturating_sub(at.unwrap_or(s.created)));
    match s.status {
        Status::Created => "Created".into(),
        Status::Running => format!("Up {}", since(s.started_at)),
        Status::Stopped | Status::Exited => {
            let word = if s.status == Status::Stopped {
                "Stopped"
            } else {
                "Exited"
            };
            match s.exit_code {
                Some(c) => format!("{word} ({c}) {} ago", since(s.finished_at)),
                None => format!("{word} {} ago", since(s.finished_at)),
            }
        }
    }
}

pub(super) fn ago(secs: u64) -> String {
    match secs {
        0..=1 => "1 second".into(),
        2..=59 => format!("{secs} seconds"),
        60..=119 => "1 minute".into(),
        120..=3599 => format!("{} minutes", secs / 60),
        3600..=7199 => "1 hour".into(),
        7200..=86399 => format!("{} hours", secs / 3600),
        _ => format!("{} days", secs / 86400),
    }
}
