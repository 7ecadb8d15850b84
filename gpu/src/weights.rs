//! A model's weights as one object: from a `VarStore` into the store, and
//! from the store into other actors' `VarStore`s.

use serde::{Deserialize, Serialize};
use tch::nn::VarStore;
use tch::Device;
use troupe_core::GetSize;

use crate::{GpuError, TensorObject};

/// A snapshot of a model's variables, by name, on the CPU: what a learner
/// puts once and inference actors load (weight broadcast).
///
/// The snapshot is the one copy (the learner goes on training in place);
/// putting it moves it into the store; every reader shares it; each
/// `load_into` copies it into that model's own variables.
///
/// ```
/// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let rt = troupe_core::init(troupe_core::Config::default()).await?;
/// use tch::nn;
/// use troupe_gpu::Weights;
/// let learner = nn::VarStore::new(tch::Device::Cpu);
/// let _net = nn::linear(learner.root() / "fc", 4, 2, Default::default());
/// let weights = rt.put(Weights::snapshot(&learner)?).await?;
///
/// let mut replica = nn::VarStore::new(tch::Device::Cpu);
/// let _copy = nn::linear(replica.root() / "fc", 4, 2, Default::default());
/// rt.get(&weights).await?.load_into(&mut replica)?;
/// # rt.shutdown().await?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Weights {
    /// Sorted by name.
    variables: Vec<(String, TensorObject)>,
}

impl Weights {
    /// Copies every variable of `vs` to the CPU, detached.
    pub fn snapshot(vs: &VarStore) -> Result<Self, GpuError> {
        let mut variables: Vec<(String, TensorObject)> = vs
            .variables()
            .into_iter()
            .map(|(name, var)| {
                let var = var.detach();
                // to_device is a no-op on the same device: copy explicitly.
                let copy = match var.device() {
                    Device::Cpu => {
                        let mut copy = var.f_empty_like()?;
                        copy.f_copy_(&var)?;
                        copy
                    }
                    _ => var.f_to_device(Device::Cpu)?,
                };
                Ok((name, TensorObject::from(copy)))
            })
            .collect::<Result<_, tch::TchError>>()?;
        variables.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(Weights { variables })
    }

    /// Copies the weights into the same-named variables of `vs` (onto
    /// their device). Every name, shape and dtype is checked before
    /// anything is copied, so a mismatch changes nothing.
    pub fn load_into(&self, vs: &mut VarStore) -> Result<(), GpuError> {
        let mut targets = vs.variables();
        if targets.len() != self.variables.len() {
            return Err(GpuError::WeightsMismatch(format!(
                "{} variables in the weights, {} in the model",
                self.variables.len(),
                targets.len()
            )));
        }
        for (name, source) in &self.variables {
            let target = targets.get(name).ok_or_else(|| {
                GpuError::WeightsMismatch(format!("the model has no variable {name:?}"))
            })?;
            if target.size() != source.size() || target.kind() != source.kind() {
                return Err(GpuError::WeightsMismatch(format!(
                    "{name:?} is {:?} {:?} in the weights but {:?} {:?} in the model",
                    source.kind(),
                    source.size(),
                    target.kind(),
                    target.size()
                )));
            }
        }
        tch::no_grad(|| {
            for (name, source) in &self.variables {
                if let Some(target) = targets.get_mut(name) {
                    target.f_copy_(&source.view())?;
                }
            }
            Ok::<(), tch::TchError>(())
        })?;
        Ok(())
    }

    /// The variables' names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.variables.iter().map(|(name, _)| name.as_str())
    }

    /// The tensor of one variable.
    pub fn get(&self, name: &str) -> Option<&TensorObject> {
        self.variables
            .binary_search_by(|(n, _)| n.as_str().cmp(name))
            .ok()
            .map(|i| &self.variables[i].1)
    }

    /// How many numbers the model has.
    pub fn num_parameters(&self) -> usize {
        self.variables.iter().map(|(_, t)| t.numel()).sum()
    }

    /// How many bytes the weights take.
    pub fn nbytes(&self) -> usize {
        self.variables.iter().map(|(_, t)| t.nbytes()).sum()
    }
}

impl GetSize for Weights {
    fn get_heap_size_with_tracker<T: troupe_core::GetSizeTracker>(&self, tracker: T) -> (usize, T) {
        let names: usize = self.variables.iter().map(|(n, _)| n.capacity()).sum();
        (names + self.nbytes(), tracker)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::nn::{self, Module};
    use tch::{Kind, Tensor};

    fn model(vs: &VarStore, hidden: i64) -> nn::Sequential {
        let root = vs.root();
        nn::seq()
            .add(nn::linear(&root / "l1", 3, hidden, Default::default()))
            .add_fn(|x| x.relu())
            .add(nn::linear(&root / "l2", hidden, 2, Default::default()))
    }

    #[test]
    fn loaded_weights_give_identical_outputs() {
        let learner = VarStore::new(Device::Cpu);
        let net = model(&learner, 8);
        let weights = Weights::snapshot(&learner).unwrap();
        assert_eq!(weights.num_parameters(), 3 * 8 + 8 + 8 * 2 + 2);
        assert_eq!(
            weights.names().collect::<Vec<_>>(),
            ["l1.bias", "l1.weight", "l2.bias", "l2.weight"]
        );

        // Through the serialized form too (spilling, and later the network).
        let weights: Weights =
            postcard::from_bytes(&postcard::to_stdvec(&weights).unwrap()).unwrap();
        let mut replica = VarStore::new(Device::Cpu);
        let copy = model(&replica, 8);
        weights.load_into(&mut replica).unwrap();
        let x = Tensor::randn([5, 3], (Kind::Float, Device::Cpu));
        assert!(net.forward(&x).equal(&copy.forward(&x)));
    }

    #[test]
    fn the_snapshot_does_not_follow_later_training() {
        let learner = VarStore::new(Device::Cpu);
        let _net = model(&learner, 4);
        let weights = Weights::snapshot(&learner).unwrap();
        let before = weights.get("l1.bias").unwrap().deep_copy();
        tch::no_grad(|| {
            for (_, mut v) in learner.variables() {
                let _ = v.fill_(42.0);
            }
        });
        assert!(weights.get("l1.bias").unwrap().view().equal(&before));
    }

    #[test]
    fn mismatched_weights_change_nothing() {
        let learner = VarStore::new(Device::Cpu);
        let _net = model(&learner, 8);
        let weights = Weights::snapshot(&learner).unwrap();
        let mut other = VarStore::new(Device::Cpu);
        let _other = model(&other, 5);
        let before = Weights::snapshot(&other).unwrap();
        let err = weights.load_into(&mut other).unwrap_err();
        assert!(matches!(err, GpuError::WeightsMismatch(_)), "{err}");
        let after = Weights::snapshot(&other).unwrap();
        for name in before.names() {
            assert!(before
                .get(name)
                .unwrap()
                .view()
                .equal(&after.get(name).unwrap().view()));
        }
        let mut empty = VarStore::new(Device::Cpu);
        assert!(weights.load_into(&mut empty).is_err());
    }
}
