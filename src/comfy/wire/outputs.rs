//! What nodes produce and where files live: a node's UI dict ([`NodeOutput`]) and the files
//! listed in it, the address `GET /view` needs to fetch one ([`OutputFile`], [`FileType`]), and
//! the `POST /upload/image` answer ([`UploadResponse`]).
//!
//! Pure data and parsing: downloading, uploading and storing files belong to the client and the
//! runtime.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::WireError;

/// A file produced by a node (or uploaded): what `GET /view` needs to fetch it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct OutputFile {
    /// File name inside the folder.
    pub filename: String,
    /// Folder below the type's base directory; empty for none.
    #[serde(default)]
    pub subfolder: String,
    /// `output`, `input` or `temp` (see [`FileType`]).
    #[serde(rename = "type", default)]
    pub file_type: String,
}

/// The base directory a `GET /view` file lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FileType {
    /// `output/`: what output nodes write.
    Output,
    /// `input/`: uploads.
    Input,
    /// `temp/`: previews.
    Temp,
}

impl FileType {
    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Output => "output",
            Self::Input => "input",
            Self::Temp => "temp",
        }
    }
}

impl fmt::Display for FileType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for FileType {
    type Err = WireError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "output" => Ok(Self::Output),
            "input" => Ok(Self::Input),
            "temp" => Ok(Self::Temp),
            other => Err(WireError::Json(format!(
                "file type `{other}` is not one of output, input, temp"
            ))),
        }
    }
}

/// The UI dict of one node: `{ui_key: [...]}`. Files appear under any key (`images`, `3d`,
/// `blobs`, ...) as `{filename, subfolder, type}` objects; other keys carry free-form values
/// (`text: [str]`). Key order is kept.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct NodeOutput(pub Map<String, Value>);

impl NodeOutput {
    /// Every file in the dict with the key it is listed under, in order.
    pub fn files(&self) -> Vec<(&str, OutputFile)> {
        let mut files = Vec::new();
        for (key, value) in &self.0 {
            let Value::Array(items) = value else { continue };
            for item in items {
                let Value::Object(object) = item else {
                    continue;
                };
                if !object.get("filename").is_some_and(Value::is_string) {
                    continue;
                }
                if let Ok(file) = serde_json::from_value::<OutputFile>(item.clone()) {
                    files.push((key.as_str(), file));
                }
            }
        }
        files
    }

    /// The strings listed under `text` (what `TestDelay` and text-preview nodes report).
    pub fn texts(&self) -> Vec<&str> {
        self.0
            .get("text")
            .and_then(Value::as_array)
            .map(|items| items.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default()
    }
}

/// The `POST /upload/image` 200 body: where the file landed (the server may rename it).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct UploadResponse {
    /// Final file name.
    pub name: String,
    /// Folder below `input/`.
    #[serde(default)]
    pub subfolder: String,
    /// `input` for uploads.
    #[serde(rename = "type", default)]
    pub file_type: String,
}
