//! Files: `POST /upload/image`, and `GET /view` streamed without being
//! buffered whole, optionally restricted to a prompt's own outputs.
//!
//! Arguments are checked (`checks`) before anything is sent; an upload is
//! never retried, since a retry without `overwrite` could store it twice.

use bytes::Bytes;
use futures_util::{Stream, TryStreamExt};

use super::checks::{check_file_name, check_subfolder};
use super::request::error_chain;
use super::{ComfyClient, ComfyError};
use crate::comfy::wire::{FileType, OutputFile, UploadResponse};

impl ComfyClient {
    /// `POST /upload/image` (multipart) into `input/<subfolder>/`. With `overwrite` false the
    /// server renames on a clash; the answer says where the file landed. Not retried: without
    /// `overwrite` a retry could store the file twice.
    pub async fn upload_image(
        &self,
        bytes: Bytes,
        filename: &str,
        subfolder: &str,
        overwrite: bool,
    ) -> Result<UploadResponse, ComfyError> {
        check_file_name(filename)?;
        check_subfolder(subfolder)?;
        if filename.contains(['"', '\r', '\n']) {
            return Err(ComfyError::InvalidArgument {
                field: "filename",
                message: "must not contain quotes or line breaks".into(),
            });
        }
        const ROUTE: &str = "upload/image";
        let form = reqwest::multipart::Form::new()
            .part(
                "image",
                reqwest::multipart::Part::stream(bytes).file_name(filename.to_owned()),
            )
            .text("type", "input")
            .text("subfolder", subfolder.to_owned())
            .text("overwrite", if overwrite { "true" } else { "false" });
        let request = self
            .inner
            .http
            .post(self.endpoint(&["upload", "image"])?)
            .multipart(form)
            .timeout(self.inner.timeout);
        let response = self.send(ROUTE, request).await?;
        let response = self.expect_success(ROUTE, response).await?;
        self.json_body(ROUTE, response).await
    }

    /// `GET /view`: the file as a stream of chunks, never buffered whole. The arguments are
    /// checked first: no `..`, no absolute path, no backslash, no control characters. The
    /// request (up to the response headers) is retried; the body is not.
    pub async fn view(
        &self,
        filename: &str,
        subfolder: &str,
        file_type: FileType,
    ) -> Result<impl Stream<Item = Result<Bytes, ComfyError>> + Send + 'static, ComfyError> {
        check_file_name(filename)?;
        check_subfolder(subfolder)?;
        const ROUTE: &str = "view";
        let url = self.endpoint(&[ROUTE])?;
        let query = [
            ("filename", filename),
            ("subfolder", subfolder),
            ("type", file_type.as_str()),
        ];
        let response = self
            .idempotent(ROUTE, || async {
                // No total timeout: a large file may take longer; the read timeout still applies.
                let request = self.inner.http.get(url.clone()).query(&query);
                let response = self.send(ROUTE, request).await?;
                self.expect_success(ROUTE, response).await
            })
            .await?;
        let server = self.inner.display.clone();
        let timeout = self.inner.timeout;
        Ok(response.bytes_stream().map_err(move |error| {
            if error.is_timeout() {
                ComfyError::Timeout {
                    server: server.clone(),
                    route: ROUTE.into(),
                    timeout,
                }
            } else {
                ComfyError::Transport {
                    server: server.clone(),
                    route: ROUTE.into(),
                    message: error_chain(&error.without_url()),
                }
            }
        }))
    }

    /// [`ComfyClient::view`] restricted to `prompt_id`'s own outputs: the file must be listed in
    /// that prompt's history outputs (same filename, subfolder and type), or this is
    /// [`ComfyError::NotAnOutput`].
    pub async fn view_output(
        &self,
        prompt_id: &str,
        file: &OutputFile,
    ) -> Result<impl Stream<Item = Result<Bytes, ComfyError>> + Send + 'static, ComfyError> {
        check_file_name(&file.filename)?;
        check_subfolder(&file.subfolder)?;
        let file_type: FileType =
            file.file_type
                .parse()
                .map_err(|_| ComfyError::InvalidArgument {
                    field: "type",
                    message: format!("`{}` is not one of output, input, temp", file.file_type),
                })?;
        let not_an_output = || ComfyError::NotAnOutput {
            prompt_id: prompt_id.to_owned(),
            filename: file.filename.clone(),
        };
        let entry = self.history(prompt_id).await?.ok_or_else(not_an_output)?;
        if !entry.has_output_file(file) {
            return Err(not_an_output());
        }
        self.view(&file.filename, &file.subfolder, file_type).await
    }
}
