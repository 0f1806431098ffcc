//! [`Metrics`]: the worker's counters, gauges and histograms, rendered in the Prometheus text
//! format for `/metrics`. Hand-rolled: a handful of atomics and fixed buckets need no library.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use inpaint_job::JobStatus;

use crate::gpu::{self, GpuMemory};

/// Upper bounds of the latency histograms, in seconds.
pub const BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

/// A cumulative histogram with [`BUCKETS`].
#[derive(Debug, Default)]
pub struct Histogram {
    counts: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    /// Records one observation in seconds.
    pub fn observe(&self, seconds: f64) {
        for (bound, count) in BUCKETS.iter().zip(&self.counts) {
            if seconds <= *bound {
                count.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add((seconds * 1e6) as u64, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        for (bound, count) in BUCKETS.iter().zip(&self.counts) {
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {}",
                count.load(Ordering::Relaxed)
            );
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {count}");
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(out, "{name}_sum{braces} {sum}");
        let _ = writeln!(out, "{name}_count{braces} {count}");
    }
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

    /// Records a stage's latency.
    pub fn observe_stage(&self, stage: &str, seconds: f64) {
        let histogram = {
            let mut stages = self.stages.lock().unwrap_or_else(|p| p.into_inner());
            std::sync::Arc::clone(stages.entry(stage.to_owned()).or_default())
        };
        histogram.observe(seconds);
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        out.push_str("# HELP inpaint_jobs_total Jobs settled, by result status.\n# TYPE inpaint_jobs_total counter\n");
        for (status, count) in self.jobs.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            let _ = writeln!(out, "inpaint_jobs_total{{status=\"{status}\"}} {count}");
        }
        let _ = writeln!(
            out,
            "# HELP inpaint_jobs_in_flight Jobs being handled.\n# TYPE inpaint_jobs_in_flight gauge\ninpaint_jobs_in_flight {}",
            self.in_flight.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP inpaint_retries_total Transient failures retried.\n# TYPE inpaint_retries_total counter\ninpaint_retries_total {}",
            self.retries.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP inpaint_blocks_total Jobs blocked by a plugin stage.\n# TYPE inpaint_blocks_total counter\ninpaint_blocks_total {}",
            self.blocks.load(Ordering::Relaxed)
        );
        out.push_str("# HELP inpaint_plugin_actions_total Plugin-chain blocks and modifications, by category.\n# TYPE inpaint_plugin_actions_total counter\n");
        for ((action, category), count) in self
            .plugin_actions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            let _ = writeln!(
                out,
                "inpaint_plugin_actions_total{{action=\"{action}\",category=\"{category}\"}} {count}"
            );
        }
        out.push_str("# HELP inpaint_job_seconds Time from delivery to settlement.\n# TYPE inpaint_job_seconds histogram\n");
        self.job_seconds.render(&mut out, "inpaint_job_seconds", "");
        out.push_str("# HELP inpaint_queue_wait_seconds From the producer's timestamp (AMQP timestamp property or timestamp_in_ms header) to pick-up, retries included.\n# TYPE inpaint_queue_wait_seconds histogram\n");
        self.queue_wait_seconds
            .render(&mut out, "inpaint_queue_wait_seconds", "");
        out.push_str("# HELP inpaint_stage_seconds Latency per stage.\n# TYPE inpaint_stage_seconds histogram\n");
        for (stage, histogram) in self.stages.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            histogram.render(
                &mut out,
                "inpaint_stage_seconds",
                &format!("stage=\"{stage}\""),
            );
        }
        if let Some(gpu) = self.gpu.get() {
            gpu::render(&gpu.sample(), &mut out);
        }
        out
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
}
