//! An execution's artifacts: which output files of a finished ComfyUI prompt are kept, their
//! download into one folder per execution (`<root>/<execution folder>/<path>`), and opening them
//! again for streaming to a client.
//!
//! Every path here is relative, `/`-separated and sanitized, and `open` serves only the paths
//! recorded for the execution, through no symbolic link, so a client can never reach another file
//! on disk. This module owns the artifact folder only: it does not decide when to download, does
//! not record which artifacts an execution has (the executor and the store do), and knows no gRPC.

use std::collections::{BTreeMap, HashSet};
use std::io;
use std::path::{Path, PathBuf};

use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;
use uuid::Uuid;

use crate::comfy::client::{ComfyClient, ComfyError};
use crate::comfy::wire::{FileType, NodeId, NodeOutput, OutputFile};
use crate::runtime::workflow_checks::OUTPUT_ROOT;

/// One file to keep: where ComfyUI has it, and its path inside the execution's folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArtifactFile {
    /// The file as ComfyUI lists it (what `GET /view` needs).
    pub source: OutputFile,
    /// Relative, `/`-separated, sanitized path inside the execution's folder.
    pub path: String,
}

/// An artifact opened for streaming.
#[derive(Debug)]
pub struct OpenArtifact {
    /// The open file, positioned at its start.
    pub file: tokio::fs::File,
    /// Its size in bytes when it was opened.
    pub size: u64,
    /// Its MIME type, from the extension (see [`content_type`]).
    pub content_type: &'static str,
}

/// Why an artifact could not be downloaded or opened. Every variant names the artifact by its
/// relative path only, so the messages are safe to send to clients; none carries a host path.
#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    /// The path is not one of the execution's recorded artifacts.
    #[error("path `{path}` is not an artifact of this execution")]
    NotAnArtifact {
        /// The path asked for.
        path: String,
    },
    /// The artifact was recorded but is no longer on disk.
    #[error("artifact `{path}` is no longer on disk")]
    Missing {
        /// The artifact's path.
        path: String,
    },
    /// The path or what lies on disk is unsafe to serve: a symbolic link, not a regular file, or a
    /// path that is not in sanitized form.
    #[error("artifact `{path}` refused: {reason}")]
    Refused {
        /// The artifact's path.
        path: String,
        /// Why.
        reason: String,
    },
    /// ComfyUI did not deliver the file.
    #[error("downloading artifact `{path}` failed: {source}")]
    Download {
        /// The artifact's path.
        path: String,
        /// The client's error.
        source: ComfyError,
    },
    /// Reading or writing the artifact folder failed.
    #[error("i/o error on artifact `{path}`: {source}")]
    Io {
        /// The artifact's path.
        path: String,
        /// The underlying error.
        source: io::Error,
    },
}

impl ArtifactError {
    fn refused(path: &str, reason: &str) -> Self {
        Self::Refused {
            path: path.to_owned(),
            reason: reason.to_owned(),
        }
    }
}

/// Maps an I/O error on `path` to [`ArtifactError::Io`].
fn io_error(path: &str) -> impl FnOnce(io::Error) -> ArtifactError + '_ {
    move |source| ArtifactError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The components of `raw` split at `/` and `\`, without empty, `.` and `..` components, with
/// control characters and `:` replaced by `_`: the same rules as the `filename_prefix` rewrite in
/// `workflow_checks`, so an execution's subfolder sanitizes to the same components here.
fn sanitized_parts(raw: &str) -> impl Iterator<Item = String> + '_ {
    raw.split(['/', '\\'])
        .filter(|part| !part.is_empty() && *part != "." && *part != "..")
        .map(|part| {
            part.chars()
                .map(|c| if c.is_control() || c == ':' { '_' } else { c })
                .collect()
        })
}

/// Whether `path` is non-empty and already in sanitized form.
fn is_sanitized(path: &str) -> bool {
    !path.is_empty() && sanitized_parts(path).collect::<Vec<_>>().join("/") == path
}

/// The execution's folder name under the artifact root: the execution id sanitized to one path
/// component (components joined with `_`; `_` when nothing is left). This is the same folder name
/// the `filename_prefix` rewrite puts under `comfy-reality/`.
pub fn execution_folder(execution_id: &str) -> String {
    let folder = sanitized_parts(execution_id).collect::<Vec<_>>().join("_");
    if folder.is_empty() {
        "_".to_owned()
    } else {
        folder
    }
}

/// Files of `outputs` worth keeping for `execution_id`, in node order then ui order, without
/// duplicates: every file of type `output`, under any ui key; `temp` previews and `input` files
/// are skipped.
///
/// A file's `path` is its sanitized subfolder, less the leading `comfy-reality/<execution folder>`
/// when present, joined with its sanitized file name. A file outside the execution's folder (a node
/// that ignores `filename_prefix`) keeps its whole sanitized subfolder. A file whose name sanitizes
/// to nothing is skipped. When two different files map to the same path (or a file to a folder of
/// another), the later one gets a `-2`, `-3`, ... suffix before its extension.
pub fn artifact_files(
    execution_id: &str,
    outputs: &BTreeMap<NodeId, NodeOutput>,
) -> Vec<ArtifactFile> {
    let folder = [OUTPUT_ROOT.to_owned(), execution_folder(execution_id)];
    let mut seen = HashSet::new();
    let mut taken = TakenPaths::default();
    let mut files = Vec::new();
    for output in outputs.values() {
        for (_, source) in output.files() {
            if source.file_type != FileType::Output.as_str() || seen.contains(&source) {
                continue;
            }
            let name: Vec<String> = sanitized_parts(&source.filename).collect();
            if name.is_empty() {
                continue;
            }
            let mut parts: Vec<String> = sanitized_parts(&source.subfolder).collect();
            if parts.starts_with(&folder) {
                parts.drain(..folder.len());
            }
            parts.extend(name);
            let path = taken.claim(parts);
            seen.insert(source.clone());
            files.push(ArtifactFile { source, path });
        }
    }
    files
}

/// The file and folder paths already given out by [`artifact_files`].
#[derive(Default)]
struct TakenPaths {
    /// Paths of files.
    files: HashSet<String>,
    /// Paths of the folders those files lie in.
    folders: HashSet<String>,
}

impl TakenPaths {
    /// Joins `parts` into a path that clashes with no earlier one, suffixing the first clashing
    /// component: a folder may not be an earlier file, and the file may be neither an earlier file
    /// nor an earlier folder (either would make one of the two impossible to write).
    /// `parts` is never empty: it ends with the file name.
    fn claim(&mut self, mut parts: Vec<String>) -> String {
        let mut prefix = String::new();
        let last = parts.len().saturating_sub(1);
        for (i, part) in parts.iter_mut().enumerate() {
            let base = part.clone();
            let mut n = 1;
            loop {
                let candidate = join(&prefix, part);
                let clash = self.files.contains(&candidate)
                    || (i == last && self.folders.contains(&candidate));
                if !clash {
                    prefix = candidate;
                    break;
                }
                n += 1;
                *part = with_suffix(&base, n);
            }
            if i < last {
                self.folders.insert(prefix.clone());
            }
        }
        self.files.insert(prefix.clone());
        prefix
    }
}

fn join(prefix: &str, part: &str) -> String {
    if prefix.is_empty() {
        part.to_owned()
    } else {
        format!("{prefix}/{part}")
    }
}

/// `name` with `-n` before its extension (`a.png` -> `a-2.png`, `.env` -> `.env-2`).
fn with_suffix(name: &str, n: u32) -> String {
    match name.rfind('.') {
        Some(dot) if dot > 0 => format!("{}-{n}{}", &name[..dot], &name[dot..]),
        _ => format!("{name}-{n}"),
    }
}

/// `folder` joined with the components of the relative `/`-separated `path`.
fn below(folder: &Path, path: &str) -> PathBuf {
    let mut full = folder.to_path_buf();
    full.extend(path.split('/'));
    full
}

/// Downloads each file with [`ComfyClient::view`] into `<root>/<execution folder>/<path>`,
/// creating folders. Each file streams into a temporary file in its final folder, which is synced
/// and then renamed, so a crash never leaves a partial file under the final name; a file already
/// present under that name is replaced. Returns the paths written, in order. Stops at the first
/// error; the files written before it stay.
pub async fn download(
    client: &ComfyClient,
    root: &Path,
    execution_id: &str,
    files: &[ArtifactFile],
) -> Result<Vec<String>, ArtifactError> {
    let folder = root.join(execution_folder(execution_id));
    let mut written = Vec::with_capacity(files.len());
    for file in files {
        download_one(client, &folder, file).await?;
        written.push(file.path.clone());
    }
    Ok(written)
}

async fn download_one(
    client: &ComfyClient,
    folder: &Path,
    file: &ArtifactFile,
) -> Result<(), ArtifactError> {
    let path = file.path.as_str();
    if !is_sanitized(path) {
        return Err(ArtifactError::refused(
            path,
            "the path is not in sanitized form",
        ));
    }
    // The folders must not lead elsewhere. The final name needs no check: the rename replaces
    // whatever is there (a symbolic link included) without following it.
    check_folders(folder, path).await?;
    let target = below(folder, path);
    let parent = target
        .parent()
        .ok_or_else(|| ArtifactError::refused(path, "the path has no folder"))?;
    tokio::fs::create_dir_all(parent)
        .await
        .map_err(io_error(path))?;

    let download_error = |source| ArtifactError::Download {
        path: path.to_owned(),
        source,
    };
    let file_type: FileType = file.source.file_type.parse().map_err(|_| {
        download_error(ComfyError::InvalidArgument {
            field: "type",
            message: format!(
                "`{}` is not one of output, input, temp",
                file.source.file_type
            ),
        })
    })?;
    let stream = client
        .view(&file.source.filename, &file.source.subfolder, file_type)
        .await
        .map_err(download_error)?;

    // A fresh random name, created with `create_new`, so it never meets an artifact or another
    // download's temporary file.
    let temp = parent.join(format!(".{}.partial", Uuid::new_v4().simple()));
    let result = async {
        let mut out = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&temp)
            .await
            .map_err(io_error(path))?;
        let mut stream = std::pin::pin!(stream);
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(download_error)?;
            out.write_all(&chunk).await.map_err(io_error(path))?;
        }
        out.flush().await.map_err(io_error(path))?;
        // Synced before the rename, so the final name never points at unwritten data.
        out.sync_all().await.map_err(io_error(path))?;
        tokio::fs::rename(&temp, &target)
            .await
            .map_err(io_error(path))
    }
    .await;
    if result.is_err() {
        // Best effort: the temporary file may not exist, and the first error is the one to report.
        let _ = tokio::fs::remove_file(&temp).await;
    }
    result
}

/// Checks the execution folder and each folder of `path` below it that exists: none may be a
/// symbolic link, and each must be a folder. Missing ones are fine (they will be created).
async fn check_folders(folder: &Path, path: &str) -> Result<(), ArtifactError> {
    let mut current = folder.to_path_buf();
    let parts: Vec<&str> = path.split('/').collect();
    let folders = &parts[..parts.len() - 1];
    for part in std::iter::once(None).chain(folders.iter().map(Some)) {
        if let Some(part) = part {
            current.push(part);
        }
        match tokio::fs::symlink_metadata(&current).await {
            Ok(meta) if meta.file_type().is_symlink() => {
                return Err(ArtifactError::refused(path, "a folder is a symbolic link"));
            }
            Ok(meta) if !meta.is_dir() => {
                return Err(ArtifactError::refused(path, "a parent is not a folder"));
            }
            Ok(_) => {}
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(error) => return Err(io_error(path)(error)),
        }
    }
    Ok(())
}

/// Opens an artifact for streaming. `path` must be exactly one of `known` (the execution's
/// recorded artifacts), else [`ArtifactError::NotAnArtifact`]; it must be in sanitized form, no
/// component from the execution folder down may be a symbolic link, and the file must be a regular
/// file, else [`ArtifactError::Refused`]. A file gone from disk is [`ArtifactError::Missing`].
pub async fn open(
    root: &Path,
    execution_id: &str,
    path: &str,
    known: &[String],
) -> Result<OpenArtifact, ArtifactError> {
    if !known.iter().any(|k| k == path) {
        return Err(ArtifactError::NotAnArtifact {
            path: path.to_owned(),
        });
    }
    if !is_sanitized(path) {
        return Err(ArtifactError::refused(
            path,
            "the path is not in sanitized form",
        ));
    }
    let missing = || ArtifactError::Missing {
        path: path.to_owned(),
    };
    let not_found_is_missing = |error: io::Error| {
        if error.kind() == io::ErrorKind::NotFound {
            missing()
        } else {
            io_error(path)(error)
        }
    };

    let mut current = root.join(execution_folder(execution_id));
    let parts: Vec<&str> = path.split('/').collect();
    let mut checked = None;
    for i in 0..=parts.len() {
        if i > 0 {
            current.push(parts[i - 1]);
        }
        let meta = tokio::fs::symlink_metadata(&current)
            .await
            .map_err(not_found_is_missing)?;
        if meta.file_type().is_symlink() {
            return Err(ArtifactError::refused(
                path,
                "a symbolic link is on the path",
            ));
        }
        if i < parts.len() && !meta.is_dir() {
            return Err(ArtifactError::refused(path, "a parent is not a folder"));
        }
        checked = Some(meta);
    }
    let Some(checked) = checked.filter(|meta| meta.is_file()) else {
        return Err(ArtifactError::refused(path, "not a regular file"));
    };

    let file = tokio::fs::File::open(&current)
        .await
        .map_err(not_found_is_missing)?;
    let meta = file.metadata().await.map_err(io_error(path))?;
    if !meta.is_file() {
        return Err(ArtifactError::refused(path, "not a regular file"));
    }
    // The checks above and the open are separate steps: make sure the file opened is the one
    // checked, not something swapped in between.
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        if (meta.dev(), meta.ino()) != (checked.dev(), checked.ino()) {
            return Err(ArtifactError::refused(
                path,
                "the file changed while opening",
            ));
        }
    }
    #[cfg(not(unix))]
    let _ = checked;
    Ok(OpenArtifact {
        file,
        size: meta.len(),
        content_type: content_type(path),
    })
}

/// The MIME type of `path` by its extension (case-insensitive); `application/octet-stream` for an
/// unknown one.
pub fn content_type(path: &str) -> &'static str {
    let name = path.rsplit('/').next().unwrap_or(path);
    let Some((_, extension)) = name.rsplit_once('.') else {
        return "application/octet-stream";
    };
    match extension.to_ascii_lowercase().as_str() {
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "webp" => "image/webp",
        "gif" => "image/gif",
        "bmp" => "image/bmp",
        "tif" | "tiff" => "image/tiff",
        "svg" => "image/svg+xml",
        "usdz" => "model/vnd.usdz+zip",
        // IANA registers `model/vnd.usda` for text USD only. `.usdc` is the binary crate format,
        // which has no registered type, and `.usd` may hold either encoding, so both are bytes.
        "usda" => "model/vnd.usda",
        "usd" | "usdc" => "application/octet-stream",
        "glb" => "model/gltf-binary",
        "gltf" => "model/gltf+json",
        "obj" => "model/obj",
        "stl" => "model/stl",
        // PLY and FBX have no registered media type.
        "ply" | "fbx" => "application/octet-stream",
        "mp4" => "video/mp4",
        "webm" => "video/webm",
        "mov" => "video/quicktime",
        "wav" => "audio/wav",
        "mp3" => "audio/mpeg",
        "flac" => "audio/flac",
        "ogg" => "audio/ogg",
        "json" => "application/json",
        "txt" => "text/plain",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use proptest::prelude::*;
    use serde_json::{Value, json};
    use tokio::io::AsyncReadExt;
    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::comfy::ws::{BackendSocket, PromptEvent, SocketSettings};
    use crate::config::ServerConfig;
    use crate::runtime::workflow_checks::{filename_prefixes, rewrite_filename_prefixes};
    use comfy_reality_fake_comfyui::{FakeComfy, FakeOptions};

    /// Guards every wait on the fake against a hang; never expected to expire.
    const HANG_GUARD: Duration = Duration::from_secs(60);

    fn file(filename: &str, subfolder: &str, file_type: &str) -> Value {
        json!({"filename": filename, "subfolder": subfolder, "type": file_type})
    }

    fn outputs(nodes: Value) -> BTreeMap<NodeId, NodeOutput> {
        serde_json::from_value(nodes).unwrap()
    }

    fn paths(files: &[ArtifactFile]) -> Vec<&str> {
        files.iter().map(|f| f.path.as_str()).collect()
    }

    #[test]
    fn keeps_output_files_relative_to_the_execution_folder() {
        let outputs = outputs(json!({
            "3": {"images": [
                file("sticker_00001_.png", "comfy-reality/ex-1", "output"),
                file("sticker_00001_.png", "comfy-reality/ex-1", "temp"),
                file("sticker_00002_.png", "comfy-reality/ex-1/poses", "output"),
            ]},
            "4": {
                "3d": [file("model_00001_.usdz", "comfy-reality/ex-1", "output")],
                "text": ["not a file"],
                "images": [file("upload.png", "", "input")],
            },
            "5": {"gifs": [file("loop.gif", "comfy-reality/other", "output")]},
        }));
        let files = artifact_files("ex-1", &outputs);
        assert_eq!(
            paths(&files),
            [
                "sticker_00001_.png",
                "poses/sticker_00002_.png",
                "model_00001_.usdz",
                "comfy-reality/other/loop.gif",
            ]
        );
        assert_eq!(files[1].source.subfolder, "comfy-reality/ex-1/poses");
        assert_eq!(files[2].source.filename, "model_00001_.usdz");
    }

    #[test]
    fn neutralises_traversal_and_unsafe_characters() {
        let outputs = outputs(json!({
            "1": {"images": [
                file("../../etc/passwd", "comfy-reality/ex-1", "output"),
                file("x.png", "../../comfy-reality/ex-1/../..", "output"),
                file("a\u{0}b:c.png", "sub\\dir", "output"),
                file("/abs.png", "/", "output"),
                file("стикер ✓.png", "comfy-reality/ex-1/мир", "output"),
            ]},
        }));
        assert_eq!(
            paths(&artifact_files("ex-1", &outputs)),
            [
                "etc/passwd",
                "x.png",
                "sub/dir/a_b_c.png",
                "abs.png",
                "мир/стикер ✓.png"
            ]
        );
    }

    #[test]
    fn skips_empty_names_and_repeated_sources_and_suffixes_clashes() {
        let outputs = outputs(json!({
            "1": {"images": [
                file("..", "comfy-reality/ex-1", "output"),
                file("", "x", "output"),
                file("a.png", "comfy-reality/ex-1", "output"),
            ]},
            // The same file listed again (another ui key, another node): kept once.
            "2": {
                "images": [file("a.png", "comfy-reality/ex-1", "output")],
                "gifs": [file("a.png", "comfy-reality/ex-1", "output")],
            },
            // Different files that sanitize to the same path.
            "3": {"images": [
                file("a.png", "comfy-reality/ex-1/.", "output"),
                file("a.png", "comfy-reality\\ex-1", "output"),
                file("README", "comfy-reality/ex-1", "output"),
                file("README", "comfy-reality/ex-1/", "output"),
            ]},
            // A file named like an earlier folder, and a folder named like an earlier file.
            "4": {"images": [
                file("b.png", "comfy-reality/ex-1/dir", "output"),
                file("dir", "comfy-reality/ex-1", "output"),
                file("c.png", "comfy-reality/ex-1/a.png", "output"),
            ]},
        }));
        assert_eq!(
            paths(&artifact_files("ex-1", &outputs)),
            [
                "a.png",
                "a-2.png",
                "a-3.png",
                "README",
                "README-2",
                "dir/b.png",
                "dir-2",
                "a-4.png/c.png",
            ]
        );
    }

    #[test]
    fn execution_folder_is_one_safe_component() {
        assert_eq!(
            execution_folder("6f1c0d3e-1b2a-4c5d-8e9f-0a1b2c3d4e5f"),
            "6f1c0d3e-1b2a-4c5d-8e9f-0a1b2c3d4e5f"
        );
        assert_eq!(execution_folder("run_1.a"), "run_1.a");
        assert_eq!(execution_folder(""), "_");
        assert_eq!(execution_folder(".."), "_");
        assert_eq!(execution_folder("/"), "_");
        assert_eq!(execution_folder("../a/b"), "a_b");
        assert_eq!(execution_folder("a\\b\n"), "a_b_");
    }

    #[test]
    fn content_types_follow_the_extension() {
        for (path, expected) in [
            ("a/b.PNG", "image/png"),
            ("x.jpeg", "image/jpeg"),
            ("x.JPG", "image/jpeg"),
            ("x.svg", "image/svg+xml"),
            ("m.usdz", "model/vnd.usdz+zip"),
            ("m.usda", "model/vnd.usda"),
            ("m.usdc", "application/octet-stream"),
            ("m.glb", "model/gltf-binary"),
            ("m.gltf", "model/gltf+json"),
            ("m.stl", "model/stl"),
            ("v.mov", "video/quicktime"),
            ("s.mp3", "audio/mpeg"),
            ("t.txt", "text/plain"),
            ("README", "application/octet-stream"),
            ("dir.png/README", "application/octet-stream"),
            ("x.unknown", "application/octet-stream"),
        ] {
            assert_eq!(content_type(path), expected, "{path}");
        }
    }

    fn assert_safe(path: &str) {
        assert!(!path.is_empty() && !path.starts_with('/'), "{path:?}");
        assert!(!path.contains('\\'), "{path:?}");
        assert!(!path.chars().any(char::is_control), "{path:?}");
        for part in path.split('/') {
            assert!(!matches!(part, "" | "." | ".."), "{path:?}");
        }
        assert!(is_sanitized(path), "{path:?}");
    }

    proptest! {
        #[test]
        fn any_artifact_path_is_safe_and_unique(
            id in "[a-z./\\\\-]{0,8}",
            listed in prop::collection::vec(
                (
                    "[a-zé./\\\\:\\x00-\\x1f]{0,12}",
                    prop_oneof![
                        Just("comfy-reality/".to_owned()),
                        "[a-zé./\\\\:\\x00-\\x1f-]{0,16}",
                    ],
                    prop_oneof![Just("output"), Just("temp")],
                ),
                0..12,
            ),
        ) {
            let files: Vec<Value> = listed
                .iter()
                .map(|(name, sub, kind)| file(name, &format!("{sub}{id}"), kind))
                .collect();
            let outputs = outputs(json!({"1": {"images": files}}));
            let artifacts = artifact_files(&id, &outputs);
            let mut unique = HashSet::new();
            for artifact in &artifacts {
                assert_safe(&artifact.path);
                prop_assert!(unique.insert(artifact.path.clone()));
                prop_assert_eq!(artifact.source.file_type.as_str(), "output");
            }
        }

        #[test]
        fn execution_folder_matches_the_prefix_rewrite(id in "[a-z0-9./\\\\:\\x00-\\x1f-]{0,12}") {
            let folder = execution_folder(&id);
            prop_assert!(!folder.is_empty() && folder != "." && folder != "..");
            prop_assert!(!folder.contains(['/', '\\']));
            prop_assert!(!folder.chars().any(char::is_control));
            let mut prompt = json!({"1": {"inputs": {"filename_prefix": "x"}}})
                .as_object()
                .cloned()
                .unwrap();
            rewrite_filename_prefixes(&mut prompt, &id);
            let rewritten = filename_prefixes(&prompt);
            prop_assert_eq!(&rewritten[0].1, &format!("{OUTPUT_ROOT}/{folder}/x"));
        }
    }

    /// Writes `bytes` at `<root>/<execution folder>/<path>`.
    fn put(root: &Path, id: &str, path: &str, bytes: &[u8]) -> PathBuf {
        let target = below(&root.join(execution_folder(id)), path);
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        std::fs::write(&target, bytes).unwrap();
        target
    }

    fn known(paths: &[&str]) -> Vec<String> {
        paths.iter().map(|p| (*p).to_owned()).collect()
    }

    #[tokio::test]
    async fn open_serves_known_regular_files_only() {
        let root = tempfile::tempdir().unwrap();
        let id = "ex-1";
        let target = put(root.path(), id, "poses/a.png", b"\x89PNG\r\n\x1a\nrest");
        put(root.path(), id, "other.png", b"not recorded");
        let known = known(&["poses/a.png", "poses", "../x", "gone.usdz"]);

        let mut opened = open(root.path(), id, "poses/a.png", &known).await.unwrap();
        assert_eq!(opened.size, 12);
        assert_eq!(opened.content_type, "image/png");
        let mut bytes = Vec::new();
        opened.file.read_to_end(&mut bytes).await.unwrap();
        assert_eq!(bytes, b"\x89PNG\r\n\x1a\nrest");

        let error = open(root.path(), id, "other.png", &known)
            .await
            .unwrap_err();
        assert!(
            matches!(error, ArtifactError::NotAnArtifact { .. }),
            "{error:?}"
        );
        assert_eq!(
            error.to_string(),
            "path `other.png` is not an artifact of this execution"
        );
        // Same file, another spelling: not the recorded path.
        let error = open(root.path(), id, "poses//a.png", &known)
            .await
            .unwrap_err();
        assert!(
            matches!(error, ArtifactError::NotAnArtifact { .. }),
            "{error:?}"
        );
        // Another execution's folder holds no such artifact.
        let error = open(root.path(), "ex-2", "poses/a.png", &known)
            .await
            .unwrap_err();
        assert!(matches!(error, ArtifactError::Missing { .. }), "{error:?}");

        let error = open(root.path(), id, "../x", &known).await.unwrap_err();
        assert!(matches!(error, ArtifactError::Refused { .. }), "{error:?}");
        let error = open(root.path(), id, "poses", &known).await.unwrap_err();
        assert!(matches!(error, ArtifactError::Refused { .. }), "{error:?}");

        let error = open(root.path(), id, "gone.usdz", &known)
            .await
            .unwrap_err();
        assert!(matches!(error, ArtifactError::Missing { .. }), "{error:?}");
        std::fs::remove_file(&target).unwrap();
        let error = open(root.path(), id, "poses/a.png", &known)
            .await
            .unwrap_err();
        assert!(matches!(error, ArtifactError::Missing { .. }), "{error:?}");
        let root_text = root.path().to_string_lossy();
        assert!(!error.to_string().contains(root_text.as_ref()), "{error}");
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn open_refuses_symbolic_links() {
        use std::os::unix::fs::symlink;

        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret.png"), b"secret").unwrap();
        let id = "ex-1";
        let folder = root.path().join(execution_folder(id));
        put(root.path(), id, "real.png", b"ok");
        symlink("/etc/passwd", folder.join("passwd.png")).unwrap();
        symlink(outside.path(), folder.join("linked")).unwrap();
        let known = known(&["real.png", "passwd.png", "linked/secret.png"]);

        assert!(open(root.path(), id, "real.png", &known).await.is_ok());
        for path in ["passwd.png", "linked/secret.png"] {
            let error = open(root.path(), id, path, &known).await.unwrap_err();
            assert!(
                matches!(&error, ArtifactError::Refused { reason, .. } if reason.contains("symbolic link")),
                "{path}: {error:?}"
            );
        }

        // The execution folder itself must not be a link either.
        let elsewhere = tempfile::tempdir().unwrap();
        put(elsewhere.path(), id, "real.png", b"ok");
        symlink(
            elsewhere.path().join(execution_folder(id)),
            root.path().join("ex-2"),
        )
        .unwrap();
        let error = open(root.path(), "ex-2", "real.png", &known)
            .await
            .unwrap_err();
        assert!(matches!(error, ArtifactError::Refused { .. }), "{error:?}");
    }

    /// A fake ComfyUI, a client and a socket that follows prompts.
    struct Backend {
        fake: FakeComfy,
        socket: crate::comfy::ws::BackendSocketHandle,
        cancel: CancellationToken,
    }

    impl Backend {
        async fn start() -> Self {
            let fake = FakeComfy::start(FakeOptions::default()).await.unwrap();
            let config = ServerConfig {
                url: fake.base_url(),
                ..ServerConfig::default()
            };
            let client = ComfyClient::new(&config).unwrap();
            let cancel = CancellationToken::new();
            let socket = BackendSocket::spawn(
                client,
                Uuid::new_v4().to_string(),
                SocketSettings::from_config(&config),
                cancel.clone(),
            );
            tokio::time::timeout(HANG_GUARD, socket.wait_connected())
                .await
                .expect("hang guard")
                .expect("the socket connects");
            Self {
                fake,
                socket,
                cancel,
            }
        }

        /// Runs `prompt` to success and returns its outputs.
        async fn run(&self, prompt: &Value) -> BTreeMap<NodeId, NodeOutput> {
            let (mut watch, _) =
                tokio::time::timeout(HANG_GUARD, self.socket.submit(Uuid::new_v4(), prompt, None))
                    .await
                    .expect("hang guard")
                    .expect("the prompt is accepted");
            match tokio::time::timeout(HANG_GUARD, watch.terminal()).await {
                Ok(Some(PromptEvent::Success(completion))) => completion.outputs,
                other => panic!("the prompt did not succeed: {other:?}"),
            }
        }

        async fn stop(self) {
            self.socket.shutdown().await;
            self.cancel.cancel();
            self.fake.shutdown().await;
        }
    }

    /// Every file name below `folder`, recursively, relative and `/`-separated.
    fn files_below(folder: &Path) -> Vec<String> {
        let mut found = Vec::new();
        let mut pending = vec![folder.to_path_buf()];
        while let Some(dir) = pending.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let entry = entry.unwrap();
                if entry.file_type().unwrap().is_dir() {
                    pending.push(entry.path());
                } else {
                    let relative = entry.path().strip_prefix(folder).unwrap().to_owned();
                    found.push(relative.to_string_lossy().replace('\\', "/"));
                }
            }
        }
        found.sort();
        found
    }

    #[tokio::test]
    async fn downloads_a_prompts_outputs_from_comfyui() {
        let backend = Backend::start().await;
        let id = Uuid::new_v4().to_string();
        let nonce = Uuid::new_v4().as_u64_pair().0 >> 1;
        let prompt = json!({
            "1": {"class_type": "EmptyImage", "inputs": {"width": 32, "height": 24, "batch_size": 1, "color": nonce % 16_777_215}},
            "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": format!("comfy-reality/{id}/sticker")}},
            "3": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}},
            "4": {"class_type": "TestWriteBlob", "inputs": {"filename_prefix": format!("comfy-reality/{id}/models/model"), "extension": "usdz", "ui_key": "3d", "size": 300, "nonce": nonce}},
            // A node whose prefix was not rewritten: its file lies outside the execution folder.
            "5": {"class_type": "TestWriteBlob", "inputs": {"filename_prefix": "blobs/out", "extension": "glb", "ui_key": "3d", "size": 10, "nonce": nonce}},
        });
        let outputs = backend.run(&prompt).await;
        assert!(
            outputs["3"]
                .files()
                .iter()
                .all(|(_, f)| f.file_type == "temp")
        );
        let files = artifact_files(&id, &outputs);
        assert_eq!(
            paths(&files),
            [
                "sticker_00001_.png",
                "models/model_00001_.usdz",
                "blobs/out_00001_.glb"
            ]
        );
        assert_eq!(
            files[1].source.subfolder,
            format!("comfy-reality/{id}/models")
        );

        let root = tempfile::tempdir().unwrap();
        // An older file under a final name is replaced.
        put(root.path(), &id, "sticker_00001_.png", b"stale");
        let client = backend.socket.client();
        let written = download(client, root.path(), &id, &files).await.unwrap();
        assert_eq!(written, paths(&files));

        let folder = root.path().join(execution_folder(&id));
        assert_eq!(files_below(&folder), {
            let mut sorted = written.clone();
            sorted.sort();
            sorted
        });
        for artifact in &files {
            let source = backend
                .fake
                .output_dir()
                .join(&artifact.source.subfolder)
                .join(&artifact.source.filename);
            let expected = std::fs::read(source).unwrap();
            let got = std::fs::read(below(&folder, &artifact.path)).unwrap();
            assert_eq!(got, expected, "{}", artifact.path);
        }
        let png = std::fs::read(folder.join("sticker_00001_.png")).unwrap();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
        assert_eq!(
            std::fs::metadata(below(&folder, "models/model_00001_.usdz"))
                .unwrap()
                .len(),
            300
        );

        let opened = open(root.path(), &id, "models/model_00001_.usdz", &written)
            .await
            .unwrap();
        assert_eq!(
            (opened.size, opened.content_type),
            (300, "model/vnd.usdz+zip")
        );

        // A file ComfyUI does not have: the download stops there, earlier files stay, and no
        // temporary file is left behind.
        let missing = ArtifactFile {
            source: OutputFile {
                filename: "never_00001_.png".to_owned(),
                subfolder: format!("comfy-reality/{id}"),
                file_type: "output".to_owned(),
            },
            path: "never_00001_.png".to_owned(),
        };
        let again = [files[0].clone(), missing, files[1].clone()];
        let other = Uuid::new_v4().to_string();
        let error = download(client, root.path(), &other, &again)
            .await
            .unwrap_err();
        assert!(
            matches!(&error, ArtifactError::Download { path, .. } if path == "never_00001_.png"),
            "{error:?}"
        );
        assert_eq!(
            files_below(&root.path().join(execution_folder(&other))),
            ["sticker_00001_.png"]
        );

        // A path that is not in sanitized form is never written.
        let mut unsafe_path = files[0].clone();
        unsafe_path.path = "../escape.png".to_owned();
        let error = download(client, root.path(), &id, &[unsafe_path])
            .await
            .unwrap_err();
        assert!(matches!(error, ArtifactError::Refused { .. }), "{error:?}");
        assert!(!root.path().join("escape.png").exists());

        // A folder that is a symbolic link is never written through.
        #[cfg(unix)]
        {
            let outside = tempfile::tempdir().unwrap();
            let linked = Uuid::new_v4().to_string();
            let linked_folder = root.path().join(execution_folder(&linked));
            std::fs::create_dir_all(&linked_folder).unwrap();
            std::os::unix::fs::symlink(outside.path(), linked_folder.join("models")).unwrap();
            let error = download(client, root.path(), &linked, &files[1..2])
                .await
                .unwrap_err();
            assert!(
                matches!(&error, ArtifactError::Refused { reason, .. } if reason.contains("symbolic link")),
                "{error:?}"
            );
            assert!(files_below(outside.path()).is_empty());
        }

        backend.stop().await;
    }
}
