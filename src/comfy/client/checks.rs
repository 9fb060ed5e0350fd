//! The checks on arguments that go into a URL (prompt ids, file names,
//! subfolders), made before anything is sent: no separators where a path
//! segment is expected, no `..`, no absolute path, no backslash, no control
//! characters.
//!
//! Pure functions: they send nothing and only answer
//! [`ComfyError::InvalidArgument`].

use super::ComfyError;

/// A prompt id goes into a URL path: it must be non-empty and free of separators.
pub(super) fn check_prompt_id(prompt_id: &str) -> Result<(), ComfyError> {
    if prompt_id.is_empty()
        || prompt_id.len() > 128
        || prompt_id
            .chars()
            .any(|c| c == '/' || c == '\\' || c == '?' || c == '#' || c.is_control())
        || prompt_id == "."
        || prompt_id == ".."
    {
        return Err(ComfyError::InvalidArgument {
            field: "prompt_id",
            message: "must be a non-empty id without path separators".into(),
        });
    }
    Ok(())
}

/// What is wrong with a relative path argument, if anything.
/// What is wrong with a relative path argument, if anything.
fn path_problem(text: &str) -> Option<&'static str> {
    if text.contains("..") {
        Some("must not contain `..`")
    } else if text.contains('\\') {
        Some("must not contain a backslash")
    } else if text.starts_with('/') || text.as_bytes().get(1) == Some(&b':') {
        Some("must not be an absolute path")
    } else if text.chars().any(char::is_control) {
        Some("must not contain control characters")
    } else {
        None
    }
}

/// A file name for `/view` or an upload: not empty, no separators, no `..`.
pub(super) fn check_file_name(filename: &str) -> Result<(), ComfyError> {
    let problem = if filename.is_empty() {
        Some("must not be empty")
    } else if filename.contains('/') && !filename.starts_with('/') {
        Some("must not contain `/` (use subfolder)")
    } else {
        path_problem(filename)
    };
    match problem {
        Some(message) => Err(ComfyError::InvalidArgument {
            field: "filename",
            message: message.into(),
        }),
        None => Ok(()),
    }
}

/// A relative subfolder (may be empty): no `..`, no absolute path, no backslash.
pub(super) fn check_subfolder(subfolder: &str) -> Result<(), ComfyError> {
    match path_problem(subfolder) {
        Some(message) => Err(ComfyError::InvalidArgument {
            field: "subfolder",
            message: message.into(),
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_arguments_are_checked() {
        for ok in ["a.png", "success_00001_.png", "a b.png", "a.b.c"] {
            check_file_name(ok).unwrap();
        }
        for bad in [
            "",
            "..",
            "../etc/passwd",
            "a/../b",
            "/etc/passwd",
            "a\\b",
            "C:x",
            "a\nb",
            "x/y.png",
        ] {
            assert!(check_file_name(bad).is_err(), "{bad:?}");
        }
        for ok in ["", "proto", "a/b"] {
            check_subfolder(ok).unwrap();
        }
        for bad in ["..", "a/../..", "/abs", "a\\b", "C:\\x", "\0"] {
            assert!(check_subfolder(bad).is_err(), "{bad:?}");
        }
        for bad in ["", "a/b", "..", "a?b", "a#b"] {
            assert!(check_prompt_id(bad).is_err(), "{bad:?}");
        }
        check_prompt_id("a12acd6c-351a-4f4a-9bf2-99c14525783c").unwrap();
    }
}
