//! Compiles `proto/` into Rust with protox (no protoc binary anywhere) and
//! writes the descriptor set that gRPC reflection serves.
//!
//! Every service's client and server is tonic's generated code, with one change: the server
//! side of `EventService.SubscribeEvents` yields `crate::pb::SubscribeEventsFrame` instead of
//! `SubscribeEventsResponse`. The frame encodes exactly as that message (clients, SDKs and
//! reflection see no difference) and can carry an event encoded once for every subscriber.

use std::{
    env, fs,
    path::{Path, PathBuf},
};

use prost::Message;
use prost_build::{Service, ServiceGenerator};

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

    let mut config = tonic_prost_build::Config::new();
    config.service_generator(Box::new(Services {
        both: tonic_prost_build::configure().service_generator(),
        clients: tonic_prost_build::configure()
            .build_server(false)
            .service_generator(),
        servers: tonic_prost_build::configure()
            .build_client(false)
            .service_generator(),
    }));
    // Neither half here: the service generator above writes both.
    tonic_prost_build::configure()
        .build_client(false)
        .build_server(false)
        .compile_fds_with_config(fds, config)?;
    Ok(())
}

/// The service whose server streams frames.
const EVENT_SERVICE: &str = "EventService";
/// Its method that does.
const FRAMED_METHOD: &str = "SubscribeEvents";
/// What that method's server yields.
const FRAME_TYPE: &str = "crate::pb::SubscribeEventsFrame";

/// tonic's generators: each service as tonic generates it, except the server of
/// [`EVENT_SERVICE`], whose [`FRAMED_METHOD`] yields [`FRAME_TYPE`].
struct Services {
    /// Client and server, for every other service.
    both: Box<dyn ServiceGenerator>,
    /// The client of [`EVENT_SERVICE`].
    clients: Box<dyn ServiceGenerator>,
    /// The server of [`EVENT_SERVICE`].
    servers: Box<dyn ServiceGenerator>,
}

impl ServiceGenerator for Services {
    fn generate(&mut self, service: Service, buf: &mut String) {
        if service.name != EVENT_SERVICE {
            self.both.generate(service, buf);
            return;
        }
        self.clients.generate(service.clone(), buf);
        let mut framed = service;
        let mut found = false;
        for method in &mut framed.methods {
            if method.proto_name == FRAMED_METHOD {
                method.output_type = FRAME_TYPE.to_owned();
                found = true;
            }
        }
        assert!(found, "{EVENT_SERVICE} has no method {FRAMED_METHOD}");
        self.servers.generate(framed, buf);
    }

    fn finalize(&mut self, buf: &mut String) {
        self.both.finalize(buf);
        self.clients.finalize(buf);
        self.servers.finalize(buf);
    }

    fn finalize_package(&mut self, package: &str, buf: &mut String) {
        self.both.finalize_package(package, buf);
        self.clients.finalize_package(package, buf);
        self.servers.finalize_package(package, buf);
    }
}
