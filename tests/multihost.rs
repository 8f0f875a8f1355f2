//! Several hosts in one consumer group, against the real local stack: three hosts share a
//! 6-partition input topic while a stream is produced; one joins mid-stream, one is SIGKILLed and
//! restarted, one is SIGSTOPped past its session timeout (its partitions move on without it) and
//! then resumed, when it must not publish what it no longer owns. At the end every (campaign,
//! client) pair is exactly once in both sinks, each message equal to its row, and no decision is
//! left stored.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use support::service::{Deployment, Service, Subscriptions, campaign_event};
use support::{SetOnDrop, StackEnv, poll_until, psql, run, unique_name};

const RESTAURANTS: usize = 30;
const CLIENTS_PER_RESTAURANT: usize = 4;
const EVENTS_PER_WAVE: usize = 24;
const DEADLINE: Duration = Duration::from_secs(180);
/// Short, so that a stopped host loses its partitions within the test (the broker's minimum).
const SESSION_TIMEOUT_MS: &str = "6000";

/// One of the hosts: its own transactional id (and so its own static group membership).
struct Host<'d> {
    deployment: &'d Deployment,
    transactional_id: String,
    service: Option<Service>,
    starts: usize,
}

impl<'d> Host<'d> {
    fn new(deployment: &'d Deployment, name: &'static str) -> Self {
        Self {
            deployment,
            transactional_id: format!("{}-{name}", deployment.transactional_id),
            service: None,
            starts: 0,
        }
    }

    fn start(&mut self, env: &StackEnv) {
        let overrides = [
            (
                "CAMPAIGN_PUSH__KAFKA__TRANSACTIONAL_ID",
                self.transactional_id.as_str(),
            ),
            (
                "CAMPAIGN_PUSH__KAFKA__PROPERTIES__SESSION_TIMEOUT_MS",
                SESSION_TIMEOUT_MS,
            ),
            (
                "CAMPAIGN_PUSH__KAFKA__PROPERTIES__HEARTBEAT_INTERVAL_MS",
                "1000",
            ),
            ("CAMPAIGN_PUSH__PIPELINE__BATCH_MAX_EVENTS", "50"),
            (
                "CAMPAIGN_PUSH__LOG__FILTER",
                "info,campaign_push=debug,librdkafka=warn",
            ),
        ];
        self.service = Some(self.deployment.start_with(env, &overrides));
        self.starts += 1;
    }

    fn service(&self) -> &Service {
        self.service.as_ref().expect("the host runs")
    }

    /// Rebalances this host took part in, from its log (all its runs since the last start).
    fn assignments(&self) -> usize {
        self.service
            .as_ref()
            .map_or(0, |s| s.log_text().matches("partitions assigned").count())
    }
}

/// The consumer group's committed offset of each input partition (0 where none yet), read with
/// `consumer`, which never joins the group.
/// `None` when the coordinator does not answer in time (it may be busy with a rebalance).
fn committed(deployment: &Deployment, consumer: &BaseConsumer) -> Option<Vec<i64>> {
    let mut list = rdkafka::TopicPartitionList::new();
    for p in 0..deployment.input.partitions {
        list.add_partition(&deployment.input.name, p);
    }
    let committed = consumer
        .committed_offsets(list, Duration::from_secs(10))
        .ok()?;
    let offsets = (0..deployment.input.partitions)
        .map(|p| {
            match committed
                .find_partition(&deployment.input.name, p)
                .map(|e| e.offset())
            {
                Some(rdkafka::Offset::Offset(offset)) => offset,
                _ => 0,
            }
        })
        .collect();
    Some(offsets)
}

/// Waits until every input partition's committed offset has moved past where it was: whoever
/// owns each partition is consuming it. `running` are the hosts that must stay up meanwhile.
#[track_caller]
fn every_partition_progresses(deployment: &Deployment, what: &str, running: &[&Host<'_>]) {
    let consumer = deployment.admin_consumer(&deployment.group);
    let before = poll_until("the committed offsets", DEADLINE, || {
        committed(deployment, &consumer)
    });
    poll_until(what, DEADLINE, || {
        for host in running {
            host.service().assert_running();
        }
        let now = committed(deployment, &consumer)?;
        now.iter()
            .zip(&before)
            .all(|(now, before)| *now > *before + 5)
            .then_some(())
    });
}

#[test]
fn three_hosts_deliver_every_pair_exactly_once_through_a_kill_a_stop_and_joins() {
    let env = StackEnv::load();
    let run_id = unique_name("hosts");
    let subscriptions = Subscriptions::insert(&env, &run_id, RESTAURANTS, CLIENTS_PER_RESTAURANT);
    let deployment = Deployment::with_input_partitions(&env, "hosts", 6);

    let (mut a, mut b, mut c) = (
        Host::new(&deployment, "a"),
        Host::new(&deployment, "b"),
        Host::new(&deployment, "c"),
    );
    a.start(&env);
    b.start(&env);

    let done = AtomicBool::new(false);
    let campaigns = std::thread::scope(|scope| {
        // The stream: a wave of events every 250 ms until the scenario is over.
        let producer = scope.spawn(|| {
            let mut campaigns = Vec::new();
            let mut wave = 0;
            while !done.load(Ordering::Relaxed) {
                let these = subscriptions.campaigns(&format!("wave{wave}"), EVENTS_PER_WAVE);
                let values: Vec<String> = these
                    .iter()
                    .map(|(campaign, restaurant)| campaign_event(campaign, restaurant, "shared"))
                    .collect();
                deployment.produce_spread(&values);
                campaigns.extend(these);
                wave += 1;
                std::thread::sleep(Duration::from_millis(250)); // the stream's pace
            }
            campaigns
        });
        let _stop_producing = SetOnDrop(&done);

        every_partition_progresses(&deployment, "a and b consume", &[&a, &b]);
        // C joins mid-stream.
        c.start(&env);
        every_partition_progresses(&deployment, "the group goes on with c", &[&a, &b, &c]);

        // B is killed mid-stream and restarted, as a supervisor would.
        b.service.take().unwrap().kill();
        b.start(&env);
        every_partition_progresses(
            &deployment,
            "the group goes on after b's restart",
            &[&a, &b, &c],
        );

        // C stops answering for longer than its session: the group takes its partitions away
        // and goes on without it, on every partition.
        let c_assigned = c.assignments();
        c.service().signal("STOP");
        every_partition_progresses(&deployment, "the group goes on without c", &[&a, &b]);
        c.service().signal("CONT");
        // Resumed, it finds its membership gone: it rejoins, or it stops with the reason, for its
        // supervisor to restart it. What it had in flight is never published: the counts at the
        // end would show it.
        let c_outcome = poll_until("c rejoins or stops", DEADLINE, || {
            if !c.service().is_running() {
                return Some("stopped");
            }
            (c.assignments() > c_assigned).then_some("rejoined")
        });
        eprintln!("multihost: c after SIGCONT: {c_outcome}");
        if c_outcome == "stopped" {
            let log = c.service().log_text();
            assert!(
                ["fenced", "member", "generation"]
                    .iter()
                    .any(|why| log.contains(why)),
                "c must stop for losing its membership:\n{log}"
            );
            c.start(&env);
        }
        every_partition_progresses(&deployment, "the group goes on with c back", &[&a, &b, &c]);
        done.store(true, Ordering::Relaxed);
        producer.join().unwrap()
    });
    deployment.wait_consumed_checking(DEADLINE, || {
        for host in [&a, &b, &c] {
            host.service().assert_running();
        }
    });
    let expected: BTreeSet<(String, String)> = campaigns
        .iter()
        .flat_map(|(campaign, restaurant)| subscriptions.pairs(campaign, restaurant))
        .collect();
    let assignments: usize = [&a, &b, &c].iter().map(|h| h.assignments()).sum();
    eprintln!(
        "multihost: {} events on 6 partitions, {} pairs; host starts a={} b={} c={}; \
         partition assignments in the hosts' last runs: {assignments}",
        campaigns.len(),
        expected.len(),
        a.starts,
        b.starts,
        c.starts
    );

    deployment.assert_exactly_once(&env, &format!("{run_id}-"), &expected, "three hosts");
    assert_messages_are_rows(&env, &deployment, &run_id);

    // Every decision was delivered: a start forgets them all.
    for host in [&mut a, &mut b, &mut c] {
        host.service = None;
    }
    a.start(&env);
    assert_eq!(
        deployment.stored_decisions(&env),
        0,
        "decisions left stored"
    );
}

/// Every message of the output topic is the feedback row of its pair, field for field.
fn assert_messages_are_rows(env: &StackEnv, deployment: &Deployment, run_id: &str) {
    let sql = format!(
        "SELECT row_to_json(f)::text FROM (SELECT restaurant_id, adv_campaign_id, \
         adv_campaign_content, adv_campaign_owner, adv_campaign_owner_contact, \
         adv_campaign_datetime_start, adv_campaign_datetime_end, datetime_created, client_id, \
         trigger_datetime_created FROM subscribers_feedback \
         WHERE adv_campaign_id LIKE '{run_id}-%') f"
    );
    let finished = run(&mut psql(env, "", &sql), None);
    finished.assert_success();
    let mut rows = BTreeMap::new();
    for line in finished.stdout_text().lines() {
        let row: serde_json::Value = serde_json::from_str(line).unwrap();
        let pair = (
            row["adv_campaign_id"].as_str().unwrap().to_owned(),
            row["client_id"].as_str().unwrap().to_owned(),
        );
        rows.insert(pair, row);
    }
    let mut messages = BTreeMap::new();
    for record in deployment.read_all(&deployment.output.name) {
        let value = record.json();
        let pair = (
            value["adv_campaign_id"].as_str().unwrap().to_owned(),
            value["client_id"].as_str().unwrap().to_owned(),
        );
        messages.insert(pair, value);
    }
    assert!(messages == rows, "a message differs from its row");
}
