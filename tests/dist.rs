//! The release tarball, made by `make dist`'s `packaging/package.sh` from the build under test,
//! unpacked into an empty prefix and run from there as its systemd unit would run it: the unit's
//! command line, the unit's environment (secrets as credential files), the shipped example
//! configuration with its placeholders filled in, against the local stack (`make up`).

mod support;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use support::service::{Deployment, SERVICE_BIN, Subscriptions, campaign_event, guest_wasm};
use support::{StackEnv, repo_root, run, unique_name};

const DEADLINE: Duration = Duration::from_secs(90);

/// Where the unit and the example configuration expect things.
const INSTALL_DIR: &str = "/opt/campaign-push";
const CONFIG_DIR: &str = "/etc/campaign-push";

fn sha256_of(path: &Path) -> String {
    let finished = run(Command::new("sha256sum").arg(path), None);
    finished.assert_success();
    finished
        .stdout_text()
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}

/// The `[Service]` settings of a unit file; repeated keys keep every value in order.
fn unit_settings(text: &str) -> BTreeMap<String, Vec<String>> {
    let mut settings: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut in_service = false;
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            in_service = line == "[Service]";
        } else if in_service
            && !line.starts_with('#')
            && let Some((key, value)) = line.split_once('=')
        {
            settings
                .entry(key.to_owned())
                .or_default()
                .push(value.to_owned());
        }
    }
    settings
}

fn write_private(path: &Path, content: &str) {
    std::fs::write(path, content).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

#[test]
fn the_tarball_installs_into_an_empty_prefix_and_runs_as_its_unit_says() {
    let env = StackEnv::load();
    let work = tempfile::tempdir().unwrap();

    // Package the build under test.
    let packaged = run(
        Command::new(repo_root().join("packaging/package.sh"))
            .arg(SERVICE_BIN)
            .arg(guest_wasm())
            .arg(work.path().join("out")),
        None,
    );
    packaged.assert_success();
    let tarball = PathBuf::from(packaged.stdout_text().trim());
    assert_eq!(
        tarball.file_name().unwrap().to_str().unwrap(),
        format!(
            "campaign-push-{}-x86_64-linux.tar.gz",
            env!("CARGO_PKG_VERSION")
        )
    );
    let recorded = std::fs::read_to_string(tarball.with_extension("gz.sha256")).unwrap();
    assert!(recorded.starts_with(&sha256_of(&tarball)), "{recorded}");

    // Unpack into an empty prefix, as INSTALL.md says.
    let prefix = work.path().join("opt/campaign-push");
    std::fs::create_dir_all(&prefix).unwrap();
    run(
        Command::new("tar")
            .arg("-xzf")
            .arg(&tarball)
            .arg("-C")
            .arg(&prefix)
            .arg("--strip-components=1"),
        None,
    )
    .assert_success();
    let binary = prefix.join("bin/campaign-push");
    let guest = prefix.join("lib/guest_transform.wasm");
    for file in [
        &binary,
        &guest,
        &prefix.join("lib/guest_transform.wasm.sha256"),
        &prefix.join("etc/campaign-push.example.toml"),
        &prefix.join("systemd/campaign-push.service"),
        &prefix.join("INSTALL.md"),
        &prefix.join("VERSION"),
    ] {
        assert!(file.is_file(), "{} missing", file.display());
    }
    assert_ne!(
        std::fs::metadata(&binary).unwrap().permissions().mode() & 0o111,
        0
    );
    let guest_sha256 = sha256_of(&guest);
    assert_eq!(guest_sha256, sha256_of(&guest_wasm()));
    let shipped_hash =
        std::fs::read_to_string(prefix.join("lib/guest_transform.wasm.sha256")).unwrap();
    assert!(shipped_hash.starts_with(&guest_sha256), "{shipped_hash}");

    // The binary says what it is.
    let version = run(Command::new(&binary).arg("--version"), None);
    version.assert_success();
    let version = version.stdout_text();
    assert_eq!(
        version,
        std::fs::read_to_string(prefix.join("VERSION")).unwrap()
    );
    assert!(
        version.starts_with(&format!(
            "campaign-push {} (git ",
            env!("CARGO_PKG_VERSION")
        )),
        "{version}"
    );
    assert!(
        version.contains("WIT world campaign-push:transform/campaign-transform@"),
        "{version}"
    );

    // The unit: notify with a watchdog, and the command line and environment it runs.
    let unit = unit_settings(
        &std::fs::read_to_string(prefix.join("systemd/campaign-push.service")).unwrap(),
    );
    assert_eq!(unit["Type"], ["notify"]);
    assert!(unit.contains_key("WatchdogSec"));
    let exec_start = &unit["ExecStart"][0];
    let credentials = work.path().join("credentials");
    std::fs::create_dir(&credentials).unwrap();
    let config_dir = work.path().join("etc/campaign-push");
    std::fs::create_dir_all(&config_dir).unwrap();
    let installed = |text: &str| {
        text.replace(INSTALL_DIR, prefix.to_str().unwrap())
            .replace(CONFIG_DIR, config_dir.to_str().unwrap())
            .replace("%d", credentials.to_str().unwrap())
    };
    let argv: Vec<String> = installed(exec_start)
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    assert_eq!(PathBuf::from(&argv[0]), binary, "{exec_start}");

    // Its credentials, and the configuration from the shipped example with the placeholders for
    // this machine filled in (the guest path is the unit's own, under the prefix).
    for credential in &unit["LoadCredential"] {
        let (id, _) = credential.split_once(':').unwrap();
        let content = match id {
            "kafka-password" => env.get("KAFKA_SASL_PASSWORD").to_owned(),
            "postgres-password" => env.get("PGPASSWORD").to_owned(),
            "admin-token" => unique_name("dist-admin-token"),
            other => panic!("unexpected credential {other}"),
        };
        write_private(&credentials.join(id), &content);
    }
    let example = std::fs::read_to_string(prefix.join("etc/campaign-push.example.toml")).unwrap();
    let config = installed(&example).replace(
        "# allowed_sha256 = [\"<sha256 of the component, as in lib/guest_transform.wasm.sha256>\"]",
        &format!("allowed_sha256 = [\"{guest_sha256}\"]"),
    );
    assert!(config.contains(&format!("allowed_sha256 = [\"{guest_sha256}\"]")));
    std::fs::write(config_dir.join("campaign-push.toml"), config).unwrap();

    let deployment = Deployment::new(&env, "dist");
    let mut command = Command::new(&argv[0]);
    command.args(&argv[1..]);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("CAMPAIGN_PUSH") {
            command.env_remove(key);
        }
    }
    for setting in &unit["Environment"] {
        let (key, value) = setting.split_once('=').unwrap();
        command.env(key, installed(value));
    }
    // What an operator edits in the copied example for this machine.
    let site = [
        (
            "CAMPAIGN_PUSH__KAFKA__BOOTSTRAP_SERVERS",
            env.get("KAFKA_SASL_BOOTSTRAP"),
        ),
        (
            "CAMPAIGN_PUSH__KAFKA__SECURITY__CA_FILE",
            env.get("KAFKA_CA_FILE"),
        ),
        ("CAMPAIGN_PUSH__KAFKA__INPUT_TOPIC", &deployment.input.name),
        (
            "CAMPAIGN_PUSH__KAFKA__OUTPUT_TOPIC",
            &deployment.output.name,
        ),
        (
            "CAMPAIGN_PUSH__KAFKA__DEAD_LETTER_TOPIC",
            &deployment.dead_letter.name,
        ),
        ("CAMPAIGN_PUSH__KAFKA__CONSUMER_GROUP", &deployment.group),
        (
            "CAMPAIGN_PUSH__KAFKA__TRANSACTIONAL_ID",
            &deployment.transactional_id,
        ),
        ("CAMPAIGN_PUSH__POSTGRES__HOST", env.get("PGHOST")),
        ("CAMPAIGN_PUSH__POSTGRES__PORT", env.get("PGPORT")),
        ("CAMPAIGN_PUSH__POSTGRES__DATABASE", env.test_database()),
        (
            "CAMPAIGN_PUSH__POSTGRES__TLS__CA_FILE",
            env.get("PGSSLROOTCERT"),
        ),
    ];
    for (key, value) in site {
        command.env(key, value);
    }

    // `check` with the same configuration passes, then the service runs from the prefix.
    let mut check = Command::new(&binary);
    check.arg("check");
    check.args(&argv[2..]);
    for (key, value) in command.get_envs() {
        match value {
            Some(value) => check.env(key, value),
            None => check.env_remove(key),
        };
    }
    let checked = run(&mut check, None);
    checked.assert_success();

    let run_id = unique_name("dist");
    let subscriptions = Subscriptions::insert(&env, &run_id, 1, 4);
    // The unit's admin token, not the one the test support gives each service.
    let token_file = credentials.join("admin-token");
    let mut service = deployment.spawn_command(
        command,
        &[(
            "CAMPAIGN_PUSH__ADMIN__TOKEN_FILE",
            token_file.to_str().unwrap(),
        )],
    );
    service.wait_ready();
    let restaurant = &subscriptions.restaurants[0];
    let value = campaign_event(&format!("{run_id}-e0"), restaurant, "installed offer");
    deployment.produce(&[(0, None, value.as_bytes())]);
    deployment.wait_consumed_checking(DEADLINE, || service.assert_running());
    let outputs = deployment.read_all(&deployment.output.name);
    assert_eq!(outputs.len(), 4);
    for output in &outputs {
        assert_eq!(
            output.headers.get("campaign-push-guest-sha256"),
            Some(&guest_sha256)
        );
    }

    // The admin API answers the unit's credential, and no one else.
    let token = std::fs::read_to_string(&token_file).unwrap();
    let bearer = format!("Bearer {token}");
    let response = service
        .admin_request("POST", "/admin/reload", &[("Authorization", &bearer)])
        .unwrap();
    assert!(response.starts_with("HTTP/1.1 409"), "{response}");
    let response = service.admin_request("POST", "/admin/reload", &[]).unwrap();
    assert!(response.starts_with("HTTP/1.1 401"), "{response}");
    assert!(service.terminate().success());
}
