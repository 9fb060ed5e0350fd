//! The fake's folders (`output`, `input`, `temp`) and the path rules ComfyUI
//! applies to them: annotated names (`x.png [output]`), lexical
//! normalization, the "stay inside the base folder" checks, the
//! `prefix_00001_.png` counter and `mimetypes`-style content types.
//!
//! Pure path logic plus small synchronous file-system reads; it knows
//! nothing of HTTP or prompts.

use std::path::{Component, Path, PathBuf};

/// The three folders ComfyUI serves files from.
#[derive(Debug, Clone)]
pub(crate) struct Dirs {
    /// Where SaveImage and TestWriteBlob write (`type=output`).
    pub(crate) output: PathBuf,
    /// Where uploads go and LoadImage reads (`type=input`).
    pub(crate) input: PathBuf,
    /// Where PreviewImage writes (`type=temp`).
    pub(crate) temp: PathBuf,
}

impl Dirs {
    /// The folder for a `type` query value, or `None` for an unknown type.
    pub(crate) fn by_type(&self, kind: &str) -> Option<&Path> {
        match kind {
            "output" => Some(&self.output),
            "input" => Some(&self.input),
            "temp" => Some(&self.temp),
            _ => None,
        }
    }

    /// `folder_paths.annotated_filepath`: strips a ` [output]`, ` [input]`
    /// or ` [temp]` suffix and returns the folder it names, if any.
    pub(crate) fn annotated<'a>(&self, name: &'a str) -> (&'a str, Option<&Path>) {
        for (suffix, dir) in [
            (" [output]", &self.output),
            (" [input]", &self.input),
            (" [temp]", &self.temp),
        ] {
            if let Some(stripped) = name.strip_suffix(suffix) {
                return (stripped, Some(dir.as_path()));
            }
        }
        (name, None)
    }

    /// The file an annotated input name (LoadImage's `image`) points to, if
    /// it stays inside its folder.
    pub(crate) fn annotated_input_path(&self, name: &str) -> Option<PathBuf> {
        let (name, dir) = self.annotated(name);
        let base = dir.unwrap_or(&self.input);
        let path = normalize(&base.join(name));
        path.starts_with(base).then_some(path)
    }
}

/// `os.path.normpath(os.path.abspath(p))` for paths that are already
/// absolute: resolves `.` and `..` lexically.
pub(crate) fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other.as_os_str()),
        }
    }
    out
}

/// `os.path.normpath` of a relative prefix, as a list of parts; `None` when
/// it climbs above its start or is absolute (it would leave the folder).
pub(crate) fn relative_parts(prefix: &str) -> Option<Vec<String>> {
    if prefix.starts_with('/') {
        return None;
    }
    let mut parts: Vec<String> = Vec::new();
    for part in prefix.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            other => parts.push(other.to_owned()),
        }
    }
    Some(parts)
}

/// Where a save goes: `folder_paths.get_save_image_path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SavePath {
    /// The folder the files go to (created if missing).
    pub(crate) folder: PathBuf,
    /// The file name prefix, without folders.
    pub(crate) filename: String,
    /// The first free counter for that prefix in that folder.
    pub(crate) counter: u64,
    /// The folder relative to the base, `/`-separated (`""` for the base).
    pub(crate) subfolder: String,
}

/// Resolves `prefix` (`"proto/success"`) inside `base` and finds the next
/// counter the way ComfyUI does: one more than the largest `NNNNN` among
/// files named `<filename>_NNNNN_…`. Fails like ComfyUI when the prefix
/// leaves the folder.
pub(crate) fn save_path(base: &Path, prefix: &str) -> Result<SavePath, String> {
    let escape = || {
        format!(
            "**** ERROR: Saving image outside the output folder is not allowed.\n full_output_folder: {}\n         output_dir: {}",
            base.join(prefix).display(),
            base.display()
        )
    };
    let mut parts = relative_parts(prefix).ok_or_else(escape)?;
    let filename = parts.pop().unwrap_or_default();
    let subfolder = parts.join("/");
    let folder = parts
        .iter()
        .fold(base.to_path_buf(), |p, part| p.join(part));
    std::fs::create_dir_all(&folder).map_err(|e| format!("{e}"))?;
    let prefix_len = filename.chars().count();
    let mut counter = 0;
    if let Ok(entries) = std::fs::read_dir(&folder) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let chars: Vec<char> = name.chars().collect();
            if chars.len() <= prefix_len {
                continue;
            }
            let head: String = chars[..prefix_len].iter().collect();
            if head != filename || chars[prefix_len] != '_' {
                continue;
            }
            let tail: String = chars[prefix_len + 1..].iter().collect();
            let digits = tail.split('_').next().unwrap_or_default();
            let value = digits.parse::<u64>().unwrap_or(0);
            counter = counter.max(value);
        }
    }
    Ok(SavePath {
        folder,
        filename,
        counter: counter.saturating_add(1),
        subfolder,
    })
}

/// The content type `mimetypes.guess_type` gives for a file name, if any.
pub(crate) fn guess_type(name: &str) -> Option<&'static str> {
    let extension = name.rsplit_once('.')?.1.to_ascii_lowercase();
    Some(match extension.as_str() {
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "webp" => "image/webp",
        "gif" => "image/gif",
        "bmp" => "image/bmp",
        "tif" | "tiff" => "image/tiff",
        "svg" => "image/svg+xml",
        "usdz" => "model/vnd.usdz+zip",
        "glb" => "model/gltf-binary",
        "gltf" => "model/gltf+json",
        "obj" => "model/obj",
        "mp4" => "video/mp4",
        "webm" => "video/webm",
        "mov" => "video/quicktime",
        "wav" => "audio/x-wav",
        "mp3" => "audio/mpeg",
        "flac" => "audio/flac",
        "ogg" => "audio/ogg",
        "json" => "application/json",
        "txt" => "text/plain",
        "md" => "text/markdown",
        "html" | "htm" => "text/html",
        "js" => "text/javascript",
        "css" => "text/css",
        "xml" => "text/xml",
        "bin" => "application/octet-stream",
        "zip" => "application/zip",
        _ => return None,
    })
}

/// Content types that could run script in the page's origin; `/view` sends
/// them as downloads.
pub(crate) fn is_dangerous_type(content_type: &str) -> bool {
    matches!(
        content_type,
        "text/html" | "text/javascript" | "text/css" | "text/xml" | "image/svg+xml"
    )
}

/// The image files of the input folder, sorted: LoadImage's choices.
pub(crate) fn input_images(dir: &Path) -> Vec<String> {
    let mut files: Vec<String> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|name| guess_type(name).is_some_and(|t| t.starts_with("image/")))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_parts_refuse_escapes() {
        assert_eq!(
            relative_parts("proto/success"),
            Some(vec!["proto".to_owned(), "success".to_owned()])
        );
        assert_eq!(relative_parts("a/../b"), Some(vec!["b".to_owned()]));
        assert_eq!(relative_parts("../x"), None);
        assert_eq!(relative_parts("/etc/x"), None);
    }

    #[test]
    fn save_path_counts_like_comfyui() {
        let dir = std::env::temp_dir().join(format!("fake-files-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(dir.join("proto")).unwrap();
        std::fs::write(dir.join("proto/success_00001_.png"), b"x").unwrap();
        std::fs::write(dir.join("proto/success_00007_.png"), b"x").unwrap();
        std::fs::write(dir.join("proto/successor_00009_.png"), b"x").unwrap();
        let path = save_path(&dir, "proto/success").unwrap();
        assert_eq!(path.counter, 8);
        assert_eq!(path.subfolder, "proto");
        assert_eq!(path.filename, "success");
        assert!(save_path(&dir, "../out").is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn normalize_resolves_parents() {
        assert_eq!(
            normalize(Path::new("/a/b/../c/./d")),
            PathBuf::from("/a/c/d")
        );
    }
}
