//! Files: `GET /view` (with ComfyUI's path checks, content types and the
//! `channel` re-encoding) and `POST /upload/image` (multipart, with
//! ComfyUI's renaming on a clash).
//!
//! Paths never leave the `output`, `input` and `temp` folders; the path and
//! content-type rules themselves are in `crate::files`.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use serde_json::Value;

use super::reply::{first, internal_error, ok_json, query_pairs, status_only};
use crate::files;
use crate::pyjson::object;
use crate::shared::Shared;

/// `GET /view`: a file of `output`, `input` or `temp`, as aiohttp's `FileResponse` sends it.
pub(super) async fn view(State(shared): State<Arc<Shared>>, RawQuery(query): RawQuery) -> Response {
    let pairs = query_pairs(query.as_deref());
    let Some(filename) = first(&pairs, "filename") else {
        return status_only(StatusCode::NOT_FOUND);
    };
    if filename.starts_with("blake3:") {
        return status_only(StatusCode::NOT_FOUND);
    }
    let (name, annotated_dir) = shared.dirs.annotated(filename);
    if name.is_empty() {
        return status_only(StatusCode::BAD_REQUEST);
    }
    if name.starts_with('/') || name.contains("..") {
        return status_only(StatusCode::BAD_REQUEST);
    }
    let base = match annotated_dir {
        Some(dir) => dir.to_path_buf(),
        None => match shared
            .dirs
            .by_type(first(&pairs, "type").unwrap_or("output"))
        {
            Some(dir) => dir.to_path_buf(),
            None => return status_only(StatusCode::BAD_REQUEST),
        },
    };
    let mut dir = base.clone();
    if let Some(subfolder) = first(&pairs, "subfolder") {
        let joined = files::normalize(&base.join(subfolder));
        if !joined.starts_with(&base) {
            return status_only(StatusCode::FORBIDDEN);
        }
        dir = joined;
    }
    let basename = name.rsplit('/').next().unwrap_or(name).to_owned();
    let path = dir.join(&basename);
    let channel = first(&pairs, "channel").unwrap_or("rgba").to_owned();
    let bytes = match tokio::fs::metadata(&path).await {
        Ok(meta) if meta.is_file() => match tokio::fs::read(&path).await {
            Ok(bytes) => bytes,
            Err(_) => return status_only(StatusCode::NOT_FOUND),
        },
        _ => return status_only(StatusCode::NOT_FOUND),
    };
    let disposition = format!(
        "filename=\"{}\"",
        basename.replace('\\', "\\\\").replace('"', "\\\"")
    );
    if channel == "rgb" || channel == "a" {
        return match reencode_channel(&bytes, &channel) {
            Some(png) => with_headers("image/png", &disposition, png),
            None => internal_error(),
        };
    }
    let mut content_type = files::guess_type(&basename).unwrap_or("application/octet-stream");
    let mut disposition = disposition;
    if files::is_dangerous_type(content_type) {
        content_type = "application/octet-stream";
        disposition = format!("attachment; {disposition}");
    }
    with_headers(content_type, &disposition, bytes)
}

/// A file answer with its content type and disposition.
fn with_headers(content_type: &str, disposition: &str, bytes: Vec<u8>) -> Response {
    let mut response = Response::new(Body::from(bytes));
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(content_type) {
        headers.insert(header::CONTENT_TYPE, value);
    }
    if let Ok(value) = HeaderValue::from_str(disposition) {
        headers.insert(header::CONTENT_DISPOSITION, value);
    }
    headers.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    response
}

/// `/view?channel=rgb|a`: the PNG re-encoded without alpha, or its alpha.
fn reencode_channel(bytes: &[u8], channel: &str) -> Option<Vec<u8>> {
    use crate::image::{PngLayout, decode_png, encode_png};
    let decoded = decode_png(bytes).ok()?;
    if channel == "rgb" {
        return encode_png(
            decoded.width,
            decoded.height,
            PngLayout::Rgb,
            &decoded.rgb,
            &[],
            false,
        )
        .ok();
    }
    let alpha = decoded
        .alpha
        .unwrap_or_else(|| vec![255; decoded.width as usize * decoded.height as usize]);
    let rgba: Vec<u8> = alpha.iter().flat_map(|a| [0, 0, 0, *a]).collect();
    encode_png(
        decoded.width,
        decoded.height,
        PngLayout::Rgba,
        &rgba,
        &[],
        false,
    )
    .ok()
}

/// One part of a `multipart/form-data` body.
#[derive(Debug)]
struct Part {
    /// The field name.
    name: String,
    /// The file name, for file fields.
    filename: Option<String>,
    /// The content.
    data: Vec<u8>,
}

/// Parses a `multipart/form-data` body; `None` when it is malformed.
fn parse_multipart(content_type: &str, body: &[u8]) -> Option<Vec<Part>> {
    let boundary = content_type
        .split(';')
        .map(str::trim)
        .find_map(|p| p.strip_prefix("boundary="))?
        .trim_matches('"');
    if boundary.is_empty() {
        return None;
    }
    let delimiter = format!("--{boundary}").into_bytes();
    let find = |haystack: &[u8], needle: &[u8], from: usize| -> Option<usize> {
        haystack
            .get(from..)?
            .windows(needle.len())
            .position(|w| w == needle)
            .map(|p| p + from)
    };
    let mut parts = Vec::new();
    let mut pos = find(body, &delimiter, 0)? + delimiter.len();
    loop {
        if body.get(pos..pos + 2) == Some(b"--") {
            break;
        }
        pos += 2; // CRLF after the delimiter
        let headers_end = find(body, b"\r\n\r\n", pos)?;
        let headers = std::str::from_utf8(body.get(pos..headers_end)?).ok()?;
        let data_start = headers_end + 4;
        let mut closing = b"\r\n".to_vec();
        closing.extend_from_slice(&delimiter);
        let data_end = find(body, &closing, data_start)?;
        let mut name = None;
        let mut filename = None;
        for line in headers.split("\r\n") {
            let Some((key, value)) = line.split_once(':') else {
                continue;
            };
            if !key.trim().eq_ignore_ascii_case("content-disposition") {
                continue;
            }
            for param in value.split(';').map(str::trim) {
                if let Some(v) = param.strip_prefix("name=") {
                    name = Some(v.trim_matches('"').to_owned());
                } else if let Some(v) = param.strip_prefix("filename=") {
                    filename = Some(v.trim_matches('"').to_owned());
                }
            }
        }
        parts.push(Part {
            name: name?,
            filename,
            data: body.get(data_start..data_end)?.to_vec(),
        });
        pos = data_end + closing.len();
    }
    Some(parts)
}

/// `POST /upload/image`: stores a multipart upload.
pub(super) async fn upload_image(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if !content_type.starts_with("multipart/form-data") {
        return status_only(StatusCode::BAD_REQUEST);
    }
    let Some(parts) = parse_multipart(content_type, &body) else {
        return internal_error();
    };
    let field = |name: &str| {
        parts
            .iter()
            .find(|p| p.name == name && p.filename.is_none())
            .map(|p| String::from_utf8_lossy(&p.data).into_owned())
    };
    let kind = field("type").unwrap_or_else(|| "input".to_owned());
    let Some(base) = shared.dirs.by_type(&kind).map(std::path::Path::to_path_buf) else {
        return internal_error();
    };
    let Some(image) = parts.iter().find(|p| p.name == "image") else {
        return status_only(StatusCode::BAD_REQUEST);
    };
    let Some(filename) = image.filename.clone() else {
        return internal_error();
    };
    if filename.is_empty() {
        return status_only(StatusCode::BAD_REQUEST);
    }
    let subfolder = field("subfolder").unwrap_or_default();
    let overwrite = matches!(field("overwrite").as_deref(), Some("true" | "1"));
    let data = image.data.clone();
    let result = shared
        .tracker
        .spawn_blocking(move || {
            store_upload(&base, &subfolder, &filename, &data, overwrite)
                .map(|name| (name, subfolder))
        })
        .await;
    match result {
        Ok(Ok((name, subfolder))) => ok_json(&object([
            ("name", Value::String(name)),
            ("subfolder", Value::String(subfolder)),
            ("type", Value::String(kind)),
        ])),
        Ok(Err(StatusCode::BAD_REQUEST)) => status_only(StatusCode::BAD_REQUEST),
        _ => internal_error(),
    }
}

/// `image_upload`: writes the file (renaming `x (1).png` unless it
/// overwrites or is identical) and returns the stored name.
fn store_upload(
    base: &std::path::Path,
    subfolder: &str,
    filename: &str,
    data: &[u8],
    overwrite: bool,
) -> Result<String, StatusCode> {
    let folder = files::normalize(&base.join(subfolder));
    let mut path = files::normalize(&folder.join(filename));
    if !path.starts_with(base) || !folder.starts_with(base) {
        return Err(StatusCode::BAD_REQUEST);
    }
    std::fs::create_dir_all(&folder).map_err(|_| StatusCode::INTERNAL_SERVER_ERROR)?;
    let (stem, extension) = match filename.rfind('.') {
        Some(i) if i > 0 => (&filename[..i], &filename[i..]),
        _ => (filename, ""),
    };
    let mut name = filename.to_owned();
    if !overwrite {
        let mut i = 1;
        while path.exists() {
            if std::fs::read(&path).is_ok_and(|existing| existing == data) {
                return Ok(name);
            }
            name = format!("{stem} ({i}){extension}");
            path = folder.join(&name);
            i += 1;
        }
    }
    std::fs::write(&path, data).map_err(|_| StatusCode::INTERNAL_SERVER_ERROR)?;
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multipart_bodies_parse() {
        let body = b"--xyz\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.png\"\r\nContent-Type: image/png\r\n\r\nPNGDATA\r\n--xyz\r\nContent-Disposition: form-data; name=\"subfolder\"\r\n\r\nsub\r\n--xyz--\r\n";
        let parts = parse_multipart("multipart/form-data; boundary=xyz", body).unwrap();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0].filename.as_deref(), Some("a.png"));
        assert_eq!(parts[0].data, b"PNGDATA");
        assert_eq!(parts[1].name, "subfolder");
        assert!(parse_multipart("multipart/form-data; boundary=xyz", b"garbage").is_none());
    }
}
