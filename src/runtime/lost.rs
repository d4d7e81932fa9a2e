//! Why a container's process (or an exec's) never reported its end: the connection to the
//! agent broke, and what broke it is told apart here, for the one line the user reads.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::time::Duration;

use super::lifecycle::Runtime;
use super::state::State;
use super::Error;

/// How long a VM whose agent connection broke gets to be seen gone (its exit reaches its pid a
/// moment after its sockets close). Waited on its pidfd, so a VM that went costs no more.
const VM_END_GRACE: Duration = Duration::from_millis(500);

/// The bytes of the console log's end read for its last line.
const CONSOLE_TAIL: u64 = 4096;
/// The most characters of that line quoted.
const LINE_MAX: usize = 160;

/// What ended `state`'s container (as recorded when the process started) under a process
/// whose end never came: removed, stopped, the VM gone (with its console's last line, where
/// a crash or husk-vmm's triple-fault report would be), or an agent that stopped answering
/// while the VM runs.
pub(super) fn cause(rt: &Runtime, state: &State) -> String {
    let gone = state.pid.as_ref().is_none_or(|p| p.wait_gone(VM_END_GRACE));
    match rt.load(&state.id) {
        Err(Error::NoSuchContainer(_)) => "the container was removed".into(),
        Ok(s) if s.stop_requested => "the container was stopped or killed".into(),
        _ if gone => match last_line(&state.console_log) {
            Some(line) => format!("the VM ended (its console's last line: {line:?})"),
            None => "the VM ended".into(),
        },
        _ => format!(
            "its agent stopped answering while the VM runs (console log: {})",
            state.console_log.display()
        ),
    }
}

/// The last line of the guest's console log with text in it, without control characters and
/// at most [`LINE_MAX`] characters: the guest wrote it, so it is bounded and cleaned.
fn last_line(console: &Path) -> Option<String> {
    let mut f = std::fs::File::open(console).ok()?;
    let len = f.metadata().ok()?.len();
    f.seek(SeekFrom::Start(len.saturating_sub(CONSOLE_TAIL)))
        .ok()?;
    let mut tail = Vec::new();
    f.take(CONSOLE_TAIL).read_to_end(&mut tail).ok()?;
    clean_last_line(&tail)
}

fn clean_last_line(tail: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(tail);
    let line = text
        .split(['\n', '\r'])
        .map(|l| l.chars().filter(|c| !c.is_control()).collect::<String>())
        .rfind(|l| !l.trim().is_empty())?;
    Some(line.trim().chars().take(LINE_MAX).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_line_with_text_is_taken_cleaned_and_bounded() {
        let log = b"[    0.1] booting\nKVM: triple fault at rip 0xffffffff81000000\r\n\n  \n";
        assert_eq!(
            clean_last_line(log).unwrap(),
            "KVM: triple fault at rip 0xffffffff81000000"
        );
        let hostile = [b"x\x1b[31mred\x07\n".as_slice(), &[b'y'; 10_000], b"\n"].concat();
        let l = clean_last_line(&hostile).unwrap();
        assert_eq!(l.len(), LINE_MAX);
        assert!(l.chars().all(|c| c == 'y'));
        assert_eq!(
            clean_last_line(b"a\x1b[0m\x00\xff\n").unwrap(),
            "a[0m\u{fffd}"
        );
        assert_eq!(clean_last_line(b"\n \n"), None);
        assert_eq!(clean_last_line(b""), None);
    }

    #[test]
    fn only_the_end_of_a_long_log_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("console.log");
        let mut body = "early line\n".repeat(10_000);
        body.push_str("Kernel panic - not syncing: Attempted to kill init!\n");
        std::fs::write(&p, body).unwrap();
        assert_eq!(
            last_line(&p).unwrap(),
            "Kernel panic - not syncing: Attempted to kill init!"
        );
        assert_eq!(last_line(&dir.path().join("missing")), None);
    }
}
