//! Tests of the checks against object_info, the exact comparisons of numbers, the overrides and
//! the `filename_prefix` rewrite, on a catalogue from the captured `object_info.json`.

use std::path::PathBuf;

use proptest::prelude::*;
use serde_json::json;

use super::prompt_edits::sanitize_path;
use super::*;
use crate::model::NewWorkflow;
use crate::model::workflow::write_api_prompt;

/// Classes copied from the captured object_info.json, plus two custom
/// ones for wildcard and comma-separated types and the newer COMBO form.
const EMBEDDED_OBJECT_INFO: &str = r#"{
  "EmptyImage": {"input": {"required": {
      "width": ["INT", {"default": 512, "min": 1, "max": 16384, "step": 1}],
      "height": ["INT", {"default": 512, "min": 1, "max": 16384, "step": 1}],
      "batch_size": ["INT", {"default": 1, "min": 1, "max": 4096}],
      "color": ["INT", {"default": 0, "min": 0, "max": 16777215, "step": 1}]}},
    "output": ["IMAGE"], "output_node": false},
  "ImageInvert": {"input": {"required": {"image": ["IMAGE"]}}, "output": ["IMAGE"], "output_node": false},
  "ImageScale": {"input": {"required": {
      "image": ["IMAGE"],
      "upscale_method": [["nearest-exact", "bilinear", "area", "bicubic", "lanczos"]],
      "width": ["INT", {"default": 512, "min": 0, "max": 16384, "step": 1}],
      "height": ["INT", {"default": 512, "min": 0, "max": 16384, "step": 1}],
      "crop": [["disabled", "center"]]}},
    "output": ["IMAGE"], "output_node": false},
  "SaveImage": {"input": {"required": {
      "images": ["IMAGE", {"tooltip": "The images to save."}],
      "filename_prefix": ["STRING", {"default": "ComfyUI"}]},
      "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}},
    "output": ["IMAGE"], "output_node": true},
  "PreviewImage": {"input": {"required": {"images": ["IMAGE"]},
      "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}},
    "output": ["IMAGE"], "output_node": true},
  "LoadImage": {"input": {"required": {"image": [["example.png"], {"image_upload": true}]}},
    "output": ["IMAGE", "MASK"], "output_node": false},
  "TestDelay": {"input": {"required": {
      "seconds": ["FLOAT", {"default": 3.0, "min": 0.0, "max": 3600.0, "step": 0.1}],
      "steps": ["INT", {"default": 10, "min": 1, "max": 10000}],
      "nonce": ["INT", {"default": 0, "min": 0, "max": 18446744073709551615}]},
      "optional": {"value": ["INT", {"forceInput": true}], "image": ["IMAGE"],
                   "progress_text": ["BOOLEAN", {"default": false}]},
      "hidden": {"unique_id": "UNIQUE_ID"}},
    "output": ["INT"], "output_node": true},
  "AnyPass": {"input": {"required": {"anything": ["*"], "mode": ["COMBO", {"options": ["a", 1.5]}]}},
    "output": ["*", "IMAGE,MASK"], "output_node": false},
  "MaskOnly": {"input": {"required": {"mask": ["MASK,LATENT"]}}, "output": ["MASK"], "output_node": false}
}"#;

fn embedded() -> ObjectInfoCatalogue {
    let (catalogue, skipped) =
        ObjectInfoCatalogue::from_object_info_json(EMBEDDED_OBJECT_INFO.as_bytes()).unwrap();
    assert!(skipped.is_empty());
    catalogue
}

fn protocol_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/comfyui-protocol")
}

/// The captured catalogue, when the shared protocol folder is present.
fn captured() -> Option<ObjectInfoCatalogue> {
    let body = std::fs::read(protocol_dir().join("object_info.json")).ok()?;
    let (catalogue, skipped) = ObjectInfoCatalogue::from_object_info_json(&body).unwrap();
    assert!(skipped.is_empty());
    Some(catalogue)
}

/// The embedded catalogue, and the captured one when present: the core
/// classes must judge alike in both.
fn catalogues() -> Vec<ObjectInfoCatalogue> {
    let mut all = vec![embedded()];
    all.extend(captured());
    all
}

fn workflow(graph: Value) -> WorkflowDefinition {
    WorkflowDefinition::from_api_json(NewWorkflow::new("t"), &graph.to_string()).unwrap()
}

fn check(graph: Value, catalogue: &ObjectInfoCatalogue) -> Result<(), ValidationError> {
    let by_workflow = check_against_object_info(&workflow(graph.clone()), catalogue);
    let by_prompt =
        check_prompt_against_object_info(graph.as_object().unwrap(), catalogue, WORKFLOW_FIELD);
    assert_eq!(by_workflow, by_prompt, "both entry points must agree");
    by_workflow
}

fn fields(result: Result<(), ValidationError>) -> Vec<String> {
    result
        .unwrap_err()
        .violations
        .into_iter()
        .map(|v| v.field)
        .collect()
}

fn empty_image(width: Value) -> Value {
    json!({"class_type": "EmptyImage",
           "inputs": {"width": width, "height": 48, "batch_size": 1, "color": 0}})
}

fn save(images: Value) -> Value {
    json!({"class_type": "SaveImage", "inputs": {"images": images, "filename_prefix": "x"}})
}

fn nonce_graph(nonce: &str) -> Value {
    let text = format!(
        r#"{{"1": {{"class_type": "TestDelay", "inputs": {{"seconds": 0.1, "steps": 1, "nonce": {nonce}}}}}}}"#
    );
    serde_json::from_str(&text).unwrap()
}

#[test]
fn a_valid_graph_passes() {
    for c in catalogues() {
        let graph = json!({"1": empty_image(json!(64)), "2": save(json!(["1", 0]))});
        assert_eq!(check(graph, &c), Ok(()));
    }
}

#[test]
fn unknown_class_is_named() {
    for c in catalogues() {
        let graph = json!({"1": {"class_type": "NoSuchNode", "inputs": {}},
                           "2": save(json!(["1", 0]))});
        let e = check(graph, &c).unwrap_err();
        assert_eq!(e.len(), 1, "{e}");
        assert_eq!(e.violations[0].field, r#"workflow_json["1"].class_type"#);
        assert!(e.violations[0].description.contains("\"NoSuchNode\""));
    }
}

#[test]
fn missing_required_input_but_not_optional_or_hidden() {
    for c in catalogues() {
        let graph = json!({"1": empty_image(json!(64)),
                           "2": {"class_type": "ImageInvert", "inputs": {}},
                           "3": save(json!(["2", 0]))});
        assert_eq!(
            fields(check(graph, &c)),
            [r#"workflow_json["2"].inputs.image"#]
        );
        // TestDelay's optional value/image/progress_text and hidden unique_id may be absent.
        assert_eq!(check(nonce_graph("1"), &c), Ok(()));
    }
}

#[test]
fn out_of_range_values_are_all_reported() {
    for c in catalogues() {
        let graph = json!({"1": {"class_type": "EmptyImage",
                                 "inputs": {"width": 0, "height": 99999, "batch_size": 1, "color": 0}},
                           "2": save(json!(["1", 0]))});
        let e = check(graph, &c).unwrap_err();
        assert_eq!(e.len(), 2, "{e}");
        assert!(e.has_field(r#"workflow_json["1"].inputs.width"#));
        assert!(e.has_field(r#"workflow_json["1"].inputs.height"#));
        assert!(e.to_string().contains("smaller than the minimum 1"), "{e}");
        assert!(
            e.to_string().contains("bigger than the maximum 16384"),
            "{e}"
        );
    }
}

#[test]
fn u64_seed_edge_is_exact() {
    for c in catalogues() {
        assert_eq!(check(nonce_graph("18446744073709551615"), &c), Ok(()));
        assert_eq!(check(nonce_graph("0"), &c), Ok(()));
        for bad in [
            "18446744073709551616",
            "-1",
            "1e30",
            "184467440737095516150",
        ] {
            let e = check(nonce_graph(bad), &c).unwrap_err();
            assert_eq!(
                e.violations[0].field, r#"workflow_json["1"].inputs.nonce"#,
                "{bad}"
            );
        }
    }
}

#[test]
fn float_bounds_are_exact_too() {
    let c = embedded();
    let graph = |seconds: &str| -> Value {
        serde_json::from_str(&format!(
            r#"{{"1": {{"class_type": "TestDelay", "inputs": {{"seconds": {seconds}, "steps": 1, "nonce": 0}}}}}}"#
        ))
        .unwrap()
    };
    for ok in ["0", "0.0", "3600", "3600.000", "3.6e3", "-0", "1e-400"] {
        assert_eq!(check(graph(ok), &c), Ok(()), "{ok}");
    }
    for bad in [
        "3600.0000000000000000001",
        "-1e-400",
        "3.6e4",
        "1e99999999999999999999",
    ] {
        assert!(check(graph(bad), &c).is_err(), "{bad}");
    }
}

#[test]
fn combo_values_must_be_allowed() {
    for c in catalogues() {
        let scale = |method: Value| {
            json!({"1": empty_image(json!(64)),
                   "2": {"class_type": "ImageScale", "inputs": {"image": ["1", 0],
                         "upscale_method": method, "width": 8, "height": 8, "crop": "disabled"}},
                   "3": save(json!(["2", 0]))})
        };
        let e = check(scale(json!("foo")), &c).unwrap_err();
        assert_eq!(
            e.violations[0].field,
            r#"workflow_json["2"].inputs.upscale_method"#
        );
        assert!(e.violations[0].description.contains("\"nearest-exact\""));
        assert_eq!(check(scale(json!("lanczos")), &c), Ok(()));
    }
    // The newer ["COMBO", {"options": [...]}] form; numbers compare by value.
    let c = embedded();
    let any = |mode: Value| {
        json!({"1": {"class_type": "AnyPass", "inputs": {"anything": 3, "mode": mode}},
               "2": save(json!(["1", 1]))})
    };
    assert_eq!(check(any(json!("a")), &c), Ok(()));
    let exact: Value = serde_json::from_str("1.50").unwrap();
    assert_eq!(check(any(exact), &c), Ok(()));
    assert!(check(any(json!("b")), &c).is_err());
    assert!(check(any(json!(1)), &c).is_err());
}

#[test]
fn literals_of_the_wrong_type() {
    let c = embedded();
    let cases = [
        ("width", json!("abc")),
        ("width", json!("64")),
        ("width", json!(6.5)),
        ("width", json!(true)),
        ("width", Value::Null),
        ("seconds", json!("1")),
        ("progress_text", json!(1)),
        ("progress_text", json!("true")),
    ];
    for (input, value) in cases {
        let graph = if input == "width" {
            json!({"1": empty_image(value.clone()), "2": save(json!(["1", 0]))})
        } else {
            let mut g = nonce_graph("0");
            g["1"]["inputs"][input] = value.clone();
            g
        };
        let e = check(graph, &c).unwrap_err();
        assert_eq!(
            e.violations[0].field,
            format!(r#"workflow_json["1"].inputs.{input}"#),
            "{value}"
        );
        assert!(e.violations[0].description.starts_with("expected"), "{e}");
    }
    // An integer written as a float is still an integer; a FLOAT takes an integer.
    let g: Value = serde_json::from_str(
        r#"{"1": {"class_type": "TestDelay", "inputs": {"seconds": 2, "steps": 1.0, "nonce": 1e3}}}"#,
    )
    .unwrap();
    assert_eq!(check(g, &c), Ok(()));
}

#[test]
fn link_problems() {
    for c in catalogues() {
        // Slot beyond the source's outputs.
        let graph = json!({"1": empty_image(json!(64)), "2": save(json!(["1", 5]))});
        let e = check(graph, &c).unwrap_err();
        assert_eq!(e.violations[0].field, r#"workflow_json["2"].inputs.images"#);
        assert!(e.violations[0].description.contains("has 1 output"), "{e}");
        // Missing source node.
        let graph = json!({"2": save(json!(["99", 0]))});
        assert_eq!(
            fields(check(graph, &c)),
            [r#"workflow_json["2"].inputs.images"#]
        );
        // A list that is not a link.
        let graph = json!({"1": empty_image(json!(64)), "2": save(json!(["1"]))});
        assert_eq!(
            fields(check(graph, &c)),
            [r#"workflow_json["2"].inputs.images"#]
        );
        // Type mismatch: IMAGE into INT.
        let mut graph = nonce_graph("1");
        graph["0"] = empty_image(json!(64));
        graph["1"]["inputs"]["value"] = json!(["0", 0]);
        let e = check(graph, &c).unwrap_err();
        assert_eq!(e.violations[0].field, r#"workflow_json["1"].inputs.value"#);
        assert!(
            e.violations[0].description.contains("receives IMAGE"),
            "{e}"
        );
        assert!(e.violations[0].description.contains("expects INT"), "{e}");
    }
}

#[test]
fn wildcard_and_comma_types_match_like_comfyui() {
    assert!(types_compatible("IMAGE", "IMAGE"));
    assert!(types_compatible("*", "INT"));
    assert!(types_compatible("IMAGE", "*"));
    assert!(types_compatible("IMAGE,MASK", "MASK"));
    assert!(types_compatible("MASK", "MASK, LATENT"));
    assert!(!types_compatible("IMAGE", "INT"));
    assert!(!types_compatible("IMAGE,MASK", "LATENT,INT"));

    let c = embedded();
    // "*" output into IMAGE, and an IMAGE output into a "*" input.
    let graph = json!({"1": empty_image(json!(64)),
                       "2": {"class_type": "AnyPass", "inputs": {"anything": ["1", 0], "mode": "a"}},
                       "3": save(json!(["2", 0])),
                       "4": {"class_type": "MaskOnly", "inputs": {"mask": ["2", 1]}}});
    assert_eq!(check(graph, &c), Ok(()));
    let graph = json!({"1": empty_image(json!(64)),
                       "4": {"class_type": "MaskOnly", "inputs": {"mask": ["1", 0]}},
                       "5": save(json!(["1", 0]))});
    assert_eq!(
        fields(check(graph, &c)),
        [r#"workflow_json["4"].inputs.mask"#]
    );
}

#[test]
fn no_output_node_by_catalogue_flags() {
    for c in catalogues() {
        let graph = json!({"1": empty_image(json!(64)),
                           "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}}});
        assert_eq!(fields(check(graph, &c)), ["workflow_json"]);
    }
    // Judged by output_node, not by the class name.
    let mut info = embedded().classes;
    info.get_mut("SaveImage").unwrap().output_node = false;
    let c = ObjectInfoCatalogue::from(info);
    let graph = json!({"1": empty_image(json!(64)), "2": save(json!(["1", 0]))});
    assert_eq!(fields(check(graph, &c)), ["workflow_json"]);
}

#[test]
fn unknown_extra_and_hidden_inputs_are_ignored() {
    let c = embedded();
    let mut graph = json!({"1": empty_image(json!(64)), "2": save(json!(["1", 0]))});
    graph["2"]["inputs"]["not_declared"] = json!([1, 2, 3]);
    graph["2"]["inputs"]["prompt"] = json!({"anything": true});
    assert_eq!(check(graph, &c), Ok(()));
}

#[test]
fn several_problems_at_once_with_their_paths() {
    let c = embedded();
    let graph = json!({
        "1": {"class_type": "EmptyImage", "inputs": {"width": "abc", "height": 0, "batch_size": 1}},
        "2": {"class_type": "Mystery", "inputs": {}},
        "3": {"class_type": "ImageScale", "inputs": {"image": ["1", 3], "upscale_method": "foo",
              "width": 8, "height": 8, "crop": "disabled"}},
        "10": {"class_type": "TestDelay", "inputs": {"seconds": 0.1, "steps": 1,
               "nonce": 18446744073709551616u128, "value": ["3", 0]}}
    });
    let got = fields(check(graph, &c));
    assert_eq!(
        got,
        [
            r#"workflow_json["1"].inputs.color"#,
            r#"workflow_json["1"].inputs.width"#,
            r#"workflow_json["1"].inputs.height"#,
            r#"workflow_json["2"].class_type"#,
            r#"workflow_json["3"].inputs.image"#,
            r#"workflow_json["3"].inputs.upscale_method"#,
            r#"workflow_json["10"].inputs.nonce"#,
            r#"workflow_json["10"].inputs.value"#,
        ]
    );
}

#[test]
fn reports_are_capped() {
    let c = embedded();
    let mut graph = JsonObject::new();
    for i in 0..150 {
        graph.insert(i.to_string(), json!({"class_type": "Nope", "inputs": {}}));
    }
    let e = check_prompt_against_object_info(&graph, &c, WORKFLOW_FIELD).unwrap_err();
    assert_eq!(e.len(), MAX_REPORTED_PROBLEMS + 1);
    assert!(
        e.violations
            .last()
            .unwrap()
            .description
            .contains("more problems")
    );
}

#[test]
fn malformed_prompt_nodes_are_reported() {
    let c = embedded();
    let prompt = json!({"1": 7, "2": {"inputs": {}}, "3": save(json!(["2", 0]))});
    let got = fields(check_prompt_against_object_info(
        prompt.as_object().unwrap(),
        &c,
        "prompt",
    ));
    assert_eq!(got, [r#"prompt["1"]"#, r#"prompt["2"].class_type"#]);
}

/// Every 400 case of the captured validation transcript that maps onto a
/// catalogue check is caught, at the node and input ComfyUI names.
#[test]
fn agrees_with_comfyui_validation_transcript() {
    let Some(c) = captured() else { return };
    let text = std::fs::read(protocol_dir().join("validation_error.json")).unwrap();
    let transcript: Value = serde_json::from_slice(&text).unwrap();
    let events = transcript["events"].as_array().unwrap();
    let mut compared = 0;
    let mut request: Option<&Value> = None;
    for event in events {
        if event["path"] != "/prompt" {
            continue;
        }
        match event["kind"].as_str() {
            Some("http_request") => request = event["body"].get("prompt"),
            Some("http_response") => {
                let Some(prompt) = request.take().and_then(Value::as_object) else {
                    continue;
                };
                let body = &event["body"];
                let result = check_prompt_against_object_info(prompt, &c, WORKFLOW_FIELD);
                let kind = body["error"]["type"].as_str().unwrap_or_default();
                match kind {
                    "missing_node_type" => {
                        let id = body["error"]["extra_info"]["node_id"].as_str().unwrap();
                        let field = key_path(WORKFLOW_FIELD, id);
                        assert!(
                            result
                                .unwrap_err()
                                .has_field(&join_path(&field, "class_type"))
                        );
                    }
                    "prompt_no_outputs" => {
                        assert!(result.unwrap_err().has_field(WORKFLOW_FIELD));
                    }
                    _ if body["node_errors"]
                        .as_object()
                        .is_some_and(|n| !n.is_empty()) =>
                    {
                        // 400 prompt_outputs_failed_validation, or a 200 for a partly
                        // valid prompt (ComfyUI runs the valid outputs; we refuse it).
                        let e = result.unwrap_err();
                        for (id, node) in body["node_errors"].as_object().unwrap() {
                            let node_path = key_path(WORKFLOW_FIELD, id);
                            for error in node["errors"].as_array().unwrap() {
                                let input = error["extra_info"]["input_name"].as_str();
                                let hit = e.violations.iter().any(|v| match input {
                                    Some(name) => {
                                        v.field == key_path(&join_path(&node_path, "inputs"), name)
                                    }
                                    None => v.field.starts_with(&node_path),
                                });
                                assert!(hit, "{}: {e}", error["type"]);
                            }
                        }
                    }
                    // Valid, or a case about the request rather than the graph.
                    _ if event["status"] == 200 => assert_eq!(result, Ok(()), "{body}"),
                    _ => {}
                }
                compared += 1;
            }
            _ => {}
        }
    }
    assert!(compared >= 10, "{compared}");
}

fn prompt_of(graph: Value) -> JsonObject {
    graph.as_object().unwrap().clone()
}

#[test]
fn overrides_set_values_exactly() {
    let mut prompt = prompt_of(nonce_graph("1"));
    prompt.insert("0".into(), empty_image(json!(64)));
    prompt.insert("6".into(), save(json!(["0", 0])));
    let overrides: JsonObject = serde_json::from_str(
        r#"{"1": {"nonce": 18446744073709551615, "seconds": 0.10000000000000000001},
            "6": {"filename_prefix": "cats"}}"#,
    )
    .unwrap();
    apply_overrides(&mut prompt, &overrides).unwrap();
    let text = Value::Object(prompt.clone()).to_string();
    assert!(text.contains(r#""nonce":18446744073709551615"#), "{text}");
    assert!(
        text.contains(r#""seconds":0.10000000000000000001"#),
        "{text}"
    );
    assert_eq!(prompt["6"]["inputs"]["filename_prefix"], "cats");
    // Key order is kept: nonce stays where it was.
    let keys: Vec<&String> = prompt["1"]["inputs"].as_object().unwrap().keys().collect();
    assert_eq!(keys, ["seconds", "steps", "nonce"]);
    // The result still passes the checks.
    assert_eq!(
        check_prompt_against_object_info(&prompt, &embedded(), WORKFLOW_FIELD),
        Ok(())
    );
}

#[test]
fn overrides_are_all_or_nothing_and_name_the_bad_ones() {
    let original = prompt_of(json!({"1": empty_image(json!(64)), "2": save(json!(["1", 0]))}));
    let mut prompt = original.clone();
    let overrides = prompt_of(json!({
        "1": {"width": 128},
        "9": {"seed": 1},
        "2": {"images": "literal", "filename_prefix": ["1", 0]},
        "x y": 5
    }));
    let e = apply_overrides(&mut prompt, &overrides).unwrap_err();
    let got: Vec<&str> = e.violations.iter().map(|v| v.field.as_str()).collect();
    assert_eq!(
        got,
        [
            r#"overrides["9"]"#,
            r#"overrides["2"].images"#,
            r#"overrides["2"].filename_prefix"#,
            r#"overrides["x y"]"#,
        ]
    );
    assert!(
        e.to_string()
            .contains("cannot replace a link with a literal"),
        "{e}"
    );
    assert_eq!(prompt, original, "nothing applied on error");
    // A new input may be added; an empty override changes nothing.
    apply_overrides(
        &mut prompt,
        &prompt_of(json!({"1": {"extra": "x"}, "2": {}})),
    )
    .unwrap();
    assert_eq!(prompt["1"]["inputs"]["extra"], "x");
}

#[test]
fn prefixes_are_rewritten_per_execution() {
    let graph = json!({
        "2": save(json!(["1", 0])),
        "3": {"class_type": "TestWriteBlob", "inputs": {"filename_prefix": "blobs/out"}},
        "4": {"class_type": "X", "inputs": {"filename_prefix": ["2", 0]}},
        "5": {"class_type": "Y", "inputs": {"other": "x"}}
    });
    let mut a = prompt_of(graph.clone());
    let mut b = prompt_of(graph);
    rewrite_filename_prefixes(&mut a, "exec-a");
    rewrite_filename_prefixes(&mut b, "exec-b");
    let (ra, rb) = (filename_prefixes(&a), filename_prefixes(&b));
    assert_eq!(
        ra,
        [
            ("2".to_owned(), "comfy-reality/exec-a/x".to_owned()),
            ("3".to_owned(), "comfy-reality/exec-a/blobs/out".to_owned()),
        ]
    );
    assert_eq!(
        a["3"]["inputs"]["filename_prefix"],
        "comfy-reality/exec-a/blobs/out"
    );
    assert_eq!(a["4"]["inputs"]["filename_prefix"], json!(["2", 0]));
    let set_a: BTreeSet<&String> = ra.iter().map(|(_, p)| p).collect();
    assert!(rb.iter().all(|(_, p)| !set_a.contains(p)));
    // Rewriting again is a no-op.
    rewrite_filename_prefixes(&mut a, "exec-a");
    assert_eq!(filename_prefixes(&a), ra);
}

#[test]
fn prefix_traversal_is_neutralised() {
    let cases = [
        ("../../etc/x", "comfy-reality/e/etc/x"),
        ("/abs/path", "comfy-reality/e/abs/path"),
        ("a\\..\\..\\b", "comfy-reality/e/a/b"),
        ("./a//./b/..", "comfy-reality/e/a/b"),
        ("..", "comfy-reality/e/ComfyUI"),
        ("", "comfy-reality/e/ComfyUI"),
        ("C:\\x\ny", "comfy-reality/e/C_/x_y"),
        (
            "%date:yyyy-MM-dd%/img",
            "comfy-reality/e/%date_yyyy-MM-dd%/img",
        ),
    ];
    for (raw, want) in cases {
        let mut prompt = prompt_of(json!({"1": {"class_type": "SaveImage",
                                                "inputs": {"filename_prefix": raw}}}));
        rewrite_filename_prefixes(&mut prompt, "e");
        let got = filename_prefixes(&prompt);
        assert_eq!(got[0].1, want, "{raw:?}");
    }
    // A hostile execution id stays one folder.
    let mut prompt =
        prompt_of(json!({"1": {"class_type": "S", "inputs": {"filename_prefix": "p"}}}));
    rewrite_filename_prefixes(&mut prompt, "../a/../../b");
    let got = filename_prefixes(&prompt);
    assert_eq!(got[0].1, "comfy-reality/a_b/p");
}

proptest! {
    /// A clean path comes back as it is, without the split; any other is rebuilt part by
    /// part, as before the shortcut.
    #[test]
    fn sanitized_paths_match_a_part_by_part_rebuild(raw in "[a-z./\\\\:\\n\\x00\\x1f\\x7f\u{85}é]{0,12}") {
        let rebuilt = raw
            .split(['/', '\\'])
            .filter(|part| !part.is_empty() && *part != "." && *part != "..")
            .map(|part| part.replace(|c: char| c.is_control() || c == ':', "_"))
            .collect::<Vec<_>>()
            .join("/");
        prop_assert_eq!(sanitize_path(&raw), rebuilt);
    }
}

#[test]
fn decimals_compare_exactly() {
    let d = |s: &str| parse_decimal(s).unwrap();
    assert_eq!(d("1"), d("1.0"));
    assert_eq!(d("1"), d("10e-1"));
    assert_eq!(d("-0"), d("0.000"));
    assert!(d("18446744073709551615") < d("18446744073709551616"));
    assert!(d("-2") < d("-1.5"));
    assert!(d("0.125") > d("0.12"));
    assert!(d("1e-400") > d("0"));
    assert!(d("1e3").is_integer());
    assert!(!d("1.5").is_integer());
    for bad in ["", "-", ".", "1e", "e5", "1.2.3", "0x10", "1e+-1", "abc"] {
        assert_eq!(parse_decimal(bad), None, "{bad:?}");
    }
}

proptest! {
    /// The integer shortcut of [`exact_order`] orders as the decimals do, across integers
    /// past `i64` and `u64`, fractions and exponents.
    #[test]
    fn exact_order_agrees_with_the_decimals(
        a in "-?[0-9]{1,40}(\\.[0-9]{1,5})?([eE][+-]?[0-9]{1,3})?",
        b in "-?[0-9]{1,40}(\\.[0-9]{1,5})?([eE][+-]?[0-9]{1,3})?",
    ) {
        let (Ok(Value::Number(x)), Ok(Value::Number(y))) =
            (serde_json::from_str::<Value>(&a), serde_json::from_str::<Value>(&b))
        else {
            return Ok(());
        };
        let decimals = parse_decimal(x.as_str()).unwrap().cmp(&parse_decimal(y.as_str()).unwrap());
        prop_assert_eq!(exact_order(&x, &y), Some(decimals), "{} vs {}", a, b);
    }
}

fn arb_value() -> impl Strategy<Value = Value> {
    let ids = prop::sample::select(vec!["1", "2", "3", "10", "x"]);
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        "-?[0-9]{1,25}(\\.[0-9]{0,5})?([eE][+-]?[0-9]{1,22})?"
            .prop_map(|t| serde_json::from_str::<Value>(&t).unwrap_or(Value::Null)),
        "[a-z.,*/\\\\ -]{0,12}".prop_map(Value::String),
        (ids, any::<i64>()).prop_map(|(id, slot)| json!([id, slot % 4])),
        prop::collection::vec(any::<u8>().prop_map(|b| json!(b)), 0..3).prop_map(Value::Array),
        Just(json!({"k": [1, "2"]})),
    ]
}

fn arb_graph() -> impl Strategy<Value = JsonObject> {
    let classes = prop::sample::select(vec![
        "EmptyImage",
        "ImageScale",
        "SaveImage",
        "TestDelay",
        "AnyPass",
        "MaskOnly",
        "LoadImage",
        "Unknown",
    ]);
    let names = prop::sample::select(vec![
        "width",
        "image",
        "images",
        "nonce",
        "seconds",
        "mode",
        "anything",
        "mask",
        "upscale_method",
        "progress_text",
        "value",
        "filename_prefix",
    ]);
    let node = (
        classes,
        prop::collection::btree_map(names, arb_value(), 0..6),
    )
        .prop_map(|(class, inputs)| json!({"class_type": class, "inputs": inputs}));
    let ids = prop::sample::select(vec!["1", "2", "3", "10", "x"]);
    prop::collection::btree_map(ids, prop_oneof![9 => node, 1 => arb_value()], 0..6)
        .prop_map(|nodes| nodes.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
}

/// Overrides for [`arb_graph`]'s nodes: of ids it uses and one it never does, input names it
/// uses (some linked) and one it never does, values literal or lists, or not an object.
fn arb_overrides() -> impl Strategy<Value = JsonObject> {
    let ids = prop::sample::select(vec!["1", "2", "3", "10", "x", "9"]);
    let names = prop::sample::select(vec!["width", "image", "images", "filename_prefix", "extra"]);
    let values = prop_oneof![
        4 => prop::collection::btree_map(names, arb_value(), 0..3)
            .prop_map(|m| Value::Object(m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())),
        1 => arb_value(),
    ];
    prop::collection::btree_map(ids, values, 0..4)
        .prop_map(|m| m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
}

proptest! {
    #[test]
    fn checks_never_panic_on_arbitrary_graphs(
        graph in arb_graph(),
        overrides in arb_overrides(),
        exec in "[a-z./\\\\]{0,8}",
    ) {
        let c = embedded();
        let by_prompt = check_prompt_against_object_info(&graph, &c, WORKFLOW_FIELD);
        let workflow = WorkflowDefinition::from_api_json(
            NewWorkflow::new("p"),
            &Value::Object(graph.clone()).to_string(),
        );
        let mut prompt = graph.clone();
        let _ = apply_overrides(&mut prompt, &graph);
        rewrite_filename_prefixes(&mut prompt, &exec);
        if let Ok(mut workflow) = workflow {
            // Well-formed graphs judge alike through both entry points.
            prop_assert_eq!(check_against_object_info(&workflow, &c), by_prompt);
            // And are edited alike as nodes and as a prompt object (the same violations,
            // the same inputs set), whose text is the nodes' (the prompt object of a parsed
            // graph is its `to_api_prompt`).
            let mut as_object = workflow.to_api_prompt();
            let mut nodes = workflow.take_nodes();
            prop_assert_eq!(
                apply_node_overrides(&mut nodes, &overrides),
                apply_overrides(&mut as_object, &overrides)
            );
            rewrite_node_filename_prefixes(&mut nodes, &exec);
            rewrite_filename_prefixes(&mut as_object, &exec);
            prop_assert_eq!(
                check_nodes_against_object_info(&nodes, &c),
                check_prompt_against_object_info(&as_object, &c, WORKFLOW_FIELD)
            );
            let mut written = String::new();
            write_api_prompt(&mut written, &nodes);
            prop_assert_eq!(written, Value::Object(as_object).to_string());
        }
        for (_, prefix) in filename_prefixes(&prompt) {
            prop_assert!(prefix.starts_with("comfy-reality/"));
            prop_assert!(!prefix.contains('\\'));
            prop_assert!(prefix.split('/').all(|p| !p.is_empty() && p != "." && p != ".."));
        }
    }
}
