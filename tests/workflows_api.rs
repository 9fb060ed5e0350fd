//! WorkflowService end to end: registering ComfyUI API-format graphs (the
//! captured success chain), graph checks as INVALID_ARGUMENT, exact numbers,
//! versions, idempotent registration, listing and deletion.

mod common;

use comfy_reality::pb::workflow_service_client::WorkflowServiceClient;
use comfy_reality::pb::{
    DeleteWorkflowRequest, GetWorkflowRequest, ListWorkflowsRequest, RegisterWorkflowRequest,
    WorkflowDefinition,
};
use common::{TestServer, assert_invalid_argument, assert_status, bad_request_violations};
use tonic::Code;
use tonic::transport::Channel;

type Client = WorkflowServiceClient<Channel>;

/// The POST /prompt body of the captured success scenario
/// (`comfyui-protocol/success.json`): EmptyImage -> ImageInvert ->
/// ImageScale -> SaveImage, pretty-printed so that byte-exact storage shows.
const SUCCESS_PROMPT_BODY: &str = r#"{
  "prompt": {
    "1": {
      "class_type": "EmptyImage",
      "inputs": {"width": 64, "height": 48, "batch_size": 1, "color": 7691863},
      "_meta": {"title": "Empty Image"}
    },
    "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
    "3": {
      "class_type": "ImageScale",
      "inputs": {
        "image": ["2", 0],
        "upscale_method": "nearest-exact",
        "width": 32,
        "height": 24,
        "crop": "disabled"
      }
    },
    "4": {
      "class_type": "SaveImage",
      "inputs": {"images": ["3", 0], "filename_prefix": "proto/success"}
    }
  },
  "client_id": "089f07b8-3790-46f9-8a2c-c88f3ba1e82f"
}"#;

/// A bare API-format graph (no `prompt` wrapper), distinct per `prefix`.
fn chain_graph(prefix: &str) -> String {
    format!(
        r#"{{"1": {{"class_type": "EmptyImage", "inputs": {{"width": 8, "height": 8, "batch_size": 1, "color": 0}}}},
 "2": {{"class_type": "SaveImage", "inputs": {{"images": ["1", 0], "filename_prefix": "{prefix}"}}}}}}"#
    )
}

fn register_request(name: &str, workflow_json: &str) -> RegisterWorkflowRequest {
    RegisterWorkflowRequest {
        name: name.to_owned(),
        workflow_json: workflow_json.to_owned(),
        ..RegisterWorkflowRequest::default()
    }
}

async fn register(client: &mut Client, request: RegisterWorkflowRequest) -> WorkflowDefinition {
    client
        .register_workflow(request)
        .await
        .expect("register workflow")
        .into_inner()
        .workflow
        .expect("response carries the workflow")
}

async fn get(client: &mut Client, id: &str, version: Option<&str>) -> WorkflowDefinition {
    client
        .get_workflow(GetWorkflowRequest {
            id: id.to_owned(),
            version: version.map(str::to_owned),
        })
        .await
        .expect("get workflow")
        .into_inner()
        .workflow
        .expect("response carries the workflow")
}

fn edges(workflow: &WorkflowDefinition) -> Vec<(String, String)> {
    workflow
        .edges
        .iter()
        .map(|e| (e.from_node.clone(), e.to_node.clone()))
        .collect()
}

fn pair(from: &str, to: &str) -> (String, String) {
    (from.to_owned(), to.to_owned())
}

// ---------- RegisterWorkflow ----------

#[tokio::test]
async fn register_success_chain_returns_nodes_sorted_edges_and_defaults() {
    let server = TestServer::start().await;
    let mut client = server.workflows();
    let workflow = register(
        &mut client,
        RegisterWorkflowRequest {
            tags: vec!["test".into(), " images ".into()],
            author: Some("proto capture".into()),
            description: Some("success chain".into()),
            ..register_request("  success chain  ", SUCCESS_PROMPT_BODY)
        },
    )
    .await;

    assert!(
        uuid::Uuid::parse_str(&workflow.id).is_ok(),
        "{}",
        workflow.id
    );
    assert_eq!(workflow.name, "success chain");
    assert_eq!(workflow.version, "1.0.0");
    assert!(workflow.is_valid);
    assert!(
        workflow.validation_errors.is_empty(),
        "{:?}",
        workflow.validation_errors
    );
    assert_eq!(workflow.tags, ["images", "test"]);
    assert_eq!(workflow.author.as_deref(), Some("proto capture"));
    assert!(workflow.created_at.is_some());
    assert_eq!(
        workflow.workflow_json, SUCCESS_PROMPT_BODY,
        "byte-identical"
    );

    let mut node_ids: Vec<&str> = workflow.nodes.keys().map(String::as_str).collect();
    node_ids.sort_unstable();
    assert_eq!(node_ids, ["1", "2", "3", "4"]);
    let classes: Vec<(&str, &str)> = ["1", "2", "3", "4"]
        .iter()
        .map(|id| (*id, workflow.nodes[*id].r#type.as_str()))
        .collect();
    assert_eq!(
        classes,
        [
            ("1", "EmptyImage"),
            ("2", "ImageInvert"),
            ("3", "ImageScale"),
            ("4", "SaveImage")
        ]
    );
    let empty_image = &workflow.nodes["1"];
    assert_eq!(empty_image.id, "1");
    assert_eq!(
        empty_image.inputs,
        r#"{"width":64,"height":48,"batch_size":1,"color":7691863}"#
    );
    assert_eq!(empty_image.metadata, r#"{"title":"Empty Image"}"#);
    assert_eq!(empty_image.outputs, ["0"]);
    assert_eq!(workflow.nodes["3"].outputs, ["0"]);
    assert!(workflow.nodes["4"].outputs.is_empty());
    assert_eq!(workflow.nodes["4"].metadata, "{}");
    assert_eq!(
        workflow.nodes["2"].inputs, r#"{"image":["1",0]}"#,
        "links keep their shape"
    );
    assert_eq!(
        edges(&workflow),
        [pair("1", "2"), pair("2", "3"), pair("3", "4")]
    );

    assert_eq!(get(&mut client, &workflow.id, None).await, workflow);
    assert_eq!(
        get(&mut client, &workflow.id, Some("1.0.0")).await,
        workflow
    );
    server.shutdown().await;
}

#[tokio::test]
async fn edges_are_sorted_numerically_and_deduplicated() {
    let server = TestServer::start().await;
    let mut client = server.workflows();
    // Node 10 consumes node 9 twice and node 2 once; "10" sorts after "9".
    let graph = r#"{
      "10": {"class_type": "SaveImage", "inputs": {"images": ["9", 0], "mask": ["9", 0], "extra": ["2", 1]}},
      "9": {"class_type": "ImageInvert", "inputs": {"image": ["2", 0]}},
      "2": {"class_type": "LoadImage", "inputs": {"image": "x.png"}}
    }"#;
    let workflow = register(&mut client, register_request("dedup", graph)).await;
    assert_eq!(
        edges(&workflow),
        [pair("2", "9"), pair("2", "10"), pair("9", "10")]
    );
    assert_eq!(workflow.nodes["2"].outputs, ["0", "1"]);
    server.shutdown().await;
}

#[tokio::test]
async fn huge_seed_and_long_float_inputs_come_back_exactly() {
    let server = TestServer::start().await;
    let mut client = server.workflows();
    let graph = r#"{"1": {"class_type": "EmptyLatentImage", "inputs": {"width": 512, "height": 512, "batch_size": 1}},
"5": {"class_type": "KSampler",
      "inputs": {"seed": 18446744073709551615, "steps": 20, "cfg": 0.1234567890123456789,
                 "denoise": 1.0, "sampler_name": "euler", "latent_image": ["1", 0]}},
"9": {"class_type": "SaveLatent", "inputs": {"samples": ["5", 0], "filename_prefix": "x"}}}"#;
    let workflow = register(&mut client, register_request("sampler", graph)).await;
    let sampler = &workflow.nodes["5"].inputs;
    assert_eq!(
        sampler,
        r#"{"seed":18446744073709551615,"steps":20,"cfg":0.1234567890123456789,"denoise":1.0,"sampler_name":"euler","latent_image":["1",0]}"#
    );
    assert_eq!(workflow.workflow_json, graph, "byte-identical");

    let fetched = get(&mut client, &workflow.id, None).await;
    assert!(
        fetched.nodes["5"]
            .inputs
            .contains(r#""seed":18446744073709551615"#),
        "{}",
        fetched.nodes["5"].inputs
    );
    assert_eq!(fetched.workflow_json, graph);
    server.shutdown().await;
}

#[tokio::test]
async fn version_that_is_not_semver_is_invalid_argument_naming_version() {
    let server = TestServer::start().await;
    let mut client = server.workflows();
    for version in ["1.0", "1.0.0.0", "v1.0.0", "a.b.c", ""] {
        let status = client
            .register_workflow(RegisterWorkflowRequest {
                version: Some(version.into()),
                ..register_request("versioned", &chain_graph("v"))
            })
            .await
            .expect_err("not semver");
        assert_invalid_argument(&status, "version");
    }
    let status = client
        .get_workflow(GetWorkflowRequest {
            id: "anything".into(),
            version: Some("1.0".into()),
        })
        .await
        .expect_err("not semver");
    assert_invalid_argument(&status, "version");
    let workflow = register(
        &mut client,
        RegisterWorkflowRequest {
            version: Some(" 2.3.4 ".into()),
            ..register_request("versioned", &chain_graph("v"))
        },
    )
    .await;
    assert_eq!(workflow.version, "2.3.4");
    server.shutdown().await;
}

#[tokio::test]
async fn cycle_is_invalid_argument_naming_the_nodes_on_it() {
    let server = TestServer::start().await;
    let mut client = server.workflows();
    let graph = r#"{
      "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
      "alpha": {"class_type": "ImageBlend", "inputs": {"image1": ["1", 0], "image2": ["gamma", 0]}},
      "beta": {"class_type": "ImageInvert", "inputs": {"image": ["alpha", 0]}},
      "gamma": {"class_type": "ImageInvert", "inputs": {"image": ["beta", 0]}},
      "out": {"class_type": "SaveImage", "inputs": {"images": ["gamma", 0], "filename_prefix": "c"}}
    }"#;
    let status = client
        .register_workflow(register_request("cyclic", graph))
        .await
        .expect_err("cycle");
    assert_invalid_argument(&status, "workflow_json");
    let violations = bad_request_violations(&status);
    let cycle = violations
        .iter()
        .find(|(_, description)| description.contains("cycle"))
        .unwrap_or_else(|| panic!("no violation mentions the cycle: {violations:?}"));
    for node in ["alpha", "beta", "gamma"] {
        assert!(cycle.1.contains(node), "{node} not named in {cycle:?}");
    }
    for node in ["1", "out"] {
        assert!(
            !cycle.1.contains(node),
            "{node} is not on the cycle: {cycle:?}"
        );
    }

    // A node feeding itself is a cycle too.
    let selfish = r#"{"selfie": {"class_type": "SaveImage", "inputs": {"images": ["selfie", 0]}}}"#;
    let status = client
        .register_workflow(register_request("self loop", selfish))
        .await
        .expect_err("self loop");
    assert_invalid_argument(&status, "workflow_json");
    assert!(
        bad_request_violations(&status)
            .iter()
            .any(|(_, d)| d.contains("cycle") && d.contains("selfie")),
        "{status:?}"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn link_to_a_missing_node_is_invalid_argument() {
    let server = TestServer::start().await;
    let mut client = server.workflows();
    let graph = r#"{"2": {"class_type": "ImageInvert", "inputs": {"image": ["99", 0]}},
                    "4": {"class_type": "SaveImage", "inputs": {"images": ["2", 0]}}}"#;
    let status = client
        .register_workflow(register_request("dangling", graph))
        .await
        .expect_err("dangling link");
    // The violation names the input that links, as the structural errors
    // name theirs.
    assert_invalid_argument(&status, r#"workflow_json["2"].inputs.image"#);
    assert_eq!(
        bad_request_violations(&status),
        [(
            r#"workflow_json["2"].inputs.image"#.to_owned(),
            "node 2 input image links to missing node 99".to_owned()
        )],
        "{status:?}"
    );
    // In a POST /prompt body the path is under `prompt`.
    let wrapped = format!(r#"{{"prompt": {graph}, "client_id": "c"}}"#);
    let status = client
        .register_workflow(register_request("dangling", &wrapped))
        .await
        .expect_err("dangling link");
    assert_invalid_argument(&status, r#"workflow_json.prompt["2"].inputs.image"#);
    server.shutdown().await;
}

#[tokio::test]
async fn graph_without_an_output_node_is_invalid_argument() {
    let server = TestServer::start().await;
    let mut client = server.workflows();
    let graph = r#"{"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
                    "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}}}"#;
    let status = client
        .register_workflow(register_request("no output", graph))
        .await
        .expect_err("no output node");
    assert_invalid_argument(&status, "workflow_json");
    assert!(
        bad_request_violations(&status)
            .iter()
            .any(|(_, d)| d.contains("output node")),
        "{status:?}"
    );
    // Nothing was stored.
    let listed = client
        .list_workflows(ListWorkflowsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(listed.workflows.is_empty());
    server.shutdown().await;
}

#[tokio::test]
async fn workflow_json_that_is_not_a_graph_is_invalid_argument() {
    let server = TestServer::start().await;
    let mut client = server.workflows();
    for text in ["not json", "", "[1, 2]", "{}", r#"{"prompt": {}}"#] {
        let status = client
            .register_workflow(register_request("broken", text))
            .await
            .expect_err("not a graph");
        assert_eq!(status.code(), Code::InvalidArgument, "{text:?}: {status:?}");
        let fields: Vec<String> = bad_request_violations(&status)
            .into_iter()
            .map(|(f, _)| f)
            .collect();
        assert!(
            fields.iter().any(|f| f.starts_with("workflow_json")),
            "{text:?}: {fields:?}"
        );
    }
    let status = client
        .register_workflow(register_request("broken", "not json"))
        .await
        .expect_err("not JSON");
    assert_invalid_argument(&status, "workflow_json");

    // A node without class_type names the node's path.
    let status = client
        .register_workflow(register_request(
            "broken",
            r#"{"3": {"inputs": {}}, "4": {"class_type": "SaveImage", "inputs": {}}}"#,
        ))
        .await
        .expect_err("node without class_type");
    let fields: Vec<String> = bad_request_violations(&status)
        .into_iter()
        .map(|(f, _)| f)
        .collect();
    assert!(
        fields.iter().any(|f| f.starts_with("workflow_json")
            && f.contains('3')
            && f.ends_with("class_type")),
        "{fields:?}"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn empty_name_and_bad_workflow_id_are_invalid_argument() {
    let server = TestServer::start().await;
    let mut client = server.workflows();
    let status = client
        .register_workflow(register_request("  ", &chain_graph("n")))
        .await
        .expect_err("empty name");
    assert_invalid_argument(&status, "name");
    let status = client
        .register_workflow(RegisterWorkflowRequest {
            workflow_id: Some("bad id!".into()),
            ..register_request("named", &chain_graph("n"))
        })
        .await
        .expect_err("bad workflow id");
    assert_invalid_argument(&status, "workflow_id");
    server.shutdown().await;
}

// ---------- versions ----------

#[tokio::test]
async fn get_workflow_returns_the_highest_version_or_the_one_asked_for() {
    let server = TestServer::start().await;
    let mut client = server.workflows();
    let first = register(
        &mut client,
        RegisterWorkflowRequest {
            version: Some("1.0.0".into()),
            ..register_request("upscaler", &chain_graph("v1.0.0"))
        },
    )
    .await;
    let id = first.id.clone();
    // Registered out of order: 1.10.0 before 1.2.0. Numerically 1.10.0 is highest.
    for version in ["1.10.0", "1.2.0"] {
        let registered = register(
            &mut client,
            RegisterWorkflowRequest {
                workflow_id: Some(id.clone()),
                version: Some(version.into()),
                ..register_request("upscaler", &chain_graph(&format!("v{version}")))
            },
        )
        .await;
        assert_eq!(registered.id, id);
        assert_eq!(registered.version, version);
    }

    let latest = get(&mut client, &id, None).await;
    assert_eq!(latest.version, "1.10.0");
    assert_eq!(latest.workflow_json, chain_graph("v1.10.0"));
    for version in ["1.0.0", "1.2.0", "1.10.0"] {
        let workflow = get(&mut client, &id, Some(version)).await;
        assert_eq!(workflow.version, version);
        assert_eq!(workflow.workflow_json, chain_graph(&format!("v{version}")));
    }
    assert_eq!(get(&mut client, &id, Some("1.0.0")).await, first);

    let status = client
        .get_workflow(GetWorkflowRequest {
            id: id.clone(),
            version: Some("1.3.0".into()),
        })
        .await
        .expect_err("unknown version");
    assert_status(&status, Code::NotFound, "WorkflowError");
    let status = client
        .get_workflow(GetWorkflowRequest {
            id: "no-such-workflow".into(),
            version: None,
        })
        .await
        .expect_err("unknown workflow");
    assert_status(&status, Code::NotFound, "WorkflowError");
    let status = client
        .get_workflow(GetWorkflowRequest {
            id: String::new(),
            version: None,
        })
        .await
        .expect_err("empty id");
    assert_invalid_argument(&status, "id");
    server.shutdown().await;
}

#[tokio::test]
async fn registering_the_same_version_again_is_idempotent_only_for_the_same_graph() {
    let server = TestServer::start().await;
    let mut client = server.workflows();
    let first = register(&mut client, register_request("same", SUCCESS_PROMPT_BODY)).await;
    let again = register(
        &mut client,
        RegisterWorkflowRequest {
            workflow_id: Some(first.id.clone()),
            version: Some("1.0.0".into()),
            ..register_request("same", SUCCESS_PROMPT_BODY)
        },
    )
    .await;
    assert_eq!(again, first);

    let status = client
        .register_workflow(RegisterWorkflowRequest {
            workflow_id: Some(first.id.clone()),
            version: Some("1.0.0".into()),
            ..register_request("same", &chain_graph("other"))
        })
        .await
        .expect_err("same id and version, other graph");
    assert_status(&status, Code::AlreadyExists, "WorkflowError");
    assert_eq!(get(&mut client, &first.id, None).await, first, "unchanged");

    // Same graph, other descriptive fields: a different body too.
    let status = client
        .register_workflow(RegisterWorkflowRequest {
            workflow_id: Some(first.id.clone()),
            version: Some("1.0.0".into()),
            tags: vec!["renamed".into()],
            ..register_request("renamed", SUCCESS_PROMPT_BODY)
        })
        .await
        .expect_err("same id and version, other name and tags");
    assert_status(&status, Code::AlreadyExists, "WorkflowError");

    // Without a workflow id, the same graph makes a new workflow.
    let separate = register(&mut client, register_request("same", SUCCESS_PROMPT_BODY)).await;
    assert_ne!(separate.id, first.id);
    server.shutdown().await;
}

#[tokio::test]
async fn versions_with_a_second_spelling_or_beyond_u64_are_rejected() {
    // Both pass the seed's all-digits x.y.z check, but "1.01.0" would be a
    // second spelling of "1.1.0" and 18446744073709551616 does not fit a u64
    // (it would collide with 0.0.0): both are rejected naming `version`, and
    // the stored version they would shadow is untouched.
    let server = TestServer::start().await;
    let mut client = server.workflows();
    for (stored, other) in [("1.1.0", "1.01.0"), ("0.0.0", "18446744073709551616.0.0")] {
        let base = register(
            &mut client,
            RegisterWorkflowRequest {
                version: Some(stored.into()),
                ..register_request("versions", &chain_graph(stored))
            },
        )
        .await;
        let status = client
            .register_workflow(RegisterWorkflowRequest {
                workflow_id: Some(base.id.clone()),
                version: Some(other.into()),
                ..register_request("versions", &chain_graph(other))
            })
            .await
            .expect_err("a second spelling of a version");
        assert_invalid_argument(&status, "version");
        let status = client
            .get_workflow(GetWorkflowRequest {
                id: base.id.clone(),
                version: Some(other.into()),
            })
            .await
            .expect_err("not a version");
        assert_invalid_argument(&status, "version");
        assert_eq!(get(&mut client, &base.id, Some(stored)).await, base);
        assert_eq!(get(&mut client, &base.id, None).await, base);
    }
    server.shutdown().await;
}

// ---------- ListWorkflows ----------

async fn list_all(client: &mut Client, request: ListWorkflowsRequest) -> Vec<(String, String)> {
    let mut seen = Vec::new();
    let mut token = String::new();
    for _ in 0..100 {
        let response = client
            .list_workflows(ListWorkflowsRequest {
                page_token: token.clone(),
                ..request.clone()
            })
            .await
            .expect("list workflows")
            .into_inner();
        if request.page_size > 0 {
            assert!(response.workflows.len() <= request.page_size as usize);
        }
        seen.extend(
            response
                .workflows
                .iter()
                .map(|w| (w.id.clone(), w.version.clone())),
        );
        if response.next_page_token.is_empty() {
            return seen;
        }
        assert_eq!(
            response.workflows.len(),
            request.page_size as usize,
            "only the last page is short"
        );
        token = response.next_page_token;
    }
    panic!("paging does not terminate");
}

#[tokio::test]
async fn list_workflows_pages_latest_or_all_versions() {
    let server = TestServer::start().await;
    let mut client = server.workflows();
    // Five workflows; three have a second version 1.10.0; two carry a tag.
    let mut expected_all = Vec::new();
    let mut expected_latest = Vec::new();
    let mut expected_tagged = Vec::new();
    for i in 0..5 {
        let tags = if i % 2 == 0 {
            vec!["hd".to_owned()]
        } else {
            vec![]
        };
        let workflow = register(
            &mut client,
            RegisterWorkflowRequest {
                version: Some("1.9.0".into()),
                tags: tags.clone(),
                ..register_request(&format!("wf {i}"), &chain_graph(&format!("{i}-a")))
            },
        )
        .await;
        expected_all.push((workflow.id.clone(), "1.9.0".to_owned()));
        let mut latest = "1.9.0";
        if i < 3 {
            register(
                &mut client,
                RegisterWorkflowRequest {
                    workflow_id: Some(workflow.id.clone()),
                    version: Some("1.10.0".into()),
                    tags: tags.clone(),
                    ..register_request(&format!("wf {i}"), &chain_graph(&format!("{i}-b")))
                },
            )
            .await;
            expected_all.push((workflow.id.clone(), "1.10.0".to_owned()));
            latest = "1.10.0";
        }
        expected_latest.push((workflow.id.clone(), latest.to_owned()));
        if !tags.is_empty() {
            expected_tagged.push((workflow.id.clone(), latest.to_owned()));
        }
    }
    // Ordered by id, then numerically by version.
    let version_key = |v: &str| -> Vec<u64> { v.split('.').map(|p| p.parse().unwrap()).collect() };
    expected_all.sort_by(|a, b| {
        a.0.cmp(&b.0)
            .then(version_key(&a.1).cmp(&version_key(&b.1)))
    });
    expected_latest.sort();
    expected_tagged.sort();

    for page_size in [1, 2, 3, 100] {
        let latest = list_all(
            &mut client,
            ListWorkflowsRequest {
                page_size,
                ..ListWorkflowsRequest::default()
            },
        )
        .await;
        assert_eq!(latest, expected_latest, "page_size {page_size}");
        let all = list_all(
            &mut client,
            ListWorkflowsRequest {
                page_size,
                all_versions: true,
                ..ListWorkflowsRequest::default()
            },
        )
        .await;
        assert_eq!(all, expected_all, "all versions, page_size {page_size}");
        let tagged = list_all(
            &mut client,
            ListWorkflowsRequest {
                page_size,
                tags: vec!["hd".into()],
                ..ListWorkflowsRequest::default()
            },
        )
        .await;
        assert_eq!(tagged, expected_tagged, "tag hd, page_size {page_size}");
    }

    for token in ["garbage", "74313a31"] {
        let status = client
            .list_workflows(ListWorkflowsRequest {
                page_token: token.into(),
                ..ListWorkflowsRequest::default()
            })
            .await
            .expect_err("bad page token");
        assert_invalid_argument(&status, "page_token");
    }
    let status = client
        .list_workflows(ListWorkflowsRequest {
            page_size: 5000,
            ..ListWorkflowsRequest::default()
        })
        .await
        .expect_err("page size over the maximum");
    assert_invalid_argument(&status, "page_size");
    server.shutdown().await;
}

// ---------- DeleteWorkflow ----------

#[tokio::test]
async fn delete_one_version_then_all_then_not_found() {
    let server = TestServer::start().await;
    let mut client = server.workflows();
    let first = register(
        &mut client,
        RegisterWorkflowRequest {
            version: Some("1.0.0".into()),
            ..register_request("doomed", &chain_graph("1.0.0"))
        },
    )
    .await;
    let id = first.id.clone();
    for version in ["1.2.0", "1.10.0"] {
        register(
            &mut client,
            RegisterWorkflowRequest {
                workflow_id: Some(id.clone()),
                version: Some(version.into()),
                ..register_request("doomed", &chain_graph(version))
            },
        )
        .await;
    }

    let deleted = client
        .delete_workflow(DeleteWorkflowRequest {
            id: id.clone(),
            version: Some("1.10.0".into()),
        })
        .await
        .expect("delete one version")
        .into_inner()
        .deleted_versions;
    assert_eq!(deleted, ["1.10.0"]);
    let status = client
        .get_workflow(GetWorkflowRequest {
            id: id.clone(),
            version: Some("1.10.0".into()),
        })
        .await
        .expect_err("deleted version");
    assert_status(&status, Code::NotFound, "WorkflowError");
    assert_eq!(get(&mut client, &id, None).await.version, "1.2.0");

    let status = client
        .delete_workflow(DeleteWorkflowRequest {
            id: id.clone(),
            version: Some("1.10.0".into()),
        })
        .await
        .expect_err("already deleted");
    assert_status(&status, Code::NotFound, "WorkflowError");

    let mut deleted = client
        .delete_workflow(DeleteWorkflowRequest {
            id: id.clone(),
            version: None,
        })
        .await
        .expect("delete all versions")
        .into_inner()
        .deleted_versions;
    deleted.sort();
    assert_eq!(deleted, ["1.0.0", "1.2.0"]);

    let status = client
        .get_workflow(GetWorkflowRequest {
            id: id.clone(),
            version: None,
        })
        .await
        .expect_err("everything deleted");
    assert_status(&status, Code::NotFound, "WorkflowError");
    let status = client
        .delete_workflow(DeleteWorkflowRequest {
            id: id.clone(),
            version: None,
        })
        .await
        .expect_err("nothing left to delete");
    assert_status(&status, Code::NotFound, "WorkflowError");
    let status = client
        .delete_workflow(DeleteWorkflowRequest {
            id: String::new(),
            version: None,
        })
        .await
        .expect_err("empty id");
    assert_invalid_argument(&status, "id");
    let status = client
        .delete_workflow(DeleteWorkflowRequest {
            id: id.clone(),
            version: Some("1.0".into()),
        })
        .await
        .expect_err("not semver");
    assert_invalid_argument(&status, "version");
    let listed = client
        .list_workflows(ListWorkflowsRequest {
            all_versions: true,
            ..ListWorkflowsRequest::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(listed.workflows.is_empty(), "{:?}", listed.workflows);
    server.shutdown().await;
}
