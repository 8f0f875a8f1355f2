//! Proves the local stack (`make up`) gives what the contract asks of an environment: the users'
//! own kcat commands over SASL_SSL + SCRAM-SHA-512 with the local CA, only for the right password
//! and CA; PostgreSQL with the contract's tables and sample subscribers, reachable with TLS
//! verified against the local CA; vendored copies of the contract's files that are exact.
//!
//! Needs a running stack: `make up` (the tests say so if it is missing).

mod support;

use std::path::Path;

use support::{
    StackEnv, TempTopic, foreign_ca, kcat, kcat_sasl_args, parse_env_file, psql, psql_in,
    repo_root, run,
};

/// The key the users' producer sends (contract: "a line `first_message:{...json...}`").
const SAMPLE_KEY: &str = "first_message";

/// The users' sample event: the vendored copy of the contract's `sample_event.json`, without the
/// file's final newline (kcat -P reads one message per line).
fn sample_event() -> String {
    let path = repo_root().join("stack/contract/sample_event.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    text.trim_end_matches('\n').to_owned()
}

/// `kcat <users' SASL options> -t TOPIC -K: -P`, fed `input` on stdin.
#[track_caller]
fn users_produce(
    env: &StackEnv,
    password: &str,
    ca: &str,
    topic: &str,
    extra: &[&str],
    input: &str,
) -> support::Finished {
    run(
        kcat()
            .args(kcat_sasl_args(env, password, ca))
            .args(["-t", topic, "-K:", "-P"])
            .args(extra),
        Some(input.as_bytes()),
    )
}

/// Everything in `topic` as `key:value` lines, read over the PLAINTEXT listener (no SASL), so
/// that it shows what the broker holds independently of the client under test.
#[track_caller]
fn plaintext_contents(env: &StackEnv, topic: &str) -> String {
    run(
        kcat()
            .args(["-b", env.get("KAFKA_PLAINTEXT_BOOTSTRAP")])
            .args(["-t", topic, "-C", "-o", "beginning", "-e", "-q", "-K:"]),
        None,
    )
    .assert_success()
    .stdout_text()
}

#[test]
fn users_kcat_commands_produce_and_consume_over_sasl_ssl() {
    let env = StackEnv::load();
    let topic = TempTopic::create(&env, "stack-test-kcat");
    let password = env.get("KAFKA_SASL_PASSWORD");
    let ca = env.get("KAFKA_CA_FILE");
    let event = sample_event();
    let line = format!("{SAMPLE_KEY}:{event}\n");

    // The users' producer command, verbatim but for the broker, user, password, CA and topic.
    users_produce(&env, password, ca, &topic.name, &[], &line).assert_success();

    // The users' consumer command (`-C -o beginning`), with -e to stop at the end of the topic
    // and -K: to print the key before the value.
    let consumed = run(
        kcat().args(kcat_sasl_args(&env, password, ca)).args([
            "-t",
            &topic.name,
            "-C",
            "-o",
            "beginning",
            "-e",
            "-K:",
        ]),
        None,
    );
    consumed.assert_success();
    let out = consumed.stdout_text();
    let (key, value) = out
        .strip_suffix('\n')
        .and_then(|l| l.split_once(':'))
        .unwrap_or_else(|| panic!("expected one `key:value` line, got {out:?}"));
    assert_eq!(key, SAMPLE_KEY, "key read back");
    assert_eq!(value, event, "value read back");
    assert_eq!(
        consumed.stdout,
        line.as_bytes(),
        "exactly one message, byte for byte"
    );
}

#[test]
fn users_kcat_produce_with_a_wrong_password_fails_authentication() {
    let env = StackEnv::load();
    let topic = TempTopic::create(&env, "stack-test-badpass");
    let wrong = format!("{}-wrong", env.get("KAFKA_SASL_PASSWORD"));
    let line = format!("{SAMPLE_KEY}:{}\n", sample_event());

    // message.timeout.ms bounds kcat should it keep retrying rather than give up.
    let produced = users_produce(
        &env,
        &wrong,
        env.get("KAFKA_CA_FILE"),
        &topic.name,
        &["-X", "message.timeout.ms=15000"],
        &line,
    );
    produced.assert_failure();
    let stderr = produced.stderr_text();
    assert!(
        stderr.contains("Authentication failed") || stderr.contains("Authentication failure"),
        "expected an authentication error from kcat, got:\n{stderr}"
    );
    assert_eq!(
        plaintext_contents(&env, &topic.name),
        "",
        "nothing was written"
    );
}

#[test]
fn users_kcat_produce_fails_tls_when_it_does_not_trust_the_local_ca() {
    let env = StackEnv::load();
    let topic = TempTopic::create(&env, "stack-test-untrusted");
    let dir = tempfile::tempdir().expect("tempdir");
    let other_ca = foreign_ca(dir.path());
    let password = env.get("KAFKA_SASL_PASSWORD");
    let line = format!("{SAMPLE_KEY}:{}\n", sample_event());

    let produced = users_produce(
        &env,
        password,
        other_ca.to_str().expect("utf-8 path"),
        &topic.name,
        &["-X", "message.timeout.ms=15000"],
        &line,
    );
    produced.assert_failure();
    let stderr = produced.stderr_text();
    assert!(
        // librdkafka words the failure differently across versions and moments ("SSL handshake
        // failed: …", "… (after 9ms in state SSL_HANDSHAKE)"); OpenSSL's reason is constant.
        stderr.contains("certificate verify failed") && stderr.contains("SSL"),
        "expected a TLS verification error from kcat, got:\n{stderr}"
    );
    assert_eq!(
        plaintext_contents(&env, &topic.name),
        "",
        "nothing was written"
    );

    // Control: the same metadata request with the local CA succeeds, so the CA made the difference.
    run(
        kcat()
            .args(kcat_sasl_args(&env, password, env.get("KAFKA_CA_FILE")))
            .args(["-L", "-t", &topic.name, "-m", "10"]),
        None,
    )
    .assert_success();
}

/// (table, column, data type, nullable, has a sequence default): `schema.sql` as
/// information_schema reports it (serial4 = integer + nextval default, int8 = bigint, ...).
const CONTRACT_COLUMNS: &[(&str, &str, &str, &str, bool)] = &[
    ("subscribers_feedback", "id", "integer", "NO", true),
    ("subscribers_feedback", "restaurant_id", "text", "NO", false),
    (
        "subscribers_feedback",
        "adv_campaign_id",
        "text",
        "NO",
        false,
    ),
    (
        "subscribers_feedback",
        "adv_campaign_content",
        "text",
        "NO",
        false,
    ),
    (
        "subscribers_feedback",
        "adv_campaign_owner",
        "text",
        "NO",
        false,
    ),
    (
        "subscribers_feedback",
        "adv_campaign_owner_contact",
        "text",
        "NO",
        false,
    ),
    (
        "subscribers_feedback",
        "adv_campaign_datetime_start",
        "bigint",
        "NO",
        false,
    ),
    (
        "subscribers_feedback",
        "adv_campaign_datetime_end",
        "bigint",
        "NO",
        false,
    ),
    (
        "subscribers_feedback",
        "datetime_created",
        "bigint",
        "NO",
        false,
    ),
    ("subscribers_feedback", "client_id", "text", "NO", false),
    (
        "subscribers_feedback",
        "trigger_datetime_created",
        "integer",
        "NO",
        false,
    ),
    (
        "subscribers_feedback",
        "feedback",
        "character varying",
        "YES",
        false,
    ),
    ("subscribers_restaurants", "id", "integer", "NO", true),
    (
        "subscribers_restaurants",
        "client_id",
        "character varying",
        "NO",
        false,
    ),
    (
        "subscribers_restaurants",
        "restaurant_id",
        "character varying",
        "NO",
        false,
    ),
];

/// `sample_subscribers.sql`: (id, client_id, restaurant_id).
const SAMPLE_SUBSCRIBERS: &[(i32, &str, &str)] = &[
    (
        1,
        "223e4567-e89b-12d3-a456-426614174000",
        "123e4567-e89b-12d3-a456-426614174000",
    ),
    (
        2,
        "323e4567-e89b-12d3-a456-426614174000",
        "123e4567-e89b-12d3-a456-426614174000",
    ),
    (
        3,
        "423e4567-e89b-12d3-a456-426614174000",
        "123e4567-e89b-12d3-a456-426614174000",
    ),
    (
        4,
        "523e4567-e89b-12d3-a456-426614174000",
        "123e4567-e89b-12d3-a456-426614174000",
    ),
    (
        5,
        "623e4567-e89b-12d3-a456-426614174000",
        "123e4567-e89b-12d3-a456-426614174000",
    ),
    (
        6,
        "723e4567-e89b-12d3-a456-426614174000",
        "123e4567-e89b-12d3-a456-426614174000",
    ),
    (
        7,
        "823e4567-e89b-12d3-a456-426614174000",
        "123e4567-e89b-12d3-a456-426614174000",
    ),
    (
        8,
        "923e4567-e89b-12d3-a456-426614174000",
        "123e4567-e89b-12d3-a456-426614174001",
    ),
    (
        9,
        "923e4567-e89b-12d3-a456-426614174000",
        "123e4567-e89b-12d3-a456-426614174001",
    ),
    (
        10,
        "023e4567-e89b-12d3-a456-426614174000",
        "123e4567-e89b-12d3-a456-426614174000",
    ),
];

#[track_caller]
fn psql_rows(env: &StackEnv, extra: &str, sql: &str) -> Vec<String> {
    psql_rows_in(env, env.get("PGDATABASE"), extra, sql)
}

#[track_caller]
fn psql_rows_in(env: &StackEnv, database: &str, extra: &str, sql: &str) -> Vec<String> {
    run(&mut psql_in(env, database, extra, sql), None)
        .assert_success()
        .stdout_text()
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn psql_as_the_service_user_sees_the_contract_tables() {
    let env = StackEnv::load();
    for database in [env.get("PGDATABASE"), env.test_database()] {
        assert_contract_tables(&env, database);
    }
}

#[track_caller]
fn assert_contract_tables(env: &StackEnv, database: &str) {
    let actual = psql_rows_in(
        env,
        database,
        "",
        "SELECT table_name, column_name, data_type, is_nullable, \
                coalesce(column_default LIKE 'nextval(%', false), \
                coalesce(character_maximum_length::text, '-') \
         FROM information_schema.columns \
         WHERE table_schema = 'public' \
           AND table_name IN ('subscribers_feedback', 'subscribers_restaurants') \
         ORDER BY table_name, ordinal_position",
    );
    let expected: Vec<String> = CONTRACT_COLUMNS
        .iter()
        .map(|(table, column, ty, nullable, serial)| {
            // psql prints booleans as t/f; `varchar` without a length has no maximum.
            format!(
                "{table}|{column}|{ty}|{nullable}|{}|-",
                if *serial { "t" } else { "f" }
            )
        })
        .collect();
    assert_eq!(
        actual, expected,
        "columns of the contract's tables in {database}"
    );

    let keys = psql_rows_in(
        env,
        database,
        "",
        "SELECT c.conrelid::regclass::text, c.conname, a.attname \
         FROM pg_constraint c \
         JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = ANY (c.conkey) \
         WHERE c.contype = 'p' \
           AND c.conrelid IN ('public.subscribers_feedback'::regclass, \
                              'public.subscribers_restaurants'::regclass) \
         ORDER BY 1",
    );
    assert_eq!(
        keys,
        [
            "subscribers_feedback|id_pk|id",
            "subscribers_restaurants|pk_id|id"
        ],
        "primary keys in {database}"
    );
}

#[test]
fn psql_as_the_service_user_sees_the_sample_subscribers() {
    let env = StackEnv::load();
    let expected: Vec<String> = SAMPLE_SUBSCRIBERS
        .iter()
        .map(|(id, client, restaurant)| format!("{id}|{client}|{restaurant}"))
        .collect();
    for database in [env.get("PGDATABASE"), env.test_database()] {
        // Rows 1..10 are the contract's sample; tests may add rows of their own with other ids.
        let actual = psql_rows_in(
            &env,
            database,
            "",
            "SELECT id, client_id, restaurant_id FROM public.subscribers_restaurants \
             WHERE id BETWEEN 1 AND 10 ORDER BY id",
        );
        assert_eq!(actual, expected, "the 10 sample subscribers in {database}");
    }
}

#[test]
fn postgres_tls_verify_full_with_the_local_ca() {
    let env = StackEnv::load();
    let ssl_in_use = "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()";
    let verified = format!(
        "sslmode=verify-full sslrootcert={}",
        env.get("PGSSLROOTCERT")
    );
    assert_eq!(
        psql_rows(&env, &verified, ssl_in_use),
        ["t"],
        "TLS in use with verify-full"
    );

    // Plain TCP is still accepted (clients that do not configure TLS keep working).
    assert_eq!(
        psql_rows(&env, "sslmode=disable", ssl_in_use),
        ["f"],
        "plain TCP accepted"
    );

    // And verify-full really verifies: a CA that did not sign the server's certificate fails.
    let dir = tempfile::tempdir().expect("tempdir");
    let other_ca = foreign_ca(dir.path());
    let untrusted = format!("sslmode=verify-full sslrootcert={}", other_ca.display());
    let refused = run(&mut psql(&env, &untrusted, "SELECT 1"), None);
    refused.assert_failure();
    assert!(
        refused.stderr_text().contains("certificate verify failed"),
        "expected a certificate verification error, got:\n{}",
        refused.stderr_text()
    );
}

#[test]
fn env_file_is_private_and_complete() {
    use std::os::unix::fs::PermissionsExt;
    let env = StackEnv::load();
    let mode = std::fs::metadata(env.path())
        .expect("env file")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(
        mode,
        0o600,
        "{} holds passwords: mode 600",
        env.path().display()
    );

    let vars = parse_env_file(&std::fs::read_to_string(env.path()).expect("env file"));
    for key in [
        "KAFKA_PLAINTEXT_BOOTSTRAP",
        "KAFKA_SASL_BOOTSTRAP",
        "KAFKA_SASL_MECHANISM",
        "KAFKA_SASL_USERNAME",
        "KAFKA_SASL_PASSWORD",
        "KAFKA_CA_FILE",
        "KAFKA_INPUT_TOPIC",
        "KAFKA_OUTPUT_TOPIC",
        "KAFKA_DEAD_LETTER_TOPIC",
        "PGHOST",
        "PGPORT",
        "PGDATABASE",
        "PGDATABASE_TESTS",
        "PGUSER",
        "PGPASSWORD",
        "PGSSLROOTCERT",
    ] {
        let value = vars.get(key).map(String::as_str).unwrap_or_default();
        assert!(
            !value.is_empty(),
            "{key} missing or empty in {}",
            env.path().display()
        );
        assert!(!value.contains(char::is_whitespace), "{key} has whitespace");
    }
    assert_eq!(vars["KAFKA_SASL_MECHANISM"], "SCRAM-SHA-512");
    assert_eq!(vars["KAFKA_INPUT_TOPIC"], "campaigns");
    assert_eq!(vars["KAFKA_OUTPUT_TOPIC"], "campaign-notifications");
    assert_eq!(vars["KAFKA_DEAD_LETTER_TOPIC"], "campaigns-dead-letter");
    assert_eq!(vars["PGDATABASE"], "de");
    assert_eq!(vars["PGDATABASE_TESTS"], "de_test");
    for key in ["KAFKA_CA_FILE", "PGSSLROOTCERT"] {
        assert!(
            Path::new(&vars[key]).is_absolute(),
            "{key} is an absolute path"
        );
        assert!(Path::new(&vars[key]).is_file(), "{key} exists");
    }
}

#[test]
fn vendored_contract_files_equal_the_shared_contract() {
    let shared = repo_root().join("../shared/contract");
    if !shared.is_dir() {
        eprintln!(
            "note: {} is not there (a clone without shared/ beside it): nothing to compare",
            shared.display()
        );
        return;
    }
    for name in ["schema.sql", "sample_subscribers.sql", "sample_event.json"] {
        let ours = repo_root().join("stack/contract").join(name);
        let theirs = shared.join(name);
        let read =
            |p: &Path| std::fs::read(p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()));
        assert!(
            read(&ours) == read(&theirs),
            "{} differs from {}: copy it again (`cp {} {}`)",
            ours.display(),
            theirs.display(),
            theirs.display(),
            ours.display()
        );
    }
}
