//! The steps of the agent's work on one request and how long each took, sent back to the
//! host (`husk run --timings` shows them under the phase they belong to).

use std::time::Instant;

use husk_protocol::{GuestStep, MAX_GUEST_STEPS};

/// Steps ended so far; the next one runs from the last [`mark`](Steps::mark).
pub struct Steps {
    last: Instant,
    done: Vec<GuestStep>,
}

impl Steps {
    pub fn start() -> Steps {
        Steps {
            last: Instant::now(),
            done: Vec::new(),
        }
    }

    /// Ends step `name` now. Past [`MAX_GUEST_STEPS`] the rest go uncounted.
    pub fn mark(&mut self, name: &str) {
        let now = Instant::now();
        if self.done.len() < MAX_GUEST_STEPS {
            self.done.push(GuestStep {
                name: name.to_string(),
                micros: u64::try_from((now - self.last).as_micros()).unwrap_or(u64::MAX),
            });
        }
        self.last = now;
    }

    pub fn into_vec(self) -> Vec<GuestStep> {
        self.done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_are_kept_in_order_and_bounded() {
        let mut s = Steps::start();
        std::thread::sleep(std::time::Duration::from_millis(2));
        s.mark("first");
        s.mark("second");
        for _ in 0..2 * MAX_GUEST_STEPS {
            s.mark("more");
        }
        let v = s.into_vec();
        assert_eq!(v.len(), MAX_GUEST_STEPS);
        assert_eq!(
            (v[0].name.as_str(), v[1].name.as_str()),
            ("first", "second")
        );
        assert!(v[0].micros >= 2000, "{}", v[0].micros);
    }
}
