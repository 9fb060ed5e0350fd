//! Which role each gRPC method needs, which calls count as submits, which are server streams and
//! which mutate: one table over every method of every service, so that a new RPC without an entry
//! is refused (it needs admin) rather than silently open.

use crate::config::Role;

/// What a method needs before it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Requirement {
    /// No credentials (gRPC health, for probes).
    Open,
    /// gRPC reflection: decided by `auth.reflection`.
    Reflection,
    /// An authenticated principal with at least this role.
    Role(Role),
}

/// What one method is, for access control, limits and audit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MethodClass {
    /// Who may call it.
    pub requirement: Requirement,
    /// Counted against the submit rate (`limits.submits_per_second`) instead of the call rate.
    pub submit: bool,
    /// A server stream, counted against `limits.max_streams` while it is open.
    pub stream: bool,
    /// Changes state: audited on success as well as on refusal.
    pub mutating: bool,
}

const fn read(stream: bool) -> MethodClass {
    MethodClass {
        requirement: Requirement::Role(Role::Viewer),
        submit: false,
        stream,
        mutating: false,
    }
}

const fn write(submit: bool) -> MethodClass {
    MethodClass {
        requirement: Requirement::Role(Role::Submitter),
        submit,
        stream: false,
        mutating: true,
    }
}

/// Every API method by full path, with its class.
pub const METHODS: &[(&str, MethodClass)] = &[
    (
        "/comfyreality.runtime.v1.TaskService/CreateTask",
        write(true),
    ),
    ("/comfyreality.runtime.v1.TaskService/GetTask", read(false)),
    (
        "/comfyreality.runtime.v1.TaskService/ListTasks",
        read(false),
    ),
    (
        "/comfyreality.runtime.v1.TaskService/UpdateTaskProgress",
        write(false),
    ),
    (
        "/comfyreality.runtime.v1.TaskService/CancelTask",
        write(false),
    ),
    (
        "/comfyreality.runtime.v1.TaskService/RetryTask",
        write(false),
    ),
    (
        "/comfyreality.runtime.v1.WorkflowService/RegisterWorkflow",
        write(false),
    ),
    (
        "/comfyreality.runtime.v1.WorkflowService/GetWorkflow",
        read(false),
    ),
    (
        "/comfyreality.runtime.v1.WorkflowService/ListWorkflows",
        read(false),
    ),
    (
        "/comfyreality.runtime.v1.WorkflowService/DeleteWorkflow",
        write(false),
    ),
    (
        "/comfyreality.runtime.v1.WorkflowService/ValidateWorkflow",
        read(false),
    ),
    (
        "/comfyreality.runtime.v1.ExecutionService/ExecuteWorkflow",
        write(true),
    ),
    (
        "/comfyreality.runtime.v1.ExecutionService/GetExecution",
        read(false),
    ),
    (
        "/comfyreality.runtime.v1.ExecutionService/ListExecutions",
        read(false),
    ),
    (
        "/comfyreality.runtime.v1.ExecutionService/CancelExecution",
        write(false),
    ),
    (
        "/comfyreality.runtime.v1.ExecutionService/GetArtifact",
        read(true),
    ),
    (
        "/comfyreality.runtime.v1.EventService/SubscribeEvents",
        read(true),
    ),
    (
        "/comfyreality.runtime.v1.EventService/ListEvents",
        read(false),
    ),
    (
        "/comfyreality.runtime.v1.EventService/WatchExecution",
        read(true),
    ),
    (
        "/comfyreality.runtime.v1.AdminService/GetRuntimeInfo",
        MethodClass {
            requirement: Requirement::Role(Role::Admin),
            submit: false,
            stream: false,
            mutating: false,
        },
    ),
];

/// Service prefixes with a fixed requirement.
const HEALTH_PREFIX: &str = "/grpc.health.v1.Health/";
const REFLECTION_PREFIXES: [&str; 2] = [
    "/grpc.reflection.v1.ServerReflection/",
    "/grpc.reflection.v1alpha.ServerReflection/",
];

/// The class of the method at `path`. Paths no table names need admin: an RPC added without an
/// entry is closed, not open.
pub fn classify(path: &str) -> MethodClass {
    if path.starts_with(HEALTH_PREFIX) {
        return MethodClass {
            requirement: Requirement::Open,
            ..read(path.ends_with("/Watch"))
        };
    }
    if REFLECTION_PREFIXES.iter().any(|p| path.starts_with(p)) {
        return MethodClass {
            requirement: Requirement::Reflection,
            ..read(true)
        };
    }
    METHODS
        .iter()
        .find(|(name, _)| *name == path)
        .map(|(_, class)| *class)
        .unwrap_or(MethodClass {
            requirement: Requirement::Role(Role::Admin),
            submit: false,
            stream: false,
            mutating: false,
        })
}

#[cfg(test)]
mod tests {
    use prost::Message as _;

    use super::*;

    /// Every method of every service in the descriptor set has an entry, and no entry names a
    /// method that does not exist.
    #[test]
    fn the_table_covers_every_method() {
        let set = prost_types::FileDescriptorSet::decode(crate::pb::FILE_DESCRIPTOR_SET)
            .expect("the embedded descriptor set decodes");
        let mut paths = Vec::new();
        for file in &set.file {
            if file.package() != "comfyreality.runtime.v1" {
                continue;
            }
            for service in &file.service {
                for method in &service.method {
                    paths.push(format!(
                        "/{}.{}/{}",
                        file.package(),
                        service.name(),
                        method.name()
                    ));
                }
            }
        }
        paths.sort();
        let mut listed: Vec<String> = METHODS.iter().map(|(p, _)| (*p).to_owned()).collect();
        listed.sort();
        assert_eq!(paths, listed);
        for path in &paths {
            let class = classify(path);
            let admin = path.contains("AdminService");
            assert_eq!(
                class.requirement == Requirement::Role(Role::Admin),
                admin,
                "{path}"
            );
        }
        assert_eq!(
            classify("/grpc.health.v1.Health/Check").requirement,
            Requirement::Open
        );
        assert_eq!(
            classify("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo").requirement,
            Requirement::Reflection
        );
        assert_eq!(
            classify("/nope.Service/Call").requirement,
            Requirement::Role(Role::Admin)
        );
    }
}
