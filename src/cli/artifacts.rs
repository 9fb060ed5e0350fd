//! `comfy-reality artifacts get`: downloads one or all artifacts of an
//! execution through GetArtifact's chunked stream. Also used by
//! `submit --download`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use tokio::io::AsyncWriteExt as _;

use super::client::{CliError, Client};
use crate::pb::{GetArtifactRequest, WorkflowExecution};

/// `artifacts` subcommands.
#[derive(Debug, Subcommand)]
pub enum ArtifactsCommand {
    /// Download an execution's artifacts: one (PATH, into -o FILE or DIR)
    /// or all of them (into -o DIR, default the current directory).
    Get(GetArgs),
}

/// Flags of `artifacts get`.
#[derive(Debug, Args)]
pub struct GetArgs {
    /// Execution id.
    pub execution_id: String,
    /// One of the execution's artifacts, as `get` lists them; all when omitted.
    pub path: Option<String>,
    /// Where to save: a file (one artifact) or a directory. (`--output`
    /// is the global text|json flag.)
    #[arg(short = 'o', long = "out", id = "out", value_name = "FILE|DIR")]
    pub out: Option<PathBuf>,
}

/// Runs `artifacts`.
pub async fn run(client: &Client, command: ArtifactsCommand) -> Result<ExitCode, CliError> {
    let ArtifactsCommand::Get(args) = command;
    match args.path {
        Some(path) => {
            let target = match &args.out {
                Some(out) if out.is_dir() => out.join(file_name(&path)),
                Some(out) => out.clone(),
                None => PathBuf::from(file_name(&path)),
            };
            let bytes = save(client, &args.execution_id, &path, &target).await?;
            report(client, &path, &target, bytes);
        }
        None => {
            let execution = super::executions::get_execution(client, &args.execution_id).await?;
            let dir = args.out.unwrap_or_else(|| PathBuf::from("."));
            save_all(client, &execution, &dir).await?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Saves every artifact of `execution` into `dir` (created if missing),
/// printing one line per file.
pub async fn save_all(
    client: &Client,
    execution: &WorkflowExecution,
    dir: &Path,
) -> Result<(), CliError> {
    tokio::fs::create_dir_all(dir)
        .await
        .with_context(|| format!("cannot create {}", dir.display()))?;
    for path in &execution.artifacts {
        let target = dir.join(file_name(path));
        let bytes = save(client, &execution.id, path, &target).await?;
        report(client, path, &target, bytes);
    }
    Ok(())
}

fn report(client: &Client, path: &str, target: &Path, bytes: u64) {
    if client.printer.json() {
        let line = serde_json::json!({
            "artifact": path,
            "file": target.display().to_string(),
            "bytes": bytes,
        });
        client.printer.line(&line.to_string());
    } else {
        client
            .printer
            .line(&format!("saved {} ({bytes} bytes)", target.display()));
    }
}

/// The last component of an artifact path: artifacts may sit in folders on
/// the server, never outside the target directory here.
fn file_name(path: &str) -> &str {
    path.rsplit(['/', '\\'])
        .find(|part| !part.is_empty() && *part != "." && *part != "..")
        .unwrap_or("artifact")
}

/// Streams one artifact into `target`; returns its size.
async fn save(
    client: &Client,
    execution_id: &str,
    path: &str,
    target: &Path,
) -> Result<u64, CliError> {
    let mut stream = client
        .executions()
        .get_artifact(GetArtifactRequest {
            execution_id: execution_id.to_owned(),
            path: path.to_owned(),
        })
        .await
        .map_err(|s| client.error(s))?
        .into_inner();
    let mut file = tokio::fs::File::create(target)
        .await
        .with_context(|| format!("cannot create {}", target.display()))?;
    let mut written = 0u64;
    while let Some(chunk) = stream.message().await.map_err(|s| client.error(s))? {
        file.write_all(&chunk.data)
            .await
            .with_context(|| format!("cannot write {}", target.display()))?;
        written += chunk.data.len() as u64;
    }
    file.flush()
        .await
        .with_context(|| format!("cannot write {}", target.display()))?;
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::file_name;

    #[test]
    fn artifacts_are_saved_under_their_file_name() {
        assert_eq!(file_name("a/b/c.png"), "c.png");
        assert_eq!(file_name("c.png"), "c.png");
        assert_eq!(file_name("../.."), "artifact");
        assert_eq!(file_name("x\\y.png"), "y.png");
    }
}
