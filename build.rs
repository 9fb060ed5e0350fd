//! Compiles `proto/` into Rust with protox (no protoc binary anywhere) and
//! writes the descriptor set that gRPC reflection serves.

use std::{
    env, fs,
    path::{Path, PathBuf},
};

use prost::Message;

const PROTO_ROOT: &str = "proto";
const API_DIR: &str = "proto/comfyreality/runtime/v1";
/// Vendored error-detail protos: served by reflection (so grpcurl can print
/// ErrorInfo and BadRequest) but not generated; tonic-types has their Rust types.
const ERROR_PROTOS: [&str; 2] = [
    "proto/google/rpc/status.proto",
    "proto/google/rpc/error_details.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed={PROTO_ROOT}");
    let mut files: Vec<PathBuf> = fs::read_dir(API_DIR)?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "proto"))
        .collect();
    files.sort();
    for file in &files {
        println!("cargo:rerun-if-changed={}", file.display());
    }

    let fds = protox::compile(&files, [PROTO_ROOT])?;
    let reflected = protox::compile(
        files
            .iter()
            .map(PathBuf::as_path)
            .chain(ERROR_PROTOS.iter().map(Path::new)),
        [PROTO_ROOT],
    )?;
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(
        out_dir.join("comfyreality_descriptor.bin"),
        reflected.encode_to_vec(),
    )?;

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
