//! Golden tests of the transform guest through the offline runner (`campaign-push transform-test`):
//! the compiled component, loaded by the host's real wasmtime embedding, on fixture files.
//!
//! Each folder in `tests/golden/` is a case: `events.jsonl` (input), `case.json` (`now` and the
//! subscribers file) and `expected.jsonl` (the runner's exact output). After an intended change of
//! output, `UPDATE_GOLDEN=1 make test` rewrites the expected files; review their diff.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;
use support::service::guest_wasm;

mod support;

const RUNNER: &str = env!("CARGO_BIN_EXE_campaign-push");

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

fn run_runner(args: &[&str]) -> Output {
    Command::new(RUNNER)
        .args(args)
        .output()
        .expect("the runner starts")
}

fn transform_test(events: &Path, subscribers: &Path, now: i64) -> Output {
    let guest = guest_wasm();
    run_runner(&[
        "transform-test",
        "--guest",
        guest.to_str().unwrap(),
        "--events",
        events.to_str().unwrap(),
        "--subscribers",
        subscribers.to_str().unwrap(),
        "--now",
        &now.to_string(),
    ])
}

fn stdout_of(output: &Output) -> String {
    assert!(
        output.status.success(),
        "runner failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout.clone()).expect("UTF-8 output")
}

fn lines(stdout: &str) -> Vec<Value> {
    stdout
        .lines()
        .map(|line| serde_json::from_str(line).expect("each output line is JSON"))
        .collect()
}

fn of_kind<'a>(lines: &'a [Value], kind: &str) -> Vec<&'a Value> {
    lines.iter().filter(|line| line["kind"] == kind).collect()
}

fn run_case(case: &Path) -> String {
    let settings: Value =
        serde_json::from_str(&std::fs::read_to_string(case.join("case.json")).unwrap()).unwrap();
    let subscribers = case.join(settings["subscribers"].as_str().unwrap());
    let now = settings["now"].as_i64().unwrap();
    stdout_of(&transform_test(
        &case.join("events.jsonl"),
        &subscribers,
        now,
    ))
}

#[test]
fn every_golden_case_matches_its_expected_output() {
    let mut cases: Vec<PathBuf> = std::fs::read_dir(repo_root().join("tests/golden"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.join("events.jsonl").exists())
        .collect();
    cases.sort();
    assert!(cases.len() >= 5, "golden cases are missing: {cases:?}");
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    let mut mismatches = Vec::new();
    for case in &cases {
        let actual = run_case(case);
        let expected_path = case.join("expected.jsonl");
        if update {
            std::fs::write(&expected_path, &actual).unwrap();
            continue;
        }
        let expected = std::fs::read_to_string(&expected_path).unwrap_or_default();
        if actual != expected {
            let first_difference = actual
                .lines()
                .zip(expected.lines())
                .position(|(a, e)| a != e)
                .unwrap_or_else(|| actual.lines().count().min(expected.lines().count()));
            mismatches.push(format!(
                "{}: first difference at line {}\n  actual:   {}\n  expected: {}",
                case.display(),
                first_difference + 1,
                actual.lines().nth(first_difference).unwrap_or("<end>"),
                expected.lines().nth(first_difference).unwrap_or("<end>"),
            ));
        }
    }
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
}

/// The contract's worked example, asserted field by field here rather than only against the
/// expected file, so that a wrong expected file cannot hide a wrong result.
#[test]
fn worked_example_is_exactly_as_the_contract_says() {
    let output = lines(&run_case(&repo_root().join("tests/golden/worked-example")));
    let sample: Value = serde_json::from_str(
        std::fs::read_to_string(repo_root().join("tests/golden/worked-example/events.jsonl"))
            .unwrap()
            .lines()
            .find(|line| !line.starts_with('#'))
            .unwrap(),
    )
    .unwrap();
    let sample = &sample["value"];

    let messages_of = |event: u64| -> Vec<&Value> {
        of_kind(&output, "message")
            .into_iter()
            .filter(|line| line["event"] == event)
            .collect()
    };
    let clients: BTreeSet<String> = messages_of(0)
        .iter()
        .map(|message| message["key"].as_str().unwrap().to_owned())
        .collect();
    let expected_clients: BTreeSet<String> = ["2", "3", "4", "5", "6", "7", "8", "0"]
        .iter()
        .map(|digit| format!("{digit}23e4567-e89b-12d3-a456-426614174000"))
        .collect();
    assert_eq!(messages_of(0).len(), 8);
    assert_eq!(clients, expected_clients);
    for message in messages_of(0) {
        let value = message["value"].as_object().unwrap();
        assert_eq!(value.len(), 10, "exactly ten fields: {value:?}");
        for field in [
            "restaurant_id",
            "adv_campaign_id",
            "adv_campaign_content",
            "adv_campaign_owner",
            "adv_campaign_owner_contact",
            "adv_campaign_datetime_start",
            "adv_campaign_datetime_end",
            "datetime_created",
        ] {
            assert_eq!(value[field], sample[field], "{field}");
        }
        assert_eq!(value["client_id"], message["key"]);
        assert_eq!(value["trigger_datetime_created"], 1_700_000_000);
        assert!(!value.contains_key("feedback"));
    }
    let rows: Vec<&Value> = of_kind(&output, "row")
        .into_iter()
        .filter(|line| line["event"] == 0)
        .collect();
    assert_eq!(rows.len(), 8);
    for row in &rows {
        assert!(row["row"]["feedback"].is_null());
        assert_eq!(row["row"]["trigger_datetime_created"], 1_700_000_000);
    }

    let second = messages_of(1);
    assert_eq!(second.len(), 1);
    assert_eq!(second[0]["key"], "923e4567-e89b-12d3-a456-426614174000");
    assert_eq!(of_kind(&output, "row").len(), 9);
}

#[test]
fn a_restaurant_with_ten_thousand_subscribers() {
    let dir = tempfile::tempdir().unwrap();
    let restaurant = "123e4567-e89b-12d3-a456-426614174000";
    let mut csv = String::from("client_id,restaurant_id\n");
    for i in 0..10_000 {
        csv.push_str(&format!(
            "{i:08x}-0000-4000-8000-000000000000,{restaurant}\n"
        ));
    }
    csv.push_str(&format!(
        "00000000-0000-4000-8000-000000000000,{restaurant}\n"
    ));
    std::fs::write(dir.path().join("subs.csv"), csv).unwrap();
    let sample =
        std::fs::read_to_string(repo_root().join("tests/golden/worked-example/events.jsonl"))
            .unwrap();
    let event = sample.lines().find(|line| !line.starts_with('#')).unwrap();
    std::fs::write(dir.path().join("events.jsonl"), format!("{event}\n")).unwrap();

    let output = lines(&stdout_of(&transform_test(
        &dir.path().join("events.jsonl"),
        &dir.path().join("subs.csv"),
        1_700_000_000,
    )));
    let messages = of_kind(&output, "message");
    assert_eq!(messages.len(), 10_000);
    assert_eq!(of_kind(&output, "row").len(), 10_000);
    let distinct: BTreeSet<&str> = messages
        .iter()
        .map(|message| {
            assert_eq!(message["value"]["client_id"], message["key"]);
            message["key"].as_str().unwrap()
        })
        .collect();
    assert_eq!(distinct.len(), 10_000);
}

#[test]
fn a_file_that_is_not_a_component_is_refused_with_a_failing_exit_status() {
    let dir = tempfile::tempdir().unwrap();
    let events = dir.path().join("events.jsonl");
    std::fs::write(&events, "").unwrap();
    let cases: [(&str, &[u8]); 3] = [
        ("garbage.wasm", b"this is not WebAssembly"),
        // A valid but empty core module: WebAssembly, but not a component.
        ("core-module.wasm", b"\0asm\x01\0\0\0"),
        ("truncated.wasm", b"\0asm\x0d\0\x01\0\x07\x10\x01"),
    ];
    for (name, bytes) in cases {
        let guest = dir.path().join(name);
        std::fs::write(&guest, bytes).unwrap();
        let output = run_runner(&[
            "transform-test",
            "--guest",
            guest.to_str().unwrap(),
            "--events",
            events.to_str().unwrap(),
            "--now",
            "0",
        ]);
        assert!(!output.status.success(), "{name} was accepted");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains("not a valid WebAssembly component"),
            "{name}: {stderr}"
        );
    }
}

#[test]
fn guest_info_reports_version_hash_and_imports() {
    let guest = guest_wasm();
    let output = run_runner(&["guest-info", "--guest", guest.to_str().unwrap()]);
    let info: Value = serde_json::from_str(&stdout_of(&output)).unwrap();
    assert!(
        info["version"]
            .as_str()
            .unwrap()
            .starts_with("guest-transform ")
    );
    assert_eq!(info["sha256"].as_str().unwrap().len(), 64);
    let imports: Vec<&str> = info["imports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|name| name.as_str().unwrap())
        .collect();
    // Built without `std`, the guest needs nothing from WASI: only the world's own interfaces.
    assert_eq!(
        imports,
        [
            "campaign-push:transform/types@0.3.0",
            "campaign-push:transform/subscribers@0.3.0"
        ]
    );
}

#[test]
fn the_runner_documents_its_inputs() {
    let help = stdout_of(&run_runner(&["transform-test", "--help"]));
    for flag in [
        "--guest",
        "--events",
        "--subscribers",
        "--now",
        "value_text",
    ] {
        assert!(help.contains(flag), "--help does not mention {flag}");
    }
}
