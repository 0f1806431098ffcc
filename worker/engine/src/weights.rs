//! Loading safetensors weights by name, with every name and shape checked.
//!
//! Models ask a [`Weights`] scope for each tensor by its Hugging Face name and expected shape;
//! problems (missing names, wrong shapes) are collected rather than raised at the first one, and
//! [`WeightStore::finish`] reports all of them together with the names the file had but the
//! architecture did not use. A model therefore loads completely or fails with the full list.

use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap};
use std::fmt::Display;
use std::path::{Path, PathBuf};

use tch::{Device, Kind, Tensor};

use crate::EngineError;

/// Tensors read from one or more safetensors files, converted to one kind on one device.
#[derive(Debug)]
pub struct WeightStore {
    source: PathBuf,
    tensors: HashMap<String, Tensor>,
    used: RefCell<BTreeSet<String>>,
    problems: RefCell<Vec<String>>,
    kind: Kind,
    device: Device,
}

impl WeightStore {
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
        let tensors = Tensor::read_safetensors(path)
            .map_err(|e| EngineError::Model(format!("{}: {e}", path.display())))?;
        Ok(Self::from_tensors(
            path.to_path_buf(),
            tensors,
            kind,
            device,
        ))
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
            tensors: tensors.into_iter().collect(),
            used: RefCell::new(BTreeSet::new()),
            problems: RefCell::new(Vec::new()),
            kind,
            device,
        }
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
        self.store.tensors.contains_key(&self.full_name(name))
    }

    /// The tensor `name` of exactly `shape`, converted to the store's kind and device. A missing
    /// or mis-shaped tensor is recorded and a zero placeholder returned, so loading goes on to
    /// find every other problem; [`WeightStore::finish`] then fails.
    pub fn get(&self, name: &str, shape: &[i64]) -> Tensor {
        let full = self.full_name(name);
        let placeholder = || Tensor::zeros(shape, (self.store.kind, self.store.device));
        let Some(tensor) = self.store.tensors.get(&full) else {
            self.store
                .problems
                .borrow_mut()
                .push(format!("missing {full} {shape:?}"));
            return placeholder();
        };
        self.store.used.borrow_mut().insert(full.clone());
        if tensor.size() != shape {
            self.store.problems.borrow_mut().push(format!(
                "{full}: shape {:?} in the file, {shape:?} expected",
                tensor.size()
            ));
            return placeholder();
        }
        tensor.to_device(self.store.device).to_kind(self.store.kind)
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
    fn refuses_non_safetensors_files() {
        let err = WeightStore::open(Path::new("model.ckpt"), Kind::Float, Device::Cpu)
            .expect_err("pickle");
        assert!(err.to_string().contains("only .safetensors"), "{err}");
    }
}
