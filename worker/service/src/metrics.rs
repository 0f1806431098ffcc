//! [`Metrics`]: the worker's counters, gauges and histograms, rendered in the Prometheus text
//! format (0.0.4) for `/metrics`.
//!
//! The values live in plain atomics (the job flow bumps them without locks); at each scrape they
//! are copied into the `prometheus` crate's metric families and encoded by its `TextEncoder`,
//! which escapes label values and help text: a category named by an external stage (quotes,
//! backslashes, newlines) cannot break the scrape.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use inpaint_job::JobStatus;
use prometheus::proto::{
    Bucket, Counter, Gauge, Histogram as HistogramProto, LabelPair, Metric, MetricFamily,
    MetricType,
};

use crate::gpu::{self, GpuMemory};

/// Upper bounds of the latency histograms, in seconds.
pub const BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

/// Upper bounds of the batch-size histogram, in images.
pub const BATCH_BUCKETS: [f64; 7] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0];

/// A cumulative histogram over `N` upper bounds: [`BUCKETS`] (seconds) unless told otherwise.
#[derive(Debug)]
pub struct Histogram<const N: usize = 14> {
    bounds: [f64; N],
    counts: [AtomicU64; N],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self::with_bounds(BUCKETS)
    }
}

impl<const N: usize> Histogram<N> {
    /// An empty histogram over `bounds` (ascending).
    pub fn with_bounds(bounds: [f64; N]) -> Self {
        Self {
            bounds,
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
            count: AtomicU64::new(0),
            sum_micros: AtomicU64::new(0),
        }
    }

    /// Records one observation (seconds, or the histogram's unit).
    pub fn observe(&self, value: f64) {
        for (bound, count) in self.bounds.iter().zip(&self.counts) {
            if value <= *bound {
                count.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add((value * 1e6) as u64, Ordering::Relaxed);
    }

    /// This histogram as one metric with `labels`.
    fn to_metric(&self, labels: &[(&str, &str)]) -> Metric {
        let buckets = self
            .bounds
            .iter()
            .zip(&self.counts)
            .map(|(bound, count)| {
                let mut b = Bucket::default();
                b.set_upper_bound(*bound);
                b.set_cumulative_count(count.load(Ordering::Relaxed));
                b
            })
            .collect();
        let mut h = HistogramProto::default();
        h.set_bucket(buckets);
        h.set_sample_count(self.count.load(Ordering::Relaxed));
        h.set_sample_sum(self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6);
        let mut m = Metric::from_label(label_pairs(labels));
        m.set_histogram(h);
        m
    }
}

/// The inference thread's batches: sizes, images made, time busy.
#[derive(Debug)]
pub struct BatchMetrics {
    /// Images per batch.
    pub images_per_batch: Histogram<7>,
    /// Images made.
    pub images: AtomicU64,
    /// Time inside the engine, in microseconds.
    pub busy_micros: AtomicU64,
}

impl Default for BatchMetrics {
    fn default() -> Self {
        Self {
            images_per_batch: Histogram::with_bounds(BATCH_BUCKETS),
            images: AtomicU64::new(0),
            busy_micros: AtomicU64::new(0),
        }
    }
}

fn label_pairs(labels: &[(&str, &str)]) -> Vec<LabelPair> {
    labels
        .iter()
        .map(|(name, value)| {
            let mut pair = LabelPair::default();
            pair.set_name((*name).to_owned());
            pair.set_value((*value).to_owned());
            pair
        })
        .collect()
}

fn family(name: &str, help: &str, kind: MetricType, metrics: Vec<Metric>) -> MetricFamily {
    let mut f = MetricFamily::default();
    f.set_name(name.to_owned());
    f.set_help(help.to_owned());
    f.set_field_type(kind);
    f.set_metric(metrics);
    f
}

fn counter(labels: &[(&str, &str)], value: u64) -> Metric {
    let mut c = Counter::default();
    c.set_value(value as f64);
    let mut m = Metric::from_label(label_pairs(labels));
    m.set_counter(c);
    m
}

/// Everything `/metrics` reports.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Jobs finished, by status.
    pub jobs: Mutex<BTreeMap<String, u64>>,
    /// Jobs being handled now.
    pub in_flight: AtomicI64,
    /// Transient failures sent through the delay queue.
    pub retries: AtomicU64,
    /// Jobs blocked by a plugin stage.
    pub blocks: AtomicU64,
    /// Plugin-chain audit entries (blocks and modifications such as prompt rewrites), by action
    /// and category: what OpenRAIL-M enforcement did, without any prompt text.
    pub plugin_actions: Mutex<BTreeMap<(String, String), u64>>,
    /// Wall time per delivery, from receipt to settlement.
    pub job_seconds: Histogram,
    /// Latency per stage (download, plugins, inference, upload).
    pub stages: Mutex<BTreeMap<String, std::sync::Arc<Histogram>>>,
    /// Time from the producer's timestamp to the worker picking the job up (retries included).
    pub queue_wait_seconds: Histogram,
    /// Cross-job batches of the inference thread.
    pub batches: BatchMetrics,
    /// GPU memory, sampled at each scrape; set when the engine runs on CUDA and NVML opens.
    pub gpu: std::sync::OnceLock<GpuMemory>,
}

impl Metrics {
    /// Counts a settled job.
    pub fn count_status(&self, status: JobStatus) {
        let name = serde_json::to_value(status)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_else(|| "unknown".into());
        let mut jobs = self.jobs.lock().unwrap_or_else(|p| p.into_inner());
        *jobs.entry(name).or_default() += 1;
    }

    /// Counts one plugin-chain audit entry (`action`: `blocked` or `modified`).
    pub fn count_plugin_action(&self, action: &str, category: &str) {
        let mut actions = self
            .plugin_actions
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        *actions
            .entry((action.to_owned(), category.to_owned()))
            .or_default() += 1;
    }

    /// Records a batch the inference thread ran.
    pub fn observe_batch(&self, stats: &crate::batching::BatchStats) {
        self.batches.images_per_batch.observe(stats.images as f64);
        self.batches
            .images
            .fetch_add(stats.images as u64, Ordering::Relaxed);
        self.batches
            .busy_micros
            .fetch_add(stats.busy.as_micros() as u64, Ordering::Relaxed);
    }

    /// Records a stage's latency.
    pub fn observe_stage(&self, stage: &str, seconds: f64) {
        let histogram = {
            let mut stages = self.stages.lock().unwrap_or_else(|p| p.into_inner());
            std::sync::Arc::clone(stages.entry(stage.to_owned()).or_default())
        };
        histogram.observe(seconds);
    }

    /// Every metric family, from the current values.
    pub fn families(&self) -> Vec<MetricFamily> {
        let jobs = self
            .jobs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(status, count)| counter(&[("status", status)], *count))
            .collect();
        let actions = self
            .plugin_actions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|((action, category), count)| {
                counter(&[("action", action), ("category", category)], *count)
            })
            .collect();
        let stages = self
            .stages
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(stage, histogram)| histogram.to_metric(&[("stage", stage)]))
            .collect();
        let mut in_flight = Gauge::default();
        in_flight.set_value(self.in_flight.load(Ordering::Relaxed) as f64);
        vec![
            family(
                "inpaint_jobs_total",
                "Jobs settled, by result status.",
                MetricType::COUNTER,
                jobs,
            ),
            family(
                "inpaint_jobs_in_flight",
                "Jobs being handled.",
                MetricType::GAUGE,
                vec![Metric::from_gauge(in_flight)],
            ),
            family(
                "inpaint_retries_total",
                "Transient failures retried.",
                MetricType::COUNTER,
                vec![counter(&[], self.retries.load(Ordering::Relaxed))],
            ),
            family(
                "inpaint_blocks_total",
                "Jobs blocked by a plugin stage.",
                MetricType::COUNTER,
                vec![counter(&[], self.blocks.load(Ordering::Relaxed))],
            ),
            family(
                "inpaint_plugin_actions_total",
                "Plugin-chain blocks and modifications, by category.",
                MetricType::COUNTER,
                actions,
            ),
            family(
                "inpaint_job_seconds",
                "Time from delivery to settlement.",
                MetricType::HISTOGRAM,
                vec![self.job_seconds.to_metric(&[])],
            ),
            family(
                "inpaint_queue_wait_seconds",
                "From the producer's timestamp (AMQP timestamp property or timestamp_in_ms \
                 header) to pick-up, retries included.",
                MetricType::HISTOGRAM,
                vec![self.queue_wait_seconds.to_metric(&[])],
            ),
            family(
                "inpaint_stage_seconds",
                "Latency per stage.",
                MetricType::HISTOGRAM,
                stages,
            ),
            family(
                "inpaint_batch_images",
                "Images per batch of the inference thread (cross-job batching).",
                MetricType::HISTOGRAM,
                vec![self.batches.images_per_batch.to_metric(&[])],
            ),
            family(
                "inpaint_images_total",
                "Images made by the engine; rate() is images per second.",
                MetricType::COUNTER,
                vec![counter(&[], self.batches.images.load(Ordering::Relaxed))],
            ),
            {
                let mut busy = Counter::default();
                busy.set_value(self.batches.busy_micros.load(Ordering::Relaxed) as f64 / 1e6);
                let mut metric = Metric::default();
                metric.set_counter(busy);
                family(
                    "inpaint_inference_busy_seconds_total",
                    "Time the inference thread spent in the engine; rate() is the busy \
                     fraction of the device.",
                    MetricType::COUNTER,
                    vec![metric],
                )
            },
        ]
        .into_iter()
        // The encoder refuses a family without metrics (no status counted yet, say).
        .filter(|f| !f.get_metric().is_empty())
        .collect()
    }

    /// The Prometheus text exposition (format 0.0.4).
    pub fn render(&self) -> String {
        let mut out = prometheus::TextEncoder::new()
            .encode_to_string(&self.families())
            .unwrap_or_else(|e| format!("# encoding the metrics failed: {e}\n"));
        if let Some(gpu) = self.gpu.get() {
            gpu::render(&gpu.sample(), &mut out);
        }
        out
    }
}

/// A strict reader of the Prometheus text format (0.0.4), for tests: every line is a `# HELP`,
/// `# TYPE` or other comment, blank, or a sample `name{label="value",...} number`, with label
/// values unescaped by the format's rules (`\\`, `\"`, `\n`; any other escape is an error).
/// (The `prometheus-parse` crate splits labels on `,` and `=` without unescaping, so it cannot
/// check escaping.)
#[cfg(test)]
pub(crate) mod exposition {
    use std::collections::BTreeMap;

    /// One sample: metric name, labels, value.
    pub type Sample = (String, BTreeMap<String, String>, f64);

    fn name(text: &str) -> (&str, &str) {
        let end = text
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
            .unwrap_or(text.len());
        text.split_at(end)
    }

    /// Parses a whole exposition; the error names the line.
    pub fn parse(text: &str) -> Result<Vec<Sample>, String> {
        let mut samples = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let fail = |why: &str| Err(format!("line {}: {why}: {line:?}", n + 1));
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (metric, mut rest) = name(line);
            if metric.is_empty() || metric.starts_with(|c: char| c.is_ascii_digit()) {
                return fail("no metric name");
            }
            let mut labels = BTreeMap::new();
            if let Some(after) = rest.strip_prefix('{') {
                rest = after;
                loop {
                    if let Some(after) = rest.strip_prefix('}') {
                        rest = after;
                        break;
                    }
                    let (label, after) = name(rest);
                    let Some(after) = after.strip_prefix("=\"") else {
                        return fail("expected label=\"");
                    };
                    let mut value = String::new();
                    let mut chars = after.char_indices();
                    let end = loop {
                        match chars.next() {
                            Some((i, '"')) => break i,
                            Some((_, '\\')) => match chars.next() {
                                Some((_, '\\')) => value.push('\\'),
                                Some((_, '"')) => value.push('"'),
                                Some((_, 'n')) => value.push('\n'),
                                _ => return fail("bad escape in a label value"),
                            },
                            Some((_, c)) => value.push(c),
                            None => return fail("unterminated label value"),
                        }
                    };
                    labels.insert(label.to_owned(), value);
                    rest = &after[end + 1..];
                    rest = rest.strip_prefix(',').unwrap_or(rest);
                }
            }
            let mut fields = rest.split_whitespace();
            let value = match fields.next() {
                Some("+Inf") => f64::INFINITY,
                Some("-Inf") => f64::NEG_INFINITY,
                Some(v) => match v.parse() {
                    Ok(v) => v,
                    Err(_) => return fail("value is not a number"),
                },
                None => return fail("no value"),
            };
            if fields.nth(1).is_some() {
                return fail("trailing text");
            }
            samples.push((metric.to_owned(), labels, value));
        }
        Ok(samples)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::default();
        m.count_status(JobStatus::Succeeded);
        m.count_status(JobStatus::Succeeded);
        m.observe_stage("upload", 0.02);
        m.count_plugin_action("modified", "violence_gore");
        m.count_plugin_action("modified", "violence_gore");
        let text = m.render();
        assert!(
            text.contains(
                "inpaint_plugin_actions_total{action=\"modified\",category=\"violence_gore\"} 2"
            ),
            "{text}"
        );
        assert!(
            text.contains("inpaint_jobs_total{status=\"succeeded\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("inpaint_stage_seconds_bucket{stage=\"upload\",le=\"0.025\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("inpaint_stage_seconds_bucket{stage=\"upload\",le=\"0.01\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("inpaint_stage_seconds_count{stage=\"upload\"} 1"),
            "{text}"
        );
    }

    #[test]
    fn batches_are_counted_by_size_images_and_busy_time() {
        let m = Metrics::default();
        for images in [1, 3, 8, 8] {
            m.observe_batch(&crate::batching::BatchStats {
                jobs: images,
                images,
                busy: std::time::Duration::from_millis(250),
            });
        }
        let samples = exposition::parse(&m.render()).expect("parses");
        let value = |name: &str, le: Option<&str>| {
            samples
                .iter()
                .find(|(n, labels, _)| n == name && labels.get("le").map(String::as_str) == le)
                .map(|(_, _, v)| *v)
                .unwrap_or_else(|| panic!("{name} {le:?} missing"))
        };
        assert_eq!(value("inpaint_batch_images_bucket", Some("1")), 1.0);
        assert_eq!(value("inpaint_batch_images_bucket", Some("4")), 2.0);
        assert_eq!(value("inpaint_batch_images_bucket", Some("8")), 4.0);
        assert_eq!(value("inpaint_batch_images_count", None), 4.0);
        assert_eq!(value("inpaint_batch_images_sum", None), 20.0);
        assert_eq!(value("inpaint_images_total", None), 20.0);
        assert_eq!(value("inpaint_inference_busy_seconds_total", None), 1.0);
    }

    /// Label values of every kind a stage may report, escaped so that a real parser reads them
    /// back verbatim and the other samples survive.
    #[test]
    fn label_values_are_escaped_for_a_real_parser() {
        let awkward = [
            "plain",
            "with \"quotes\"",
            "back\\slash",
            "new\nline",
            "all: \" \\ \n, = end\\",
            "unicode é ✓",
        ];
        let m = Metrics::default();
        for (i, category) in awkward.iter().enumerate() {
            for _ in 0..=i {
                m.count_plugin_action("blocked", category);
            }
            m.observe_stage(category, 0.02);
        }
        m.count_status(JobStatus::Failed);
        let text = m.render();
        let samples = exposition::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        for (i, category) in awkward.iter().enumerate() {
            let (_, labels, value) = samples
                .iter()
                .find(|(metric, labels, _)| {
                    metric == "inpaint_plugin_actions_total"
                        && labels.get("category").map(String::as_str) == Some(*category)
                })
                .unwrap_or_else(|| panic!("{category:?} not read back from:\n{text}"));
            assert_eq!(labels.get("action").map(String::as_str), Some("blocked"));
            assert_eq!(*value, (i + 1) as f64, "{category:?}");
            assert!(
                samples.iter().any(|(metric, labels, _)| {
                    metric == "inpaint_stage_seconds_count"
                        && labels.get("stage").map(String::as_str) == Some(*category)
                }),
                "stage {category:?}"
            );
        }
        // Every family survived the awkward values. And the reader is strict: the old renderer's
        // unescaped output fails it.
        assert!(exposition::parse("m{category=\"a\"b\"} 1").is_err());
        assert!(exposition::parse("m{category=\"new\nline\"} 1").is_err());
        // Every family survived the awkward values.
        for name in [
            "inpaint_jobs_total",
            "inpaint_jobs_in_flight",
            "inpaint_retries_total",
            "inpaint_blocks_total",
            "inpaint_job_seconds",
            "inpaint_queue_wait_seconds",
        ] {
            assert!(
                samples
                    .iter()
                    .any(|(metric, _, _)| *metric == name || *metric == format!("{name}_count")),
                "{name} missing:\n{text}"
            );
        }
    }
}
