//! The measurements of one bench, in order: the guest bench, then per run the ceilings, the
//! service's throughput at each fan-out and its latency (offered rate and saturation), then the
//! cache at each table size. Everything measured is collected in [`Results`] for the report.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};

use crate::ceilings;
use crate::cpu::{proc_usage, tree};
use crate::generator::Generator;
use crate::pagecache;
use crate::reader::Reader;
use crate::service::{Deployment, Sample, Service};
use crate::settings::Settings;
use crate::stack::{BenchDatabase, Stack, Topics, high_watermarks, server_pids};
use crate::stats::{self, Figure};
use crate::workload::{self, Group, Layout};

/// How long a phase may take before the bench gives up on it.
const PHASE_TIMEOUT: Duration = Duration::from_secs(900);
/// How long the service may take from start to ready (a 10 M table loads in well under this).
const READY_TIMEOUT: Duration = Duration::from_secs(600);
/// Transactions timed for Kafka's floor per batch (see [`ceilings::kafka_transactions`]).
const FLOOR_TRANSACTIONS: usize = 300;

/// The share of a latency phase's events, from its start, left out as warm-up.
const LATENCY_WARM_UP: f64 = 0.1;

/// One event's latencies, for the CSV and the CDF plot.
#[derive(Debug, Clone)]
pub struct Latency {
    pub run: usize,
    pub phase: String,
    pub event: u64,
    /// Due → all outputs visible to a `read_committed` consumer.
    pub visible_ms: f64,
    /// Due → the latest `CreateTime` of its outputs.
    pub create_ms: f64,
}

/// A stretch of a run, for the throughput plot.
#[derive(Debug, Clone)]
pub struct Span {
    pub run: usize,
    pub phase: String,
    pub start: f64,
    pub end: f64,
}

#[derive(Default)]
pub struct Results {
    figures: BTreeMap<String, Figure>,
    /// Figure names in the order they were first recorded.
    order: Vec<String>,
    pub samples: Vec<(usize, Sample)>,
    pub spans: Vec<Span>,
    pub latencies: Vec<Latency>,
    pub notes: Vec<String>,
}

impl Results {
    /// The quantiles `qs` (named) of `sorted`, each as the figure `name(quantile name)`.
    pub fn record_quantiles(
        &mut self,
        section: &'static str,
        name: impl Fn(&str) -> String,
        unit: &'static str,
        sorted: &[f64],
        qs: &[(f64, &str)],
        how: &str,
    ) {
        for &(q, quantile) in qs {
            if let Some(v) = stats::quantile(sorted, q) {
                self.record(section, &name(quantile), unit, v, how);
            }
        }
    }

    /// Adds one run's value of a figure (created at its first value).
    pub fn record(
        &mut self,
        section: &'static str,
        name: &str,
        unit: &'static str,
        value: f64,
        how: &str,
    ) {
        let figure = self.figures.entry(name.to_owned()).or_insert_with(|| {
            self.order.push(name.to_owned());
            Figure {
                section,
                name: name.to_owned(),
                unit,
                values: Vec::new(),
                how: how.to_owned(),
            }
        });
        figure.values.push(value);
    }

    pub fn figures(&self) -> impl Iterator<Item = &Figure> {
        self.order.iter().map(|name| &self.figures[name])
    }

    pub fn figure(&self, name: &str) -> Option<&Figure> {
        self.figures.get(name)
    }
}

/// Names of figures that other parts (summary, ratios) look up.
pub mod names {
    pub const CEILING: &str = "same-run ceiling (slower sink alone)";
    /// CPU seconds per million rows of a sink alone ("PostgreSQL", "Kafka"), of its "server"
    /// or its "client".
    pub fn alone_cpu(sink: &str, side: &str) -> String {
        format!("{sink} alone: {side} CPU per million")
    }
    /// CPU seconds per million outputs of `who` ("host", "Kafka broker", "PostgreSQL").
    pub fn cpu_per_million(fan_out: usize, who: &str) -> String {
        format!("fan-out {fan_out}: {who} CPU per million outputs")
    }
    pub fn outputs(fan_out: usize) -> String {
        format!("fan-out {fan_out}: output messages/s")
    }
    /// A batch's average time in `stage` ("deciding", "storing", "the Kafka transaction").
    pub fn per_batch(fan_out: usize, stage: &str) -> String {
        format!("fan-out {fan_out}: per batch, {stage}")
    }
    /// The rate that deciding and storing, one batch after another, allow.
    pub fn serial_rate(fan_out: usize) -> String {
        format!("fan-out {fan_out}: rate deciding and storing allow")
    }
    /// Who [`busy`] names, in the order of [`crate::stats::Busy`]'s host, kafka, pg and bench.
    pub const BUSY: [&str; 4] = [
        "the host",
        "the Kafka broker",
        "PostgreSQL",
        "the bench's own clients",
    ];
    /// The cores `who` (one of [`BUSY`]) kept busy during the latency phase `label`.
    pub fn busy(label: &str, who: &str) -> String {
        format!("{label}: cores busy, {who}")
    }
    /// A batch's average Kafka transaction during the latency phase `label`.
    pub fn latency_batch_kafka(label: &str) -> String {
        format!("{label}: per batch, the Kafka transaction")
    }
    pub fn cache_load(subscriptions: u64) -> String {
        format!("{subscriptions} subscriptions: cache load (the service's log)")
    }
}

pub struct Bench<'a> {
    pub stack: &'a Stack,
    pub settings: &'a Settings,
    pub runtime: &'a tokio::runtime::Runtime,
    /// Unique per bench: prefix of its database, topics, groups and campaigns.
    pub id: String,
    pub epoch: Instant,
    pub binary: PathBuf,
    pub guest: PathBuf,
    pub out: PathBuf,
    pub results: Results,
}

impl Bench<'_> {
    /// `make bench-guest`'s bench, `runs` times, its table parsed.
    pub fn guest_bench(&mut self) -> Result<()> {
        let how = "cargo bench -p campaign-push --bench transform (make bench-guest): 10,000 \
                   output records per batch, median of its samples";
        for run in 1..=self.settings.runs {
            println!("bench: guest bench, run {run}");
            let output = Command::new("cargo")
                .args(["bench", "-p", "campaign-push", "--bench", "transform"])
                .env("GUEST_WASM", &self.guest)
                .current_dir(&self.stack.root)
                .output()
                .context("running cargo bench")?;
            let text = String::from_utf8_lossy(&output.stdout).into_owned();
            std::fs::write(self.out.join(format!("guest-bench-run{run}.txt")), &text)?;
            if !output.status.success() {
                bail!(
                    "cargo bench --bench transform failed: {}",
                    String::from_utf8_lossy(&output.stderr)
                );
            }
            for row in text.lines().filter_map(parse_guest_row) {
                let (fan_out, native, wasm, ratio) = row;
                let r = &mut self.results;
                r.record(
                    "guest",
                    &format!("guest, fan-out {fan_out}: native records/s"),
                    "records/s",
                    native,
                    how,
                );
                r.record(
                    "guest",
                    &format!("guest, fan-out {fan_out}: Wasm records/s"),
                    "records/s",
                    wasm,
                    how,
                );
                r.record(
                    "guest",
                    &format!("guest, fan-out {fan_out}: Wasm/native time"),
                    "×",
                    ratio,
                    how,
                );
            }
        }
        Ok(())
    }

    /// Each sink alone (see [`ceilings`]); returns the same-run ceiling, the slower of the two.
    fn ceilings(&mut self, run: usize, tag: &str, db: &str, topics: &mut Topics) -> Result<f64> {
        let s = self.settings;
        let ceiling_how = format!(
            "{} output-shaped rows/messages, {} per transaction (see bench/src/ceilings.rs)",
            s.ceiling_outputs, s.ceiling_batch
        );

        println!("bench: run {run}: ceilings");
        let memory_mib = 64;
        self.results.record(
            "ceiling",
            &format!("machine: one random memory read, {memory_mib} MiB working set"),
            "ns",
            ceilings::memory_latency(memory_mib),
            "a pointer chase through one random cycle (bench/src/ceilings.rs memory_latency)",
        );
        let (broker, postgres) = server_pids(&self.stack.root);
        let cpu_of = |server: Option<u32>| move || server.map_or(f64::NAN, |pid| tree(pid).cpu);
        let pg = self.runtime.block_on(async {
            let client = self.stack.connect(db).await?;
            ceilings::postgres(
                &client,
                &cpu_of(postgres),
                tag,
                s.ceiling_outputs,
                s.ceiling_batch,
                10,
            )
            .await
        })?;
        let ceiling_topic = topics.create(&format!("{tag}-ceiling"))?;
        let kafka = ceilings::kafka(
            self.stack,
            &cpu_of(broker),
            &ceiling_topic,
            tag,
            s.ceiling_outputs,
            s.ceiling_batch,
            10,
        )?;
        let floor_size = 20 * 10;
        let mut floor = ceilings::kafka_transactions(
            self.stack,
            &ceiling_topic,
            tag,
            FLOOR_TRANSACTIONS,
            floor_size,
            10,
        )?;
        floor.sort_by(f64::total_cmp);
        let ceiling = pg.per_second.min(kafka.per_second);
        let r = &mut self.results;
        let floor_how = format!(
            "{FLOOR_TRANSACTIONS} transactions of {floor_size} messages (20 events × fan-out 10, \
             a batch of the latency phase) back to back, each with consumer offsets, as the \
             service's deliver stage sends them"
        );
        r.record_quantiles(
            "ceiling",
            |q| format!("Kafka alone: one small transaction, {q}"),
            "ms",
            &floor,
            &[(0.5, "p50"), (0.99, "p99")],
            &floor_how,
        );
        r.record(
            "ceiling",
            "PostgreSQL alone: binary COPY into a subscribers_feedback-shaped table",
            "rows/s",
            pg.per_second,
            &ceiling_how,
        );
        r.record(
            "ceiling",
            "Kafka alone: transactional producer with the service's settings",
            "messages/s",
            kafka.per_second,
            &ceiling_how,
        );
        r.record(
            "ceiling",
            names::CEILING,
            "rows/s",
            ceiling,
            "min of the two above, same run",
        );
        let cpu_how = "CPU seconds from /proc over the rate's window, per million";
        for (sink, ceiling, server, client) in [
            ("PostgreSQL", pg, "PostgreSQL", "the bench's COPY client"),
            ("Kafka", kafka, "the broker", "the bench's producer"),
        ] {
            r.record(
                "ceiling",
                &names::alone_cpu(sink, "server"),
                "CPU s",
                ceiling.server_cpu_per_million,
                &format!("{cpu_how}: {server}"),
            );
            r.record(
                "ceiling",
                &names::alone_cpu(sink, "client"),
                "CPU s",
                ceiling.client_cpu_per_million,
                &format!("{cpu_how}: {client}"),
            );
        }
        Ok(ceiling)
    }

    /// One run against the service's database `db` (subscribers loaded per `layout`).
    pub fn run_once(
        &mut self,
        run: usize,
        db: &str,
        layout: &Layout,
        topics: &mut Topics,
    ) -> Result<()> {
        let tag = format!("{}r{run}", self.id);
        let s = self.settings;
        let ceiling = self.ceilings(run, &tag, db, topics)?;

        let deployment = self.deployment(
            &tag,
            db,
            topics,
            format!("service-run{run}.log"),
            Vec::new(),
        )?;
        println!("bench: run {run}: starting the service");
        let mut service = Service::spawn(self.stack, &deployment)?;
        let ready = service.wait_ready(READY_TIMEOUT, &deployment.log)?;
        let subscriptions = layout.subscriptions();
        let rss_ready = proc_usage(service.pid()).map_or(0, |(_, rss)| rss);
        let r = &mut self.results;
        let how = format!(
            "spawn → /readyz 200 (polled every 10 ms), {subscriptions} subscriptions in the table"
        );
        r.record("cost", "start → ready", "s", ready.as_secs_f64(), &how);
        r.record("cost", "host RSS when ready", "MiB", mib(rss_ready), &how);
        service.start_sampler(self.epoch);

        let mut ratios = Vec::new();
        for fan_out in s.fan_outs.clone() {
            let group = layout
                .group(fan_out.fan_out)
                .context("no restaurants for a fan-out")?;
            let Some(window) = self.throughput(
                run,
                &tag,
                &mut service,
                &deployment,
                group,
                fan_out.events,
                db,
            )?
            else {
                continue;
            };
            let name = fan_out.fan_out;
            let how = format!(
                "backlog of {} events × fan-out {name} produced at once; slope of the service's \
                 counters between 10 % and 90 % of the outputs",
                fan_out.events
            );
            let r = &mut self.results;
            r.record(
                "throughput",
                &names::outputs(name),
                "messages/s",
                window.outputs_per_s,
                &how,
            );
            r.record(
                "throughput",
                &format!("fan-out {name}: feedback rows/s"),
                "rows/s",
                window.rows_per_s,
                &how,
            );
            let ratio = window.outputs_per_s.min(window.rows_per_s) / ceiling;
            r.record(
                "throughput",
                &format!("fan-out {name}: ratio to the same-run ceiling"),
                "×",
                ratio,
                &how,
            );
            r.record(
                "cost",
                &names::cpu_per_million(name, "host"),
                "CPU s",
                window.cpu_per_million,
                &how,
            );
            let others = [
                ("Kafka broker", window.kafka_cpu_per_million),
                ("PostgreSQL", window.pg_cpu_per_million),
                ("the bench's own clients", window.bench_cpu_per_million),
            ];
            for (who, cpu) in others.into_iter().filter(|(_, cpu)| cpu.is_finite()) {
                r.record(
                    "cost",
                    &names::cpu_per_million(name, who),
                    "CPU s",
                    cpu,
                    &how,
                );
            }
            if window.autovacuum_share.is_finite() {
                r.record(
                    "cost",
                    &format!("fan-out {name}: autovacuum running, share of the window"),
                    "%",
                    window.autovacuum_share * 100.0,
                    &format!("{how}; PostgreSQL's autovacuum workers, counted in each sample"),
                );
            }
            r.record(
                "cost",
                &format!("fan-out {name}: host RSS under load (max)"),
                "MiB",
                mib(window.max_rss),
                &how,
            );
            if let Some(batch) = window.per_batch {
                let how = format!("{how}; the service's campaign_push_stage_seconds");
                r.record(
                    "stages",
                    &format!("fan-out {name}: outputs per batch"),
                    "outputs",
                    batch.outputs,
                    &how,
                );
                for (stage, seconds) in [
                    ("deciding", batch.decide),
                    ("storing", batch.store),
                    ("the Kafka transaction", batch.deliver),
                ] {
                    r.record(
                        "stages",
                        &names::per_batch(name, stage),
                        "ms",
                        seconds * 1e3,
                        &how,
                    );
                }
                r.record(
                    "stages",
                    &names::serial_rate(name),
                    "rows/s",
                    batch.serial_rate(),
                    &format!(
                        "{how}; outputs per batch ÷ (deciding + storing), which run one after \
                         the other"
                    ),
                );
            }
            ratios.push((name, window));
        }

        self.native_pipeline(run, &tag, db, layout, topics, &ratios)?;

        let f10 = layout.group(10).context("fan-out 10 is always measured")?;
        let label = format!("{} events/s × fan-out 10", s.latency_rate);
        let offered = self.latency(
            run,
            &tag,
            "offered",
            &label,
            &deployment,
            f10,
            s.latency_rate,
            s.latency_seconds,
        )?;
        self.record_busy(&label, &service, &offered);
        if let Some((_, w)) = ratios.iter().find(|(f, _)| *f == 10) {
            let rate = (w.outputs_per_s / 10.0 * s.saturation_fraction).max(1.0);
            let label = format!(
                "saturation ({:.0} % of the run's fan-out-10 throughput) × fan-out 10",
                s.saturation_fraction * 100.0
            );
            self.latency(
                run,
                &tag,
                "saturation",
                &label,
                &deployment,
                f10,
                rate,
                s.saturation_seconds,
            )?;
        }
        if !service.is_running() {
            bail!(
                "the service exited during run {run}; see {}",
                deployment.log.display()
            );
        }
        self.results
            .samples
            .extend(service.samples().into_iter().map(|sample| (run, sample)));
        service.stop();
        Ok(())
    }

    /// Who kept the cores busy during the latency phase `label` (over `span`), and how long its
    /// batches spent in each stage: what the latency competes with.
    fn record_busy(&mut self, label: &str, service: &Service, span: &Span) {
        let Some(busy) = stats::busy(&service.samples(), span.start, span.end) else {
            return;
        };
        let how = "CPU seconds per second (1 = one core busy), between the phase's first and \
                   last samples of /proc (every 100 ms)";
        let r = &mut self.results;
        let cores = [busy.host, busy.kafka, busy.pg, busy.bench];
        for (who, cores) in names::BUSY.into_iter().zip(cores) {
            if cores.is_finite() {
                r.record("latency", &names::busy(label, who), "cores", cores, how);
            }
        }
        if let Some(batch) = busy.per_batch {
            let how = "the service's campaign_push_stage_seconds over the phase, per batch";
            r.record(
                "latency",
                &format!("{label}: outputs per batch"),
                "outputs",
                batch.outputs,
                how,
            );
            r.record(
                "latency",
                &names::latency_batch_kafka(label),
                "ms",
                batch.deliver * 1e3,
                how,
            );
        }
    }

    /// The same throughput phases (fan-outs 10 and 100) with the transform compiled into the host
    /// (`guest.engine = "native"`) instead of the Wasm component: the Wasm boundary's cost in the
    /// whole pipeline, as the ratio of the two runs' rates.
    fn native_pipeline(
        &mut self,
        run: usize,
        tag: &str,
        db: &str,
        layout: &Layout,
        topics: &mut Topics,
        wasm: &[(usize, stats::Window)],
    ) -> Result<()> {
        let tag = format!("{tag}n");
        let deployment = self.deployment(
            &tag,
            db,
            topics,
            format!("service-run{run}-native.log"),
            vec![("CAMPAIGN_PUSH__GUEST__ENGINE".into(), "native".into())],
        )?;
        println!("bench: run {run}: the same pipeline with the native transform");
        let mut service = Service::spawn(self.stack, &deployment)?;
        service.wait_ready(READY_TIMEOUT, &deployment.log)?;
        service.start_sampler(self.epoch);
        let fan_outs: Vec<_> = self
            .settings
            .fan_outs
            .iter()
            .filter(|f| matches!(f.fan_out, 10 | 100))
            .cloned()
            .collect();
        for fan_out in fan_outs {
            let Some((_, wasm_window)) = wasm.iter().find(|(f, _)| *f == fan_out.fan_out) else {
                continue;
            };
            let group = layout
                .group(fan_out.fan_out)
                .context("no restaurants for a fan-out")?;
            let Some(native) = self.throughput(
                run,
                &tag,
                &mut service,
                &deployment,
                group,
                fan_out.events,
                db,
            )?
            else {
                continue;
            };
            let name = fan_out.fan_out;
            let how = format!(
                "the throughput phase at fan-out {name} again, on a service with \
                 CAMPAIGN_PUSH__GUEST__ENGINE=native; ratio = native rate / Wasm rate"
            );
            let native_rate = native.outputs_per_s.min(native.rows_per_s);
            let wasm_rate = wasm_window.outputs_per_s.min(wasm_window.rows_per_s);
            let r = &mut self.results;
            r.record(
                "guest",
                &format!("pipeline, fan-out {name}: native rows/s"),
                "rows/s",
                native_rate,
                &how,
            );
            r.record(
                "guest",
                &format!("pipeline, fan-out {name}: Wasm/native time"),
                "×",
                native_rate / wasm_rate,
                &how,
            );
        }
        service.stop();
        Ok(())
    }

    /// A backlog of `events` events to `group`'s restaurants, produced at once; measured from
    /// the service's counters until both sinks have every output.
    #[allow(clippy::too_many_arguments)]
    fn throughput(
        &mut self,
        run: usize,
        tag: &str,
        service: &mut Service,
        deployment: &Deployment,
        group: Group,
        events: u64,
        db: &str,
    ) -> Result<Option<stats::Window>> {
        let phase_tag = format!("{tag}-f{}", group.fan_out);
        let expected = (events * group.fan_out as u64) as f64;
        println!(
            "bench: run {run}: throughput at fan-out {} ({events} events, {expected} outputs)",
            group.fan_out
        );
        let base = service
            .sample_now(self.epoch)
            .context("reading the service's counters")?;
        let mut generator = Generator::new(self.stack, &deployment.input, 5)?;
        generator.backlog(workload::phase_events(&phase_tag, group, events))?;
        let deadline = Instant::now() + PHASE_TIMEOUT;
        let last = loop {
            if !service.is_running() {
                bail!("the service exited; see {}", deployment.log.display());
            }
            if let Some(now) = service.sample_now(self.epoch)
                && now.outputs - base.outputs >= expected
                && now.rows - base.rows >= expected
            {
                break now;
            }
            if Instant::now() > deadline {
                bail!(
                    "fan-out {}: not every output after {PHASE_TIMEOUT:?}",
                    group.fan_out
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        // One more sample after the end, so that the slope's 90 % point has one on each side.
        std::thread::sleep(Duration::from_millis(250));
        let mut samples: Vec<Sample> = service
            .samples()
            .into_iter()
            .filter(|s| s.t >= base.t && s.t <= last.t)
            .collect();
        samples.insert(0, base);
        samples.push(last);
        samples.sort_by(|a, b| a.t.total_cmp(&b.t));
        self.results.spans.push(Span {
            run,
            phase: format!("fan-out {}", group.fan_out),
            start: base.t,
            end: last.t,
        });
        // The service's own count, checked against the table (after the measurement).
        let stored: i64 = self.runtime.block_on(async {
            let client = self.stack.connect(db).await?;
            let row = client
                .query_one(
                    "SELECT count(*) FROM subscribers_feedback WHERE adv_campaign_id LIKE $1",
                    &[&format!("{phase_tag}-e%")],
                )
                .await?;
            anyhow::Ok(row.get(0))
        })?;
        if stored as f64 != expected {
            self.results.notes.push(format!(
                "run {run}, fan-out {}: {stored} feedback rows stored, {expected} expected",
                group.fan_out
            ));
        }
        let window = stats::window(&samples, &base, expected);
        if window.is_none() {
            self.results.notes.push(format!(
                "run {run}, fan-out {}: no rate: 10 % and 90 % of the outputs came in one batch \
                 (make the phase longer)",
                group.fan_out
            ));
        }
        Ok(window)
    }

    /// Events offered at `rate` per second for `seconds`, each due at its scheduled time; the
    /// time from due to its last output visible to a `read_committed` reader. Returns the
    /// phase's span.
    #[allow(clippy::too_many_arguments)]
    fn latency(
        &mut self,
        run: usize,
        tag: &str,
        phase: &str,
        label: &str,
        deployment: &Deployment,
        group: Group,
        rate: f64,
        seconds: f64,
    ) -> Result<Span> {
        let phase_tag = format!("{tag}-{phase}");
        let count = (rate * seconds).round().max(1.0) as u64;
        // What the phases before left dirty is written back first (see `pagecache`).
        let written_back = pagecache::write_back()?;
        let dirty_mb = written_back.dirty_bytes as f64 / 1e6;
        self.results.record(
            "latency",
            &format!("{label}: page cache written back before the phase"),
            "MB",
            dirty_mb,
            "`Dirty:` in /proc/meminfo, then `sync`, before the phase's first event",
        );
        println!(
            "bench: run {run}: latency, {label}, {seconds} s (after writing back {dirty_mb:.0} MB \
             in {:.1} s)",
            written_back.took.as_secs_f64()
        );
        let from = high_watermarks(self.stack, &deployment.output)?;
        let reader = Reader::start(
            self.stack,
            &deployment.output,
            &from,
            &phase_tag,
            count as usize,
            group.fan_out as u32,
        )?;
        let mut generator = Generator::new(self.stack, &deployment.input, 0)?;
        // A moment for the reader's first fetch, so it is not what the first events wait for.
        let lead = Duration::from_millis(300);
        let start = Instant::now() + lead;
        let start_wall_ms = (SystemTime::now() + lead)
            .duration_since(UNIX_EPOCH)?
            .as_secs_f64()
            * 1e3;
        let t0 = self.epoch.elapsed().as_secs_f64() + lead.as_secs_f64();
        generator.paced(start, rate, count, |i| {
            workload::event(&phase_tag, i, group.first + i % group.restaurants)
        })?;
        let seen = reader.finish(Duration::from_secs(120))?;
        let end = self.epoch.elapsed().as_secs_f64();
        let span = Span {
            run,
            phase: format!("{phase}: {rate:.0} events/s"),
            start: t0,
            end,
        };
        self.results.spans.push(span.clone());

        let first = (count as f64 * LATENCY_WARM_UP) as u64;
        let mut visible = Vec::new();
        let mut created = Vec::new();
        let mut missing = 0;
        for i in first..count {
            let due_offset = i as f64 / rate;
            let Some(at) = seen.complete_at[i as usize] else {
                missing += 1;
                continue;
            };
            let visible_ms =
                at.saturating_duration_since(start).as_secs_f64() * 1e3 - due_offset * 1e3;
            let create_ms =
                seen.last_create_ms[i as usize] as f64 - (start_wall_ms + due_offset * 1e3);
            visible.push(visible_ms);
            created.push(create_ms);
            self.results.latencies.push(Latency {
                run,
                phase: label.to_owned(),
                event: i,
                visible_ms,
                create_ms,
            });
        }
        if missing > 0 {
            self.results.notes.push(format!(
                "run {run}, {label}: {missing} of {} events measured did not have all outputs \
                 visible within 120 s after the last was due",
                count - first
            ));
        }
        visible.sort_by(f64::total_cmp);
        created.sort_by(f64::total_cmp);
        let how = format!(
            "{count} events offered at {rate:.0}/s (linger 0), first {:.0} % left out as warm-up; \
             read_committed reader from the phase's start",
            LATENCY_WARM_UP * 100.0
        );
        let r = &mut self.results;
        r.record_quantiles(
            "latency",
            |q| format!("{label}: due → all outputs visible, {q}"),
            "ms",
            &visible,
            &[(0.5, "p50"), (0.99, "p99"), (1.0, "max")],
            &how,
        );
        r.record_quantiles(
            "latency",
            |q| format!("{label}: due → output CreateTime, {q}"),
            "ms",
            &created,
            &[(0.5, "p50"), (0.99, "p99")],
            &how,
        );
        if phase == "saturation" {
            // From the first event due to the reader's last output seen.
            let delivered = seen.outputs as f64 / group.fan_out as f64 / (end - t0);
            r.record(
                "latency",
                &format!("{label}: offered events/s"),
                "events/s",
                rate,
                &how,
            );
            r.record(
                "latency",
                &format!("{label}: delivered events/s"),
                "events/s",
                delivered,
                &how,
            );
        }
        Ok(span)
    }

    /// A deployment on topics, group and transactional id of its own, named after `tag`.
    fn deployment(
        &self,
        tag: &str,
        db: &str,
        topics: &mut Topics,
        log: String,
        extra: Vec<(String, String)>,
    ) -> Result<Deployment> {
        Ok(Deployment {
            binary: self.binary.clone(),
            guest: self.guest.clone(),
            input: topics.create(&format!("{tag}-in"))?,
            output: topics.create(&format!("{tag}-out"))?,
            dead_letter: topics.create(&format!("{tag}-dlq"))?,
            group: format!("{tag}-group"),
            transactional_id: format!("{tag}-txn"),
            database: db.to_owned(),
            log: self.out.join(log),
            extra,
        })
    }

    /// Starts the service once on `db` and stops it, measuring nothing: the first start on a
    /// database applies the service's migrations, which later starts only check, so an
    /// unmeasured start keeps that one-off cost out of the start → ready figures.
    pub fn warm_up(&mut self, db: &str, topics: &mut Topics) -> Result<()> {
        let tag = format!("{db}-warm-up");
        let deployment = self.deployment(
            &tag,
            db,
            topics,
            format!("service-warm-up-{db}.log"),
            Vec::new(),
        )?;
        self.start_and_stop(&deployment)?;
        Ok(())
    }

    /// Starts the service, waits until it is ready, and stops it: start → ready and the
    /// resident memory when it became ready.
    fn start_and_stop(&self, deployment: &Deployment) -> Result<(Duration, u64)> {
        let mut service = Service::spawn(self.stack, deployment)?;
        let ready = service.wait_ready(READY_TIMEOUT, &deployment.log)?;
        let rss = proc_usage(service.pid()).map_or(0, |(_, rss)| rss);
        service.stop();
        Ok((ready, rss))
    }

    /// Start → ready and the resident memory when ready, with each table size in turn, in a
    /// database of its own (the subscribers added between sizes, with the service stopped).
    pub fn cache(&mut self, topics: &mut Topics) -> Result<()> {
        let s = self.settings;
        if s.cache_sizes.is_empty() {
            return Ok(());
        }
        let name = format!("{}_cache", self.id);
        let db = self
            .runtime
            .block_on(BenchDatabase::create(self.stack, &name))?;
        let tag = format!("{}c", self.id);
        let input = topics.create(&format!("{tag}-in"))?;
        let output = topics.create(&format!("{tag}-out"))?;
        let dead_letter = topics.create(&format!("{tag}-dlq"))?;
        self.warm_up(&db.name, topics)?;
        let mut loaded = 0u64;
        let mut rss_by_size: Vec<(u64, Vec<u64>)> = Vec::new();
        for &size in &s.cache_sizes {
            if size > loaded {
                println!("bench: cache: loading subscriptions {loaded}..{size}");
                let started = Instant::now();
                self.runtime.block_on(async {
                    let client = self.stack.connect(&db.name).await?;
                    // The service's migrations add a NOTIFY trigger per row: not for a bulk load
                    // with no service listening.
                    client
                        .batch_execute("ALTER TABLE subscribers_restaurants DISABLE TRIGGER USER")
                        .await?;
                    let rows = (loaded..size).map(|n| {
                        let (restaurant, client) = (n / 100, n % 100);
                        (
                            workload::client_id(restaurant, client),
                            workload::restaurant_id(restaurant),
                        )
                    });
                    workload::load_subscribers(&client, rows).await?;
                    client
                        .batch_execute("ALTER TABLE subscribers_restaurants ENABLE TRIGGER USER")
                        .await?;
                    // On its own: VACUUM cannot run in the implicit transaction of a multi-statement
                    // string.
                    client
                        .batch_execute("VACUUM ANALYZE subscribers_restaurants")
                        .await?;
                    anyhow::Ok(())
                })?;
                println!(
                    "bench: cache: {} subscriptions loaded in {:.1} s",
                    size - loaded,
                    started.elapsed().as_secs_f64()
                );
                loaded = size;
            }
            let mut rss_runs = Vec::new();
            for run in 1..=s.runs {
                let deployment = Deployment {
                    binary: self.binary.clone(),
                    guest: self.guest.clone(),
                    input: input.clone(),
                    output: output.clone(),
                    dead_letter: dead_letter.clone(),
                    group: format!("{tag}{size}r{run}-group"),
                    transactional_id: format!("{tag}{size}r{run}-txn"),
                    database: db.name.clone(),
                    log: self.out.join(format!("service-cache{size}-run{run}.log")),
                    extra: Vec::new(),
                };
                let (ready, rss) = self.start_and_stop(&deployment)?;
                let how = format!(
                    "{size} subscriptions (100 per restaurant, UUID ids) in a database of the bench's; spawn → /readyz 200"
                );
                let load = cache_load_seconds(&deployment.log)?;
                let r = &mut self.results;
                r.record(
                    "cache",
                    &format!("{size} subscriptions: start → ready"),
                    "s",
                    ready.as_secs_f64(),
                    &how,
                );
                r.record(
                    "cache",
                    &names::cache_load(size),
                    "s",
                    load,
                    "the service's own log: \"subscriber table loaded … elapsed_ms\" (the query \
                     and the build of the cache; start-up's other steps run beside it)",
                );
                r.record(
                    "cache",
                    &format!("{size} subscriptions: host RSS when ready"),
                    "MiB",
                    mib(rss),
                    &how,
                );
                rss_runs.push(rss);
            }
            rss_by_size.push((size, rss_runs));
        }
        if let Some((0, empty)) = rss_by_size.first().cloned() {
            for (size, rss_runs) in rss_by_size.iter().filter(|(size, _)| *size > 0) {
                for (run, rss) in rss_runs.iter().enumerate() {
                    let per = (*rss as f64 - empty[run] as f64) / *size as f64;
                    self.results.record(
                        "cache",
                        &format!("{size} subscriptions: bytes per subscription"),
                        "bytes",
                        per,
                        "(RSS when ready − RSS when ready with an empty table) / subscriptions, same run",
                    );
                }
            }
        }
        drop(db);
        Ok(())
    }
}

/// A row of the transform bench's table: `| fan-out | events | native | wasm | ratio x |`.
fn parse_guest_row(line: &str) -> Option<(u64, f64, f64, f64)> {
    let cells: Vec<String> = line
        .trim()
        .strip_prefix('|')?
        .split('|')
        .map(|c| c.trim().replace([',', '_', ' '], ""))
        .collect();
    let fan_out = cells.first()?.parse().ok()?;
    let native = cells.get(2)?.parse().ok()?;
    let wasm = cells.get(3)?.parse().ok()?;
    let ratio = cells.get(4)?.trim_end_matches(['x', '×']).parse().ok()?;
    Some((fan_out, native, wasm, ratio))
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// The seconds the service's first load of the subscriber table took, from its log: start-up
/// loads the cache beside its other steps, so start → ready does not tell the load apart.
fn cache_load_seconds(log: &Path) -> Result<f64> {
    let text =
        std::fs::read_to_string(log).with_context(|| format!("reading {}", log.display()))?;
    first_cache_load(&text)
        .with_context(|| format!("no \"subscriber table loaded\" line in {}", log.display()))
}

fn first_cache_load(log: &str) -> Option<f64> {
    log.lines()
        .filter(|line| line.contains("subscriber table loaded"))
        .find_map(|line| {
            let (_, rest) = line.split_once("elapsed_ms=")?;
            let millis: f64 = rest.split_whitespace().next()?.parse().ok()?;
            Some(millis / 1e3)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_rows_are_parsed() {
        let row =
            "|      10 |         1000 |        2,400,000 |      1,100,000 |            2.26x |";
        assert_eq!(
            parse_guest_row(row),
            Some((10, 2_400_000.0, 1_100_000.0, 2.26))
        );
        assert_eq!(parse_guest_row("| fan-out | events/batch |"), None);
        assert_eq!(parse_guest_row("|--------:|------:|"), None);
    }

    #[test]
    fn the_first_cache_load_is_read_from_the_log() {
        let log = "2026-11-29T11:55:03.1Z  INFO campaign_push::service: starting\n\
            2026-11-29T11:55:12.8Z  INFO campaign_push::subscribers::task: subscriber table \
            loaded reason=\"connected\" rows=49763 restaurants=500 elapsed_ms=14250\n\
            2026-11-29T11:56:12.8Z  INFO campaign_push::subscribers::task: subscriber table \
            loaded reason=\"resync\" rows=49763 restaurants=500 elapsed_ms=99";
        assert_eq!(first_cache_load(log), Some(14.25));
        assert_eq!(first_cache_load("starting\nconsuming"), None);
    }
}
