//! Security checks of the binary: `keys new`, secrets never in any output at debug/trace
//! logging (keys a client presented, right or wrong, ComfyUI credentials, `config print`), and
//! the HTTP/2 rapid-reset fixes present in the locked h2 and hyper.

mod common;

use std::io::{BufRead as _, BufReader, Read as _};
use std::process::Stdio;
use std::sync::mpsc;
use std::time::Duration;

use comfy_reality::pb::ListTasksRequest;
use comfy_reality::pb::task_service_client::TaskServiceClient;
use tonic::Request;

const HANG_GUARD: Duration = Duration::from_secs(60);

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `major.minor.patch` of the locked `name`, from Cargo.lock.
fn locked_version(lock: &str, name: &str) -> Vec<(u64, u64, u64)> {
    let mut versions = Vec::new();
    let mut lines = lock.lines();
    while let Some(line) = lines.next() {
        if line == format!("name = \"{name}\"")
            && let Some(version) = lines.next().and_then(|l| l.strip_prefix("version = \""))
        {
            let parts: Vec<u64> = version
                .trim_end_matches('"')
                .split(['.', '-'])
                .take(3)
                .map(|p| p.parse().expect("numeric version"))
                .collect();
            versions.push((parts[0], parts[1], parts[2]));
        }
    }
    versions
}

#[test]
fn the_locked_h2_and_hyper_have_the_rapid_reset_fixes() {
    let lock = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.lock"))
        .expect("Cargo.lock");
    for (name, minimum) in [("h2", (0, 4, 4)), ("hyper", (1, 5, 1))] {
        let versions = locked_version(&lock, name);
        assert!(!versions.is_empty(), "{name} is not in Cargo.lock");
        for version in versions {
            assert!(
                version >= minimum,
                "{name} {version:?} is older than {minimum:?}, which fixes HTTP/2 rapid reset"
            );
        }
    }
}

#[test]
fn keys_new_prints_a_fresh_key_and_its_sha256() {
    let run = || {
        let out = common::run_bounded(common::clean_command().args(["keys", "new"]), HANG_GUARD);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let stdout = text(&out.stdout);
        let value = |prefix: &str| {
            stdout
                .lines()
                .find_map(|l| l.strip_prefix(prefix))
                .map(|v| v.trim_matches('"').to_owned())
                .unwrap_or_else(|| panic!("no {prefix} in {stdout}"))
        };
        (value("key = "), value("api_key_sha256 = "))
    };
    let (key, hash) = run();
    assert!(key.len() >= 40, "{key}");
    assert_eq!(hash, comfy_reality::api::access::key_sha256_hex(&key));
    assert_eq!(hash.len(), 64);
    assert_ne!(run().0, key);
}

#[test]
fn secrets_appear_in_no_output_at_debug_and_trace() {
    const KEY: &str = "cr_right-key-S3CRET-right";
    const WRONG: &str = "cr_wrong-key-S3CRET-wrong";
    const COMFY_KEY: &str = "comfy-token-S3CRET-backend";
    const COMFY_AUTH: &str = "Bearer comfy-header-S3CRET";
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            r#"
            [service]
            data_dir = "{data}"
            [runtime]
            log_level = "debug"
            enable_metrics = false
            [auth]
            mode = "api_key"
            [[auth.principals]]
            name = "alice"
            role = "admin"
            api_key_sha256 = ["{hash}"]
            [[servers]]
            url = "http://127.0.0.1:1"
            api_key = "{COMFY_KEY}"
            auth_header = "{COMFY_AUTH}"
            "#,
            data = dir.path().join("data").display(),
            hash = comfy_reality::api::access::key_sha256_hex(KEY),
        ),
    )
    .unwrap();
    let mut child = common::clean_command()
        .env("RUST_LOG", "trace")
        .arg("--config")
        .arg(&config)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn serve");
    let mut stderr = child.stderr.take().unwrap();
    let stderr = std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = stderr.read_to_end(&mut bytes);
        bytes
    });
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    let stdout = std::thread::spawn(move || {
        let mut all = String::new();
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line.clone());
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    let first = rx.recv_timeout(HANG_GUARD).expect("address line");
    let addr = first
        .strip_prefix("comfy-reality listening on ")
        .expect("address line")
        .to_owned();

    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut client = TaskServiceClient::new(channel);
        for (header, key, ok) in [
            ("authorization", format!("Bearer {KEY}"), true),
            ("authorization", format!("Bearer {WRONG}"), false),
            ("x-api-key", WRONG.to_owned(), false),
        ] {
            let mut request = Request::new(ListTasksRequest::default());
            request.metadata_mut().insert(header, key.parse().unwrap());
            let result = client.list_tasks(request).await;
            assert_eq!(result.is_ok(), ok, "{result:?}");
            if let Err(status) = result {
                assert!(!format!("{status:?}").contains("S3CRET"), "{status:?}");
            }
        }
    });
    let status = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = std::time::Instant::now() + HANG_GUARD;
    let exit = loop {
        if let Some(exit) = child.try_wait().unwrap() {
            break exit;
        }
        if std::time::Instant::now() >= deadline {
            let _ = child.kill();
            panic!("the server did not stop within {HANG_GUARD:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(exit.success());
    let printed = common::run_bounded(
        common::clean_command()
            .arg("--config")
            .arg(&config)
            .args(["config", "print"]),
        HANG_GUARD,
    );
    assert!(printed.status.success(), "{}", text(&printed.stderr));
    let everything = format!(
        "{}\n{}\n{}\n{}",
        text(&stderr.join().unwrap()),
        stdout.join().unwrap(),
        text(&printed.stdout),
        text(&printed.stderr),
    );
    assert!(
        everything.contains("audit.call"),
        "the refusals were audited:\n{everything}"
    );
    for secret in [KEY, WRONG, COMFY_KEY, COMFY_AUTH, "S3CRET"] {
        assert!(
            !everything.contains(secret),
            "{secret} appeared in the output:\n{everything}"
        );
    }
    // Nor does the hash of the key appear in `config print`.
    assert!(!text(&printed.stdout).contains(&comfy_reality::api::access::key_sha256_hex(KEY)));
}
