//! Loading safetensors weights by name, with every name and shape checked.
//!
//! Models ask a [`Weights`] scope for each tensor by its Hugging Face name and expected shape;
//! problems (missing names, wrong shapes) are collected rather than raised at the first one, and
//! [`WeightStore::finish`] reports all of them together with the names the file had but the
//! architecture did not use. A model therefore loads completely or fails with the full list.
//!
//! A file is not read whole: [`WeightStore::open`] reads only the safetensors header (names,
//! dtypes, shapes, offsets), and each tensor's bytes are read when a model asks for it, straight
//! into that tensor, then converted. Peak host memory while loading is therefore the loaded
//! model plus one tensor, not the file plus the model (`examples/load_rss.rs` measures it).

use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap};
use std::fmt::Display;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use tch::{Device, Kind, Tensor};

use crate::EngineError;

/// The same values as `tensor` (an NCHW tensor) in the channels-last (NHWC) memory layout, with
/// the logical shape unchanged. tch has no `memory_format` argument; a permute to NHWC, a
/// contiguous copy and the permute back give exactly the strides libtorch's
/// `MemoryFormat::ChannelsLast` uses, which its convolutions recognise.
pub fn to_channels_last(tensor: &Tensor) -> Tensor {
    tensor
        .permute([0, 2, 3, 1])
        .contiguous()
        .permute([0, 3, 1, 2])
}

/// Whether `tensor` (4-D) is laid out channels-last: channel stride 1, then width, height, batch.
pub fn is_channels_last(tensor: &Tensor) -> bool {
    let size = tensor.size();
    let stride = tensor.stride();
    size.len() == 4
        && stride[1] == 1
        && stride[3] == size[1]
        && stride[2] == size[1] * size[3]
        && stride[0] == size[1] * size[2] * size[3]
}

/// Tensors read from one or more safetensors files, converted to one kind on one device.
#[derive(Debug)]
pub struct WeightStore {
    source: PathBuf,
    tensors: HashMap<String, Stored>,
    /// The open file that [`Stored::InFile`] entries are read from.
    file: Option<RefCell<std::fs::File>>,
    used: RefCell<BTreeSet<String>>,
    problems: RefCell<Vec<String>>,
    kind: Kind,
    device: Device,
    /// A store without a file that answers every name with random numbers of the asked shape:
    /// full-size architectures for benchmarks, with nothing to download.
    random: bool,
    /// Give 4-D tensors (convolution kernels) the channels-last memory layout: see
    /// [`WeightStore::with_channels_last`].
    channels_last: bool,
}

impl WeightStore {
    /// A store that gives every tensor asked for, of the asked shape, random values (normal,
    /// standard deviation 0.02): for measuring speed and memory of an architecture whose
    /// weights are not at hand. Its images are noise.
    pub fn random(source: PathBuf, kind: Kind, device: Device) -> Self {
        Self {
            source,
            tensors: HashMap::new(),
            file: None,
            used: RefCell::new(BTreeSet::new()),
            problems: RefCell::new(Vec::new()),
            kind,
            device,
            random: true,
            channels_last: false,
        }
    }

    /// Reads `path` (a `.safetensors` file). Pickle-based formats are never read here.
    pub fn open(path: &Path, kind: Kind, device: Device) -> Result<Self, EngineError> {
        if path.extension().and_then(|e| e.to_str()) != Some("safetensors") {
            return Err(EngineError::Model(format!(
                "{}: only .safetensors weights are loaded",
                path.display()
            )));
        }
        if !path.is_file() {
            return Err(EngineError::Model(format!(
                "{}: weights file missing",
                path.display()
            )));
        }
        let bad = |message: String| EngineError::Model(format!("{}: {message}", path.display()));
        let mut file = std::fs::File::open(path).map_err(|e| bad(e.to_string()))?;
        let file_len = file.metadata().map_err(|e| bad(e.to_string()))?.len();
        let mut len_bytes = [0u8; 8];
        file.read_exact(&mut len_bytes)
            .map_err(|e| bad(format!("safetensors header length: {e}")))?;
        let header_len = u64::from_le_bytes(len_bytes);
        if header_len > file_len.saturating_sub(8) || header_len > 100 << 20 {
            return Err(bad(format!(
                "safetensors header length {header_len} does not fit the file ({file_len} bytes)"
            )));
        }
        let mut header = vec![0u8; header_len as usize];
        file.read_exact(&mut header)
            .map_err(|e| bad(format!("safetensors header: {e}")))?;
        let header: HashMap<String, serde_json::Value> =
            serde_json::from_slice(&header).map_err(|e| bad(format!("safetensors header: {e}")))?;
        let data_start = 8 + header_len;
        let mut tensors = HashMap::with_capacity(header.len());
        for (name, entry) in header {
            if name == "__metadata__" {
                continue;
            }
            let stored = FileEntry::parse(&entry, data_start, file_len)
                .map_err(|message| bad(format!("tensor {name}: {message}")))?;
            tensors.insert(name, Stored::InFile(stored));
        }
        Ok(Self {
            source: path.to_path_buf(),
            tensors,
            file: Some(RefCell::new(file)),
            used: RefCell::new(BTreeSet::new()),
            problems: RefCell::new(Vec::new()),
            kind,
            device,
            random: false,
            channels_last: false,
        })
    }

    /// The tensor `name` as stored (read from the file now when it is there).
    fn materialize(&self, name: &str, entry: &Stored) -> Result<Tensor, String> {
        match entry {
            Stored::Memory(t) => Ok(t.shallow_clone()),
            Stored::InFile(e) => {
                let file = self.file.as_ref().ok_or("no file")?;
                let mut file = file.borrow_mut();
                let mut bytes = vec![0u8; (e.end - e.begin) as usize];
                file.seek(SeekFrom::Start(e.begin))
                    .and_then(|_| file.read_exact(&mut bytes))
                    .map_err(|err| format!("{name}: reading {} bytes: {err}", bytes.len()))?;
                Tensor::f_from_data_size(&bytes, &e.shape, e.kind)
                    .map_err(|err| format!("{name}: {err}"))
            }
        }
    }

    /// A store over tensors already in memory (from a single-file checkpoint, say).
    pub fn from_tensors(
        source: PathBuf,
        tensors: impl IntoIterator<Item = (String, Tensor)>,
        kind: Kind,
        device: Device,
    ) -> Self {
        Self {
            source,
            tensors: tensors
                .into_iter()
                .map(|(name, t)| (name, Stored::Memory(t)))
                .collect(),
            file: None,
            used: RefCell::new(BTreeSet::new()),
            problems: RefCell::new(Vec::new()),
            kind,
            device,
            random: false,
            channels_last: false,
        }
    }

    /// Gives every 4-D tensor (convolution kernels) the channels-last memory layout. On CUDA,
    /// cuDNN then runs the convolutions in NHWC, which tensor cores prefer; values are
    /// unchanged, only their order in memory (results may differ in the last bits, because
    /// another convolution algorithm runs).
    pub fn with_channels_last(mut self, on: bool) -> Self {
        self.channels_last = on;
        self
    }

    /// The root scope: names are looked up as given.
    pub fn root(&self) -> Weights<'_> {
        Weights {
            store: self,
            prefix: String::new(),
        }
    }

    /// Ends loading: an error listing every missing or mis-shaped tensor, and every tensor of the
    /// file that the architecture did not use (names in `ignorable` excepted: buffers such as
    /// CLIP's `position_ids` that some exports carry).
    pub fn finish(self, ignorable: &[&str]) -> Result<(), EngineError> {
        let mut problems = self.problems.into_inner();
        let used = self.used.into_inner();
        let mut unused: Vec<&String> = self
            .tensors
            .keys()
            .filter(|name| !used.contains(*name) && !ignorable.contains(&name.as_str()))
            .collect();
        unused.sort();
        if !unused.is_empty() {
            let shown: Vec<&str> = unused.iter().take(10).map(|s| s.as_str()).collect();
            problems.push(format!(
                "{} tensor(s) in the file that this architecture does not use (the config may \
                 not match the weights): {}{}",
                unused.len(),
                shown.join(", "),
                if unused.len() > 10 { ", ..." } else { "" }
            ));
        }
        if problems.is_empty() {
            return Ok(());
        }
        let total = problems.len();
        let mut listed: Vec<String> = problems.into_iter().take(20).collect();
        if total > 20 {
            listed.push(format!("... and {} more", total - 20));
        }
        Err(EngineError::Model(format!(
            "{}: weights do not match the configuration:\n  {}",
            self.source.display(),
            listed.join("\n  ")
        )))
    }
}

/// A tensor of a store: in memory, or where it lies in the open file.
#[derive(Debug)]
enum Stored {
    Memory(Tensor),
    InFile(FileEntry),
}

impl Stored {
    fn shape(&self) -> Vec<i64> {
        match self {
            Self::Memory(t) => t.size(),
            Self::InFile(e) => e.shape.clone(),
        }
    }
}

/// One safetensors header entry: dtype, shape and absolute byte range in the file.
#[derive(Debug)]
struct FileEntry {
    kind: Kind,
    shape: Vec<i64>,
    begin: u64,
    end: u64,
}

impl FileEntry {
    fn parse(entry: &serde_json::Value, data_start: u64, file_len: u64) -> Result<Self, String> {
        let dtype = entry.get("dtype").and_then(|d| d.as_str()).unwrap_or("?");
        let kind = match dtype {
            "F32" => Kind::Float,
            "F16" => Kind::Half,
            "BF16" => Kind::BFloat16,
            "F64" => Kind::Double,
            "I64" => Kind::Int64,
            "I32" => Kind::Int,
            "I16" => Kind::Int16,
            "I8" => Kind::Int8,
            "U8" => Kind::Uint8,
            "BOOL" => Kind::Bool,
            other => return Err(format!("unsupported dtype {other}")),
        };
        let shape: Vec<i64> = entry
            .get("shape")
            .and_then(|s| serde_json::from_value(s.clone()).ok())
            .ok_or("no shape")?;
        let offsets: Vec<u64> = entry
            .get("data_offsets")
            .and_then(|s| serde_json::from_value(s.clone()).ok())
            .ok_or("no data_offsets")?;
        let [begin, end] = offsets[..] else {
            return Err(format!("data_offsets {offsets:?}"));
        };
        let numel: i64 = shape.iter().product();
        let expected =
            u64::try_from(numel).map_err(|_| "negative shape")? * kind.elt_size_in_bytes() as u64;
        if end < begin || end - begin != expected || data_start + end > file_len {
            return Err(format!(
                "data_offsets {begin}..{end} do not hold {shape:?} {dtype} within the file"
            ));
        }
        Ok(Self {
            kind,
            shape,
            begin: data_start + begin,
            end: data_start + end,
        })
    }
}

/// A name scope inside a [`WeightStore`] (`down_blocks.0.resnets.1` and so on).
#[derive(Clone, Debug)]
pub struct Weights<'a> {
    store: &'a WeightStore,
    prefix: String,
}

impl<'a> Weights<'a> {
    /// The scope `prefix.name`.
    pub fn sub(&self, name: impl Display) -> Weights<'a> {
        let prefix = if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.prefix)
        };
        Weights {
            store: self.store,
            prefix,
        }
    }

    fn full_name(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_owned()
        } else {
            format!("{}.{name}", self.prefix)
        }
    }

    /// Whether the file has `name` in this scope.
    pub fn contains(&self, name: &str) -> bool {
        self.store.random || self.store.tensors.contains_key(&self.full_name(name))
    }

    /// The tensor `name` of exactly `shape`, converted to the store's kind, device and layout. A missing
    /// or mis-shaped tensor is recorded and a zero placeholder returned, so loading goes on to
    /// find every other problem; [`WeightStore::finish`] then fails.
    pub fn get(&self, name: &str, shape: &[i64]) -> Tensor {
        let tensor = self.get_dense(name, shape);
        if self.store.channels_last && tensor.dim() == 4 {
            to_channels_last(&tensor)
        } else {
            tensor
        }
    }

    fn get_dense(&self, name: &str, shape: &[i64]) -> Tensor {
        let full = self.full_name(name);
        if self.store.random {
            return (Tensor::randn(shape, (Kind::Float, self.store.device)) * 0.02)
                .to_kind(self.store.kind);
        }
        let placeholder = || Tensor::zeros(shape, (self.store.kind, self.store.device));
        let Some(entry) = self.store.tensors.get(&full) else {
            self.store
                .problems
                .borrow_mut()
                .push(format!("missing {full} {shape:?}"));
            return placeholder();
        };
        self.store.used.borrow_mut().insert(full.clone());
        if entry.shape() != shape {
            self.store.problems.borrow_mut().push(format!(
                "{full}: shape {:?} in the file, {shape:?} expected",
                entry.shape()
            ));
            return placeholder();
        }
        match self.store.materialize(&full, entry) {
            Ok(tensor) => tensor.to_device(self.store.device).to_kind(self.store.kind),
            Err(message) => {
                self.store.problems.borrow_mut().push(message);
                placeholder()
            }
        }
    }

    /// Like [`Weights::get`] for tensors that an architecture may or may not have.
    pub fn get_optional(&self, name: &str, shape: &[i64]) -> Option<Tensor> {
        self.contains(name).then(|| self.get(name, shape))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(tensors: Vec<(&str, Tensor)>) -> WeightStore {
        WeightStore::from_tensors(
            PathBuf::from("test.safetensors"),
            tensors.into_iter().map(|(n, t)| (n.to_owned(), t)),
            Kind::Float,
            Device::Cpu,
        )
    }

    #[test]
    fn channels_last_changes_the_layout_of_4d_tensors_only_never_the_values() {
        // Shapes generated over batch, channels and spatial sizes, incl. 1x1 kernels and one
        // channel (where both layouts coincide in memory).
        for (o, i, h, w) in [
            (1, 1, 1, 1),
            (4, 3, 3, 3),
            (8, 1, 3, 3),
            (2, 16, 1, 1),
            (3, 5, 2, 7),
        ] {
            let kernel = Tensor::randn([o, i, h, w], (Kind::Float, Device::Cpu));
            let bias = Tensor::randn([o], (Kind::Float, Device::Cpu));
            let linear = Tensor::randn([o, i], (Kind::Float, Device::Cpu));
            for on in [false, true] {
                let s = store(vec![
                    ("conv.weight", kernel.copy()),
                    ("conv.bias", bias.copy()),
                    ("proj.weight", linear.copy()),
                ])
                .with_channels_last(on);
                let root = s.root();
                let got = root.get("conv.weight", &[o, i, h, w]);
                assert!(got.equal(&kernel), "values of {o}x{i}x{h}x{w}");
                assert_eq!(got.size(), kernel.size());
                // A tensor with more than one channel and pixel has exactly one layout.
                if i > 1 && h * w > 1 {
                    assert_eq!(is_channels_last(&got), on, "{o}x{i}x{h}x{w} layout");
                    assert_eq!(got.is_contiguous(), !on);
                }
                let b = root.get("conv.bias", &[o]);
                assert!(b.equal(&bias) && b.is_contiguous());
                let l = root.get("proj.weight", &[o, i]);
                assert!(l.equal(&linear) && l.is_contiguous());
                s.finish(&[]).expect("all used");
            }
        }
        // A convolution gives the same numbers from either layout of its kernel.
        let x = Tensor::randn([1, 4, 8, 8], (Kind::Float, Device::Cpu));
        let k = Tensor::randn([6, 4, 3, 3], (Kind::Float, Device::Cpu));
        let dense = x.conv2d(&k, None::<Tensor>, [1, 1], [1, 1], [1, 1], 1);
        let nhwc = x.conv2d(
            &to_channels_last(&k),
            None::<Tensor>,
            [1, 1],
            [1, 1],
            [1, 1],
            1,
        );
        let diff = f64::try_from((dense - nhwc).abs().max()).expect("scalar");
        assert!(diff < 1e-4, "conv differs by {diff}");
    }

    #[test]
    fn loads_by_scoped_name_and_converts_kind() {
        let s = store(vec![(
            "a.b.weight",
            Tensor::ones([2, 3], (Kind::Half, Device::Cpu)),
        )]);
        let w = s.root().sub("a").sub("b").get("weight", &[2, 3]);
        assert_eq!(w.kind(), Kind::Float);
        assert_eq!(w.sum(Kind::Float).double_value(&[]), 6.0);
        s.finish(&[]).expect("complete");
    }

    #[test]
    fn reports_every_missing_mismatched_and_unused_tensor() {
        let s = store(vec![
            (
                "conv.weight",
                Tensor::zeros([4, 3, 3, 3], (Kind::Float, Device::Cpu)),
            ),
            (
                "extra.weight",
                Tensor::zeros([1], (Kind::Float, Device::Cpu)),
            ),
            (
                "position_ids",
                Tensor::zeros([1], (Kind::Float, Device::Cpu)),
            ),
        ]);
        let root = s.root();
        let _ = root.get("conv.weight", &[8, 3, 3, 3]);
        let _ = root.get("conv.bias", &[8]);
        let err = s
            .finish(&["position_ids"])
            .expect_err("problems")
            .to_string();
        assert!(
            err.contains("conv.weight: shape [4, 3, 3, 3] in the file, [8, 3, 3, 3]"),
            "{err}"
        );
        assert!(err.contains("missing conv.bias [8]"), "{err}");
        assert!(err.contains("extra.weight"), "{err}");
        assert!(!err.contains("position_ids"), "{err}");
    }

    #[test]
    fn file_tensors_are_read_on_demand_and_a_truncated_file_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("w.safetensors");
        let a = Tensor::arange(6, (Kind::Float, Device::Cpu)).reshape([2, 3]);
        let b = Tensor::ones([4], (Kind::Half, Device::Cpu));
        Tensor::write_safetensors(&[("a", &a), ("b", &b)], &path).expect("write");
        let store = WeightStore::open(&path, Kind::Double, Device::Cpu).expect("open");
        let got = store.root().get("a", &[2, 3]);
        assert_eq!(got.kind(), Kind::Double);
        assert!(got.to_kind(Kind::Float).equal(&a));
        let err = store.finish(&[]).expect_err("b unused").to_string();
        assert!(err.contains("1 tensor(s)") && err.contains('b'), "{err}");

        let bytes = std::fs::read(&path).expect("read");
        std::fs::write(&path, &bytes[..bytes.len() - 4]).expect("truncate");
        let err = WeightStore::open(&path, Kind::Float, Device::Cpu)
            .expect_err("truncated")
            .to_string();
        assert!(
            err.contains("data_offsets") && err.contains("w.safetensors"),
            "{err}"
        );
    }

    #[test]
    fn refuses_non_safetensors_files() {
        let err = WeightStore::open(Path::new("model.ckpt"), Kind::Float, Device::Cpu)
            .expect_err("pickle");
        assert!(err.to_string().contains("only .safetensors"), "{err}");
    }
}
