//! Figures over several runs (median, min, max), percentiles, and rates taken from the slope of
//! a counter between 10 % and 90 % of its way, which leaves out the start (consumer group join,
//! first fetches, caches warming) and the tail (the last partial batches).

use crate::service::Sample;

/// One reported figure: a value per run, reported as median with min and max.
#[derive(Debug, Clone)]
pub struct Figure {
    pub section: &'static str,
    pub name: String,
    pub unit: &'static str,
    pub values: Vec<f64>,
    /// How it was obtained: the phase and the method, and what to run to reproduce it.
    pub how: String,
}

impl Figure {
    pub fn median(&self) -> Option<f64> {
        median(&self.values)
    }

    pub fn min(&self) -> Option<f64> {
        self.values.iter().copied().reduce(f64::min)
    }

    pub fn max(&self) -> Option<f64> {
        self.values.iter().copied().reduce(f64::max)
    }
}

pub fn median(values: &[f64]) -> Option<f64> {
    let mut sorted: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    if sorted.is_empty() {
        return None;
    }
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    Some(if sorted.len() % 2 == 1 {
        sorted[mid]
    } else {
        (sorted[mid - 1] + sorted[mid]) / 2.0
    })
}

/// The `q`-quantile (0 ≤ q ≤ 1) of sorted values, nearest rank.
pub fn quantile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1])
}

/// The first sample at which `value(sample) - base` had reached `target`.
fn first_reaching(
    samples: &[Sample],
    value: impl Fn(&Sample) -> f64,
    base: f64,
    target: f64,
) -> Option<&Sample> {
    samples.iter().find(|s| value(s) - base >= target)
}

/// A phase's steady state, from the service's counters.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    /// Output messages per second between 10 % and 90 % of the phase's outputs.
    pub outputs_per_s: f64,
    /// `subscribers_feedback` rows per second between 10 % and 90 % of the phase's rows.
    pub rows_per_s: f64,
    /// CPU seconds of the service per million outputs, over the outputs' window.
    pub cpu_per_million: f64,
    /// The same for the broker, PostgreSQL and the bench's own clients (NaN: not sampled).
    pub kafka_cpu_per_million: f64,
    pub pg_cpu_per_million: f64,
    pub bench_cpu_per_million: f64,
    /// The share of the window's samples in which PostgreSQL ran an autovacuum worker (NaN:
    /// not sampled).
    pub autovacuum_share: f64,
    /// The largest resident set sampled during the window.
    pub max_rss: u64,
    /// The batches committed in the window, on average (`None`: no batch committed in it).
    pub per_batch: Option<PerBatch>,
}

/// A batch of a throughput window, on average.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PerBatch {
    pub outputs: f64,
    /// Seconds deciding and storing: one after the other, so they bound the rate at
    /// `outputs / (decide + store)` whatever the cores could do.
    pub decide: f64,
    pub store: f64,
    /// Seconds in the Kafka transaction, which runs beside the next batch's decide and store.
    pub deliver: f64,
}

impl PerBatch {
    fn between(lo: &Sample, hi: &Sample) -> Option<Self> {
        let batches = hi.stages.batches - lo.stages.batches;
        (batches >= 1.0).then(|| Self {
            outputs: (hi.outputs - lo.outputs) / batches,
            decide: (hi.stages.decide - lo.stages.decide) / batches,
            store: (hi.stages.store - lo.stages.store) / batches,
            deliver: (hi.stages.deliver - lo.stages.deliver) / batches,
        })
    }

    /// The outputs per second that deciding and storing, one batch after another, allow.
    pub fn serial_rate(&self) -> f64 {
        self.outputs / (self.decide + self.store)
    }
}

/// Who kept the cores busy over a stretch of time, in cores (CPU seconds per second; NaN: not
/// sampled), and the batches committed in it.
#[derive(Debug, Clone, Copy)]
pub struct Busy {
    pub host: f64,
    pub kafka: f64,
    pub pg: f64,
    pub bench: f64,
    pub per_batch: Option<PerBatch>,
}

/// [`Busy`] between the first and the last of `samples` (in time order) within `start..=end`;
/// `None` with fewer than two there.
pub fn busy(samples: &[Sample], start: f64, end: f64) -> Option<Busy> {
    let mut inside = samples.iter().filter(|s| s.t >= start && s.t <= end);
    let first = inside.next()?;
    let last = inside.next_back()?;
    let dt = last.t - first.t;
    if dt <= 0.0 {
        return None;
    }
    let cores = |cpu: fn(&Sample) -> f64| (cpu(last) - cpu(first)) / dt;
    Some(Busy {
        host: cores(|s| s.cpu),
        kafka: cores(|s| s.kafka_cpu),
        pg: cores(|s| s.pg_cpu),
        bench: cores(|s| s.bench_cpu),
        per_batch: PerBatch::between(first, last),
    })
}

/// The rate of a counter between the samples where it first reached 10 % and 90 % of
/// `expected`, with the samples' own values and times: the counters step once per batch, so
/// interpolating between samples would invent times inside a batch. `None` when both points fall
/// on one step (the phase was too few batches for a rate).
fn slope(
    samples: &[Sample],
    value: impl Fn(&Sample) -> f64 + Copy,
    base: f64,
    expected: f64,
) -> Option<(f64, &Sample, &Sample)> {
    let lo = first_reaching(samples, value, base, 0.1 * expected)?;
    let hi = first_reaching(samples, value, base, 0.9 * expected)?;
    let (dv, dt) = (value(hi) - value(lo), hi.t - lo.t);
    (dv > 0.0 && dt > 0.0).then(|| (dv / dt, lo, hi))
}

/// The steady state of a phase that adds `expected` outputs and rows to the counters as they
/// stood at `base`; `samples` are in time order.
pub fn window(samples: &[Sample], base: &Sample, expected: f64) -> Option<Window> {
    let (outputs_per_s, lo, hi) = slope(samples, |s| s.outputs, base.outputs, expected)?;
    let (rows_per_s, _, _) = slope(samples, |s| s.rows, base.rows, expected)?;
    let inside = || samples.iter().filter(|s| s.t >= lo.t && s.t <= hi.t);
    let max_rss = inside().map(|s| s.rss).max().unwrap_or(base.rss);
    let vacuuming = inside().filter(|s| s.autovacuum_workers > 0.0).count();
    let autovacuum_share = if inside().any(|s| s.autovacuum_workers.is_nan()) {
        f64::NAN
    } else {
        vacuuming as f64 / inside().count() as f64
    };
    let per_million =
        |cpu: fn(&Sample) -> f64| (cpu(hi) - cpu(lo)) / (hi.outputs - lo.outputs) * 1e6;
    Some(Window {
        outputs_per_s,
        rows_per_s,
        cpu_per_million: per_million(|s| s.cpu),
        kafka_cpu_per_million: per_million(|s| s.kafka_cpu),
        pg_cpu_per_million: per_million(|s| s.pg_cpu),
        bench_cpu_per_million: per_million(|s| s.bench_cpu),
        autovacuum_share,
        max_rss,
        per_batch: PerBatch::between(lo, hi),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::StageSums;

    fn sample(t: f64, n: f64, cpu: f64) -> Sample {
        Sample {
            t,
            outputs: n,
            rows: n,
            events_in: 0.0,
            cpu,
            rss: 1,
            ..Sample::default()
        }
    }

    #[test]
    fn busy_cores_are_taken_between_the_stretch_s_first_and_last_samples() {
        // The host burns half a core and the broker 0.8 from t = 0 on; only t = 2..=6 counts.
        let samples: Vec<Sample> = (0..=8)
            .map(|t| Sample {
                kafka_cpu: 0.8 * f64::from(t),
                ..sample(f64::from(t), 0.0, 0.5 * f64::from(t))
            })
            .collect();
        let b = busy(&samples, 1.5, 6.0).unwrap();
        assert!((b.host - 0.5).abs() < 1e-9, "{b:?}");
        assert!((b.kafka - 0.8).abs() < 1e-9, "{b:?}");
        assert_eq!(b.pg, 0.0);
        assert!(b.per_batch.is_none(), "no batch committed");
        assert!(
            busy(&samples, 2.5, 3.5).is_none(),
            "one sample is no stretch"
        );
    }

    #[test]
    fn medians_and_quantiles() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&[]), None);
        let sorted: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&sorted, 0.5), Some(50.0));
        assert_eq!(quantile(&sorted, 0.99), Some(99.0));
        assert_eq!(quantile(&sorted, 1.0), Some(100.0));
    }

    #[test]
    fn the_window_leaves_out_a_slow_start() {
        // 1,000 outputs: nothing for 2 s, then a batch of 100 every second, sampled four times a
        // second.
        let mut samples = vec![sample(0.0, 0.0, 0.0)];
        for q in 1..=48 {
            let t = f64::from(q) * 0.25;
            let batches = (t - 2.0).floor().clamp(0.0, 10.0);
            samples.push(sample(t, 100.0 * batches, 0.5 * batches));
        }
        let w = window(&samples, &samples[0], 1_000.0).unwrap();
        assert!((w.outputs_per_s - 100.0).abs() < 1e-9, "{w:?}");
        assert!((w.rows_per_s - 100.0).abs() < 1e-9);
        // 0.5 CPU seconds per 100 outputs.
        assert!((w.cpu_per_million - 5_000.0).abs() < 1e-6);
    }

    #[test]
    fn the_autovacuum_share_counts_the_window_samples_with_a_worker() {
        // 1,000 outputs at 100 a second from t = 0; a worker runs from t = 5 s on. The window
        // runs from the sample that reached 100 outputs (t = 1) to the one that reached 900 (t = 9).
        let samples: Vec<Sample> = (0..=10)
            .map(|t| Sample {
                autovacuum_workers: if t >= 5 { 1.0 } else { 0.0 },
                ..sample(f64::from(t), 100.0 * f64::from(t), 0.0)
            })
            .collect();
        let w = window(&samples, &samples[0], 1_000.0).unwrap();
        // Samples t = 1..=9, of which t = 5..=9 had a worker.
        assert!((w.autovacuum_share - 5.0 / 9.0).abs() < 1e-9, "{w:?}");

        let unknown: Vec<Sample> = samples
            .iter()
            .map(|s| Sample {
                autovacuum_workers: f64::NAN,
                ..*s
            })
            .collect();
        assert!(
            window(&unknown, &unknown[0], 1_000.0)
                .unwrap()
                .autovacuum_share
                .is_nan()
        );
    }

    #[test]
    fn the_window_gives_its_batches_stages_on_average() {
        // A batch of 100 outputs a second, each 0.2 s deciding, 0.5 s storing, 0.3 s in Kafka.
        let samples: Vec<Sample> = (0..=10)
            .map(|t| {
                let batches = f64::from(t);
                Sample {
                    stages: StageSums {
                        batches,
                        decide: 0.2 * batches,
                        store: 0.5 * batches,
                        deliver: 0.3 * batches,
                    },
                    ..sample(f64::from(t), 100.0 * batches, 0.0)
                }
            })
            .collect();
        let per_batch = window(&samples, &samples[0], 1_000.0)
            .unwrap()
            .per_batch
            .unwrap();
        let close = |a: f64, b: f64| (a - b).abs() < 1e-9;
        assert!(close(per_batch.outputs, 100.0), "{per_batch:?}");
        assert!(close(per_batch.decide, 0.2) && close(per_batch.store, 0.5));
        assert!(close(per_batch.deliver, 0.3));
        // 100 outputs per 0.7 s of deciding and storing.
        assert!(close(per_batch.serial_rate(), 100.0 / 0.7));

        // Counters without stage histograms (a service that does not export them).
        let bare: Vec<Sample> = (0..=10)
            .map(|t| sample(f64::from(t), 100.0 * f64::from(t), 0.0))
            .collect();
        assert!(
            window(&bare, &bare[0], 1_000.0)
                .unwrap()
                .per_batch
                .is_none()
        );
    }

    #[test]
    fn one_batch_gives_no_rate() {
        let samples = [sample(0.0, 0.0, 0.0), sample(1.0, 1_000.0, 1.0)];
        assert!(window(&samples, &samples[0], 1_000.0).is_none());
    }
}
