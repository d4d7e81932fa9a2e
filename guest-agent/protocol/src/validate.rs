//! Checks applied to every decoded message before either side acts on it.
//!
//! Serde proves a message has the right shape; these checks prove it is safe to hand to the
//! kernel: sizes within [`crate::limits`], no NUL bytes in anything that becomes a C string,
//! ids that cannot escape a directory, absolute paths where the kernel wants them. Each failure
//! names the field, so the error reply tells the host exactly what to fix.

use std::fmt;

use crate::limits::{MAX_ID_LEN, MAX_PATH_LEN, MAX_TOKEN_LEN};

/// A message that decoded but breaks a rule. `field` is a dotted path such as
/// `process.args[3]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidationError {
    pub field: String,
    pub problem: String,
}

impl ValidationError {
    pub fn new(field: impl Into<String>, problem: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            problem: problem.into(),
        }
    }

    /// Prefixes the field path with the enclosing field, as the error bubbles up.
    pub fn within(mut self, parent: &str) -> Self {
        self.field = if self.field.is_empty() {
            parent.to_string()
        } else if self.field.starts_with('[') {
            format!("{parent}{}", self.field)
        } else {
            format!("{parent}.{}", self.field)
        };
        self
    }
}

impl fmt::Display for ValidationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.problem)
    }
}

impl std::error::Error for ValidationError {}

pub(crate) type Check = Result<(), ValidationError>;

/// Error for `field` with `problem`.
pub(crate) fn fail(field: &str, problem: impl Into<String>) -> Check {
    Err(ValidationError::new(field, problem))
}

/// A list no longer than `max`, each item checked by `item` and located by index on failure.
pub(crate) fn check_list<T>(
    field: &str,
    items: &[T],
    max: usize,
    mut item: impl FnMut(&T) -> Check,
) -> Check {
    if items.len() > max {
        return fail(
            field,
            format!("{} entries, at most {max} allowed", items.len()),
        );
    }
    for (i, it) in items.iter().enumerate() {
        item(it).map_err(|e| e.within(&format!("[{i}]")).within(field))?;
    }
    Ok(())
}

/// A string the kernel will see as a C string: bounded and free of NUL bytes.
pub(crate) fn check_cstr(field: &str, s: &str, max: usize) -> Check {
    if s.len() > max {
        return fail(
            field,
            format!("{} bytes long, at most {max} allowed", s.len()),
        );
    }
    if s.as_bytes().contains(&0) {
        return fail(field, "contains a NUL byte");
    }
    Ok(())
}

/// A non-empty C string of at most [`MAX_TOKEN_LEN`] bytes.
pub(crate) fn check_token(field: &str, s: &str) -> Check {
    if s.is_empty() {
        return fail(field, "must not be empty");
    }
    check_cstr(field, s, MAX_TOKEN_LEN)
}

/// An absolute path without `..` components: where these paths land (mount targets, masked
/// paths) a `..` could climb out of the container root.
pub(crate) fn check_abs_path(field: &str, s: &str) -> Check {
    check_cstr(field, s, MAX_PATH_LEN)?;
    if !s.starts_with('/') {
        return fail(field, format!("{s:?} is not an absolute path"));
    }
    if s.split('/').any(|c| c == "..") {
        return fail(field, format!("{s:?} contains a '..' component"));
    }
    Ok(())
}

/// A container or exec id: 1..=[`MAX_ID_LEN`] bytes of `[A-Za-z0-9_.+-]`, not `.` or `..`
/// (runc's rule), so the agent can use it as a directory name without escaping.
pub(crate) fn check_id(field: &str, s: &str) -> Check {
    if s.is_empty() || s.len() > MAX_ID_LEN {
        return fail(
            field,
            format!("must be 1 to {MAX_ID_LEN} bytes long (got {})", s.len()),
        );
    }
    if s == "." || s == ".." {
        return fail(field, format!("{s:?} is not a valid id"));
    }
    let ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '+' | '-');
    if !s.chars().all(ok) {
        return fail(
            field,
            format!("{s:?} may only contain letters, digits and _ . + -"),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_paths_nest() {
        let e = check_list("args", &["a", "b\0"], 10, |s| check_cstr("", s, 10))
            .unwrap_err()
            .within("process");
        assert_eq!(e.field, "process.args[1]");
        assert_eq!(e.to_string(), "process.args[1]: contains a NUL byte");
    }

    #[test]
    fn ids() {
        assert!(check_id("id", "web-1.a_b+c").is_ok());
        for bad in ["", ".", "..", "a/b", "a b", &"x".repeat(MAX_ID_LEN + 1)] {
            assert!(check_id("id", bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn paths() {
        assert!(check_abs_path("p", "/proc/kcore").is_ok());
        for bad in ["proc", "/a/../b", "/..", "/a\0"] {
            assert!(check_abs_path("p", bad).is_err(), "{bad:?} accepted");
        }
    }
}
