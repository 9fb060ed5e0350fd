//! Property: any prompt body gets a sane answer.

use serde_json::{Value, json};

use crate::support::*;
use proptest::prelude::*;

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        (-1e6f64..1e6).prop_map(|x| json!(x)),
        "[a-zA-Z0-9 _./]{0,8}".prop_map(Value::String),
        prop_oneof![
            Just("1"),
            Just("2"),
            Just("EmptyImage"),
            Just("SaveImage"),
            Just("TestDelay"),
            Just("IMAGE")
        ]
        .prop_map(|s| Value::String(s.to_owned())),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(
                prop_oneof![
                    Just("1".to_owned()),
                    Just("2".to_owned()),
                    Just("class_type".to_owned()),
                    Just("inputs".to_owned()),
                    Just("images".to_owned()),
                    "[a-z]{1,6}"
                ],
                inner,
                0..4
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// One fake serves every case: each prompt is validated (and, when
/// valid, queued) by the same server, which must keep answering.
#[test]
fn any_prompt_gets_a_python_like_answer() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let fake = runtime.block_on(fake(0.001));
    let http = Http::new(&fake.base_url());
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 256,
        ..ProptestConfig::default()
    });
    let outcome = runner.run(&json_value(), |prompt| {
        runtime.block_on(async {
            let reply = http.post("/prompt", &json!({"prompt": prompt})).await;
            prop_assert!([200, 400, 500].contains(&reply.status), "{}", reply.status);
            if reply.status == 500 {
                prop_assert_eq!(
                    reply.content_type.as_deref(),
                    Some("text/plain; charset=utf-8")
                );
            } else {
                let body = reply.json();
                prop_assert!(body.get("node_errors").is_some(), "{}", body);
            }
            prop_assert_eq!(http.get("/prompt").await.status, 200);
            Ok(())
        })
    });
    runtime.block_on(fake.shutdown());
    if let Err(e) = outcome {
        panic!("{e}");
    }
}
