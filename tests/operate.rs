//! Running the service as operators do, against the local stack (`make up`): the admin API's
//! token and origin checks, the guest allow-list, the supervisor's notifications (a notify socket
//! the test opens itself), `campaign-push check`, and the logs a supervisor captures.

mod support;

use std::collections::BTreeSet;
use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use serde_json::Value;
use support::guests::{GuestBuild, GuestFile, install_guest, test_guest};
use support::service::{Deployment, Subscriptions, campaign_event, guest_wasm};
use support::{StackEnv, poll_until, run, unique_name};

const DEADLINE: Duration = Duration::from_secs(90);

/// The status line's code of an HTTP response.
fn status(response: &str) -> u16 {
    response
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {response:?}"))
}

/// The value of `campaign_push_guest_swaps_total{action=…,result=…}`, 0 if not yet counted.
fn swaps(metrics: &str, action: &str, result: &str) -> f64 {
    let labels =
        format!("campaign_push_guest_swaps_total{{action=\"{action}\",result=\"{result}\"}}");
    metrics
        .lines()
        .find(|line| line.starts_with(&labels))
        .and_then(|line| line.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0.0)
}

#[test]
fn the_admin_api_answers_only_its_token_and_never_a_web_page() {
    let env = StackEnv::load();
    let deployment = Deployment::new(&env, "admin");
    let service = deployment.start(&env);
    let token = std::fs::read_to_string(service.admin_token_file()).unwrap();
    let token = token.trim_end();
    let bearer = format!("Bearer {token}");
    let v1 = service.guest_sha256().unwrap();

    // The admin routes are not on the public listener, and the public ones not on the admin one.
    let on_public = service.get("/admin/reload").unwrap();
    assert_eq!(status(&on_public), 404, "{on_public}");
    let metrics_on_admin = service
        .admin_request("GET", "/metrics", &[("Authorization", &bearer)])
        .unwrap();
    assert_eq!(status(&metrics_on_admin), 404, "{metrics_on_admin}");

    let refused = [
        ("no credentials", vec![], 401),
        (
            "a wrong token",
            vec![("Authorization", "Bearer not-the-token-at-all")],
            401,
        ),
        (
            "the token without its scheme",
            vec![("Authorization", token)],
            401,
        ),
        (
            "a cross-site form post with the right token",
            vec![
                ("Authorization", bearer.as_str()),
                ("Origin", "https://attacker.example"),
            ],
            403,
        ),
        (
            "a request a browser marks cross-site",
            vec![
                ("Authorization", bearer.as_str()),
                ("Sec-Fetch-Site", "cross-site"),
            ],
            403,
        ),
    ];
    for path in ["/admin/reload", "/admin/rollback"] {
        for (what, headers, expected) in &refused {
            let response = service.admin_request("POST", path, headers).unwrap();
            assert_eq!(status(&response), *expected, "{what} on {path}: {response}");
            if *expected == 401 {
                assert!(
                    response.contains("WWW-Authenticate: Bearer")
                        || response.contains("www-authenticate: Bearer"),
                    "{response}"
                );
            }
        }
    }
    assert_eq!(service.guest_sha256().unwrap(), v1, "nothing was swapped");
    let metrics = service.get("/metrics").unwrap();
    assert_eq!(swaps(&metrics, "reload", "accepted"), 0.0);
    assert_eq!(swaps(&metrics, "rollback", "accepted"), 0.0);

    // With the token, from a tool: the file holds the guest in service already.
    let response = service.post("/admin/reload").unwrap();
    assert_eq!(status(&response), 409, "{response}");
    assert!(response.contains("already in service"), "{response}");
    let response = service.post("/admin/rollback").unwrap();
    assert_eq!(status(&response), 409, "{response}");

    let log = service.log_text();
    assert!(log.contains("admin request refused"), "{log}");
    assert!(!log.contains(token), "the token reached the log:\n{log}");
}

#[test]
fn a_guest_off_the_allow_list_is_refused_and_the_one_in_service_keeps_serving() {
    let env = StackEnv::load();
    let run_id = unique_name("allow");
    let subscriptions = Subscriptions::insert(&env, &run_id, 1, 3);
    let deployment = Deployment::new(&env, "allow");
    let v1 = GuestBuild::read(&guest_wasm());
    let v2 = GuestBuild::read(&test_guest("v2-content"));
    let file = GuestFile::new(&v1);

    // Start-up refuses a guest off the list, naming the key.
    let other_hash = "ab".repeat(32);
    let refused = deployment.spawn_with(
        &env,
        &[
            file.setting(),
            ("CAMPAIGN_PUSH__GUEST__ALLOWED_SHA256", &other_hash),
        ],
    );
    let exit = refused.wait_exit(DEADLINE);
    assert!(!exit.success());
    let log = refused.log_text();
    assert!(
        log.contains(&format!(
            "component with SHA-256 {} is not in guest.allowed_sha256",
            v1.sha256
        )),
        "{log}"
    );

    let allowed = format!("{other_hash},{}", v1.sha256.to_uppercase());
    let service = deployment.start_with(
        &env,
        &[
            file.setting(),
            ("CAMPAIGN_PUSH__GUEST__ALLOWED_SHA256", &allowed),
        ],
    );
    assert_eq!(service.guest_sha256().unwrap(), v1.sha256);

    // A build off the list, put in place: the watcher and the admin API both refuse it.
    install_guest(&file.path, &v2.bytes);
    poll_until("the watcher refuses v2", DEADLINE, || {
        (swaps(&service.get("/metrics")?, "reload", "refused") >= 1.0).then_some(())
    });
    let response = service.post("/admin/reload").unwrap();
    assert_eq!(status(&response), 422, "{response}");
    assert!(
        response.contains(&format!("{} is not in guest.allowed_sha256", v2.sha256)),
        "{response}"
    );
    assert_eq!(service.guest_sha256().unwrap(), v1.sha256);
    let log = service.log_text();
    assert!(
        log.contains("guest refused; the previous one keeps serving"),
        "{log}"
    );

    // And v1 still serves: an event's messages carry its version.
    let restaurant = &subscriptions.restaurants[0];
    let campaign = format!("{run_id}-e0");
    let value = campaign_event(&campaign, restaurant, "allow-list offer");
    deployment.produce(&[(0, None, value.as_bytes())]);
    deployment.wait_consumed_checking(DEADLINE, || service.assert_running());
    let records = deployment.read_all(&deployment.output.name);
    assert_eq!(records.len(), 3);
    for record in &records {
        assert_eq!(
            record.headers.get("campaign-push-guest-version"),
            Some(&v1.version)
        );
    }
}

/// Reads notifications from the socket until `wanted` has come, returning everything received.
fn receive_until(socket: &UnixDatagram, received: &mut Vec<String>, wanted: &str) {
    poll_until(
        &format!("the supervisor hears {wanted:?}"),
        DEADLINE,
        || {
            let mut buffer = [0u8; 4096];
            while let Ok(n) = socket.recv(&mut buffer) {
                received.push(String::from_utf8_lossy(&buffer[..n]).into_owned());
            }
            received
                .iter()
                .any(|message| message.lines().any(|line| line == wanted))
                .then_some(())
        },
    );
}

#[test]
fn the_supervisor_hears_ready_reloading_stopping_and_the_watchdog() {
    let env = StackEnv::load();
    let deployment = Deployment::new(&env, "notify");
    let v1 = GuestBuild::read(&guest_wasm());
    let v2 = GuestBuild::read(&test_guest("v2-content"));
    let file = GuestFile::new(&v1);
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket.set_nonblocking(true).unwrap();

    let service = deployment.spawn_with(
        &env,
        &[
            file.setting(),
            ("NOTIFY_SOCKET", socket_path.to_str().unwrap()),
            // Pings every 0.5 s.
            ("WATCHDOG_USEC", "1000000"),
        ],
    );
    let mut received = Vec::new();
    receive_until(&socket, &mut received, "READY=1");
    // READY=1 comes once the pipeline consumes, so /readyz agrees; and it comes once.
    let readyz = service.get("/readyz").unwrap();
    assert_eq!(status(&readyz), 200, "{readyz}");
    let readies =
        |messages: &[String]| messages.iter().filter(|m| m.starts_with("READY=1")).count();

    // The watchdog: pings keep coming while the pipeline makes progress.
    poll_until("three watchdog pings", DEADLINE, || {
        let mut buffer = [0u8; 4096];
        while let Ok(n) = socket.recv(&mut buffer) {
            received.push(String::from_utf8_lossy(&buffer[..n]).into_owned());
        }
        (received.iter().filter(|m| *m == "WATCHDOG=1").count() >= 3).then_some(())
    });

    assert_eq!(readies(&received), 1, "{received:?}");

    // A swap: RELOADING=1, then READY=1 again once v2 is in service.
    let before_swap = received.len();
    install_guest(&file.path, &v2.bytes);
    poll_until("v2 in service", DEADLINE, || {
        (service.guest_sha256()? == v2.sha256).then_some(())
    });
    receive_until(&socket, &mut received, "RELOADING=1");
    let reloading = before_swap
        + received[before_swap..]
            .iter()
            .position(|m| m.starts_with("RELOADING=1"))
            .unwrap();
    poll_until("READY=1 after the swap", DEADLINE, || {
        let mut buffer = [0u8; 4096];
        while let Ok(n) = socket.recv(&mut buffer) {
            received.push(String::from_utf8_lossy(&buffer[..n]).into_owned());
        }
        received[reloading..]
            .iter()
            .any(|m| m.starts_with("READY=1"))
            .then_some(())
    });

    // A stop: STOPPING=1, and a clean exit.
    let exit = service.terminate();
    assert!(exit.success(), "{exit}");
    receive_until(&socket, &mut received, "STOPPING=1");
    // The process has exited: whatever it sent is in the socket's queue, and read.
    let stopping = received
        .iter()
        .filter(|m| m.lines().any(|line| line == "STOPPING=1"))
        .count();
    assert_eq!(stopping, 1, "STOPPING=1 once: {received:?}");
    let statuses: BTreeSet<&str> = received
        .iter()
        .flat_map(|m| m.lines())
        .filter_map(|line| line.strip_prefix("STATUS="))
        .collect();
    assert_eq!(
        statuses,
        BTreeSet::from(["consuming", "loading a guest", "stopping"])
    );
}

#[test]
fn check_passes_a_good_configuration_and_lists_every_problem_of_a_bad_one() {
    let env = StackEnv::load();
    let deployment = Deployment::new(&env, "check");

    let good = run(&mut deployment.command(&env, "check"), None);
    good.assert_success();
    let lines = good.stdout_text();
    for part in ["config", "guest", "postgres", "kafka"] {
        assert!(
            lines
                .lines()
                .any(|l| l.starts_with(&format!("ok   {part}: "))),
            "{part} not ok:\n{lines}"
        );
    }
    assert!(lines.contains(&deployment.input.name), "{lines}");
    assert!(!lines.contains(env.get("PGPASSWORD")), "{lines}");

    // Three things wrong at once: a guest that is no component, a wrong database password, and
    // an output topic that does not exist. Each is reported.
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.wasm");
    std::fs::write(&garbage, b"\0asm not really").unwrap();
    let missing_topic = unique_name("check-missing");
    let bad = run(
        deployment
            .command(&env, "check")
            .env("CAMPAIGN_PUSH__GUEST__PATH", &garbage)
            .env("CAMPAIGN_PUSH__POSTGRES__PASSWORD", "wrong-password")
            .env("CAMPAIGN_PUSH__KAFKA__OUTPUT_TOPIC", &missing_topic),
        None,
    );
    bad.assert_failure();
    let lines = bad.stdout_text();
    assert!(lines.contains("ok   config: valid"), "{lines}");
    let fail = |part: &str| {
        lines
            .lines()
            .find(|l| l.starts_with(&format!("FAIL {part}: ")))
            .unwrap_or_else(|| panic!("no failure of {part}:\n{lines}"))
            .to_owned()
    };
    let guest = fail("guest");
    assert!(
        guest.contains("not a valid WebAssembly component"),
        "{guest}"
    );
    let postgres = fail("postgres");
    assert!(
        postgres.contains("password authentication failed"),
        "{postgres}"
    );
    let kafka = fail("kafka");
    assert!(
        kafka.contains(&format!("kafka.output_topic = \"{missing_topic}\"")),
        "{kafka}"
    );
    assert!(!lines.contains("wrong-password"), "{lines}");

    // A configuration that does not even validate: every key named.
    let invalid = run(
        deployment
            .command(&env, "check")
            .env("CAMPAIGN_PUSH__PIPELINE__BATCH_MAX_EVENTS", "0")
            .env("CAMPAIGN_PUSH__ADMIN__LISTEN", "nowhere"),
        None,
    );
    invalid.assert_failure();
    let lines = invalid.stdout_text();
    assert!(lines.starts_with("FAIL config: "), "{lines}");
    assert!(lines.contains("pipeline.batch_max_events"), "{lines}");
    assert!(lines.contains("admin.listen"), "{lines}");
}

#[test]
fn json_logs_name_each_batch_s_offsets_and_guest_and_a_file_gets_no_colour() {
    let env = StackEnv::load();
    let run_id = unique_name("logs");
    let subscriptions = Subscriptions::insert(&env, &run_id, 1, 2);
    let deployment = Deployment::new(&env, "logs");
    let v1 = GuestBuild::read(&guest_wasm());
    // The flag, over the configuration's `log.format = "human"`.
    let mut command = deployment.command(&env, "run");
    command.arg("--log-json");
    let mut service = deployment.spawn_command(
        command,
        &[(
            "CAMPAIGN_PUSH__LOG__FILTER",
            "info,librdkafka=warn,campaign_push::pipeline=debug",
        )],
    );
    service.wait_ready();
    let restaurant = &subscriptions.restaurants[0];
    let values: Vec<String> = (0..3)
        .map(|i| campaign_event(&format!("{run_id}-e{i}"), restaurant, "logged offer"))
        .collect();
    deployment.produce(&[
        (1, None, values[0].as_bytes()),
        (1, None, values[1].as_bytes()),
        (1, None, values[2].as_bytes()),
    ]);
    deployment.wait_consumed_checking(DEADLINE, || service.assert_running());

    let log = service.log_text();
    assert!(
        !log.contains('\u{1b}'),
        "colour codes in a log file:\n{log}"
    );
    let lines: Vec<Value> = log
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}")))
        .collect();
    let batches: Vec<&Value> = lines
        .iter()
        .filter(|line| line["fields"]["message"] == "batch committed")
        .collect();
    assert!(!batches.is_empty(), "{log}");
    let mut offsets = BTreeSet::new();
    for batch in &batches {
        assert_eq!(batch["span"]["name"], "batch", "{batch}");
        assert_eq!(batch["span"]["guest"], v1.version.as_str(), "{batch}");
        let input = batch["span"]["input"].as_str().unwrap();
        for range in input.split(',') {
            let (partition, span) = range.split_once(':').unwrap();
            assert_eq!(partition, "1", "{batch}");
            let (first, last) = span.split_once('-').unwrap();
            let (first, last): (i64, i64) = (first.parse().unwrap(), last.parse().unwrap());
            offsets.extend(first..=last);
        }
    }
    assert_eq!(offsets, BTreeSet::from([0, 1, 2]), "{log}");
}
