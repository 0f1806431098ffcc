//! [`Parts`]: the running pieces a worker is made of (object store, inference thread, plugin
//! chain, metrics), and [`WorkerError`], why a worker could not start or run.

use std::sync::Arc;

use inpaint_job::ModelInfo;
use inpaint_plugin_api::Chain;
use inpaint_queue::QueueError;

use crate::gpu::GpuMemory;
use crate::inference::{Inference, InferenceThread, PassThrough, TchEngine};
use crate::metrics::Metrics;
use crate::settings::{EngineBackend, Settings};
use crate::store::ObjectStorage;

/// Why the worker could not run.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The configuration is unusable.
    #[error(transparent)]
    Settings(#[from] crate::settings::SettingsError),
    /// The object store could not be built.
    #[error(transparent)]
    Storage(#[from] inpaint_storage::StorageError),
    /// The engine could not be loaded.
    #[error("engine: {0}")]
    Engine(#[from] crate::inference::InferenceError),
    /// The plugin chain could not be built.
    #[error("plugin chain: {0}")]
    Chain(#[from] inpaint_plugin_api::StageError),
    /// The broker failed.
    #[error(transparent)]
    Queue(#[from] QueueError),
    /// The HTTP endpoint could not start.
    #[error("http endpoint: {0}")]
    Http(#[from] std::io::Error),
}

/// The running pieces a worker is made of. [`Parts::build`] makes them from settings; tests
/// and benchmarks make their own (a pass-through engine, a fault-injecting store).
#[derive(Clone)]
pub struct Parts {
    /// Where inputs come from and outputs go.
    pub storage: Arc<dyn ObjectStorage>,
    /// The inference thread.
    pub inference: InferenceThread,
    /// The plugin chain.
    pub chain: Arc<Chain>,
    /// Counters and histograms.
    pub metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Parts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Parts")
            .field("model", self.inference.model())
            .field("chain", &self.chain)
            .finish_non_exhaustive()
    }
}

impl Parts {
    /// Builds the store, loads the engine on its thread and builds the chain.
    pub async fn build(settings: &Settings) -> Result<Self, WorkerError> {
        let storage = Arc::new(settings.storage.build()?);
        let metrics = Arc::new(Metrics::default());
        let on_cuda = engine_on_cuda(settings);
        if on_cuda {
            match GpuMemory::open() {
                Ok(gpu) => {
                    let _ = metrics.gpu.set(gpu);
                }
                Err(reason) => {
                    tracing::warn!(%reason, "NVML unavailable: /metrics reports no GPU memory")
                }
            }
        }
        let engine = settings.engine.clone();
        let mut batching = engine.batching();
        let observed = Arc::clone(&metrics);
        batching.observe = Some(Arc::new(move |stats| observed.observe_batch(stats)));
        if on_cuda && engine.max_batch > 1 {
            // Asked once the model is loaded: what the weights left free bounds a batch.
            let device = engine.device;
            batching.free_memory = Some(Arc::new(move || free_device_memory(&device)));
        }
        let inference = match engine.backend {
            EngineBackend::Tch => {
                InferenceThread::spawn_batching(
                    move || TchEngine::load(&engine).map(|e| Box::new(e) as Box<dyn Inference>),
                    batching,
                )
                .await?
            }
            EngineBackend::PassThrough => {
                InferenceThread::spawn_batching(
                    || Ok(Box::new(PassThrough::default()) as Box<_>),
                    batching,
                )
                .await?
            }
        };
        let chain = Arc::new(inpaint_stages::build_chain(&settings.chain.stages)?);
        Ok(Self {
            storage,
            inference,
            chain,
            metrics,
        })
    }
}

/// Free memory of the CUDA device the engine runs on, by NVML. NVML counts devices in PCI
/// order and ignores `CUDA_VISIBLE_DEVICES`; with exactly one visible device that is the one.
fn free_device_memory(device: &inpaint_engine::DeviceSpec) -> Option<u64> {
    let gpu = GpuMemory::open().ok()?;
    let devices = gpu.sample();
    let index = match (devices.len(), device) {
        (1, _) => devices.first()?.index,
        (_, inpaint_engine::DeviceSpec::Cuda(n)) => u32::try_from(*n).ok()?,
        _ => 0,
    };
    devices
        .iter()
        .find(|d| d.index == index)
        .map(|d| d.total.saturating_sub(d.used))
}

/// Whether the libtorch engine runs on a GPU here (what `auto` resolves to included).
fn engine_on_cuda(settings: &Settings) -> bool {
    settings.engine.backend == EngineBackend::Tch
        && settings
            .engine
            .device
            .resolve()
            .is_ok_and(|device| device.is_cuda())
}

/// The model a pass-through worker reports (for tests comparing results).
pub fn pass_through_model() -> ModelInfo {
    Inference::model(&PassThrough::default())
}
