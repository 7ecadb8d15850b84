//! A synthetic classification set (Gaussian clusters), deterministic in
//! its seed: for examples, tests and benches that need data without
//! downloads. Plain `Vec`s, so that every worker can share one copy.

use rand_xoshiro::rand_core::{RngCore, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;
use tch::{Device, Kind, Tensor};

use crate::error::TrainError;

/// `len` points in `dim` dimensions around `classes` random centers.
///
/// ```
/// let data = troupe_train::data::SyntheticClassification::new(100, 4, 3, 7);
/// assert_eq!(data.len(), 100);
/// let (x, y) = data.batch(&[0, 5, 9], tch::Device::Cpu).unwrap();
/// assert_eq!(x.size(), [3, 4]);
/// assert_eq!(y.size(), [3]);
/// ```
#[derive(Clone, Debug)]
pub struct SyntheticClassification {
    features: Vec<f32>,
    labels: Vec<i64>,
    dim: usize,
    classes: usize,
}

fn normal(rng: &mut Xoshiro256PlusPlus) -> f64 {
    // Box-Muller; (0, 1] so that ln never sees 0.
    let u1 = ((rng.next_u64() >> 11) as f64 + 1.0) / (1u64 << 53) as f64;
    let u2 = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

impl SyntheticClassification {
    /// Generates the set from `seed`; the centers are spread so that a
    /// small MLP separates most points but not all (noise of 1.0 around
    /// centers drawn with a standard deviation of 1.5).
    pub fn new(len: usize, dim: usize, classes: usize, seed: u64) -> Self {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
        let classes = classes.max(1);
        let centers: Vec<f64> = (0..classes * dim).map(|_| 1.5 * normal(&mut rng)).collect();
        let mut features = Vec::with_capacity(len * dim);
        let mut labels = Vec::with_capacity(len);
        for _ in 0..len {
            let c = (rng.next_u64() % classes as u64) as usize;
            labels.push(c as i64);
            for d in 0..dim {
                features.push((centers[c * dim + d] + normal(&mut rng)) as f32);
            }
        }
        SyntheticClassification {
            features,
            labels,
            dim,
            classes,
        }
    }

    /// The number of points.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether it has no points.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// The number of features of a point.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// The number of classes.
    pub fn classes(&self) -> usize {
        self.classes
    }

    /// The points at `indices`: features `[n, dim]` (f32) and labels `[n]`
    /// (i64), on `device`.
    pub fn batch(&self, indices: &[usize], device: Device) -> Result<(Tensor, Tensor), TrainError> {
        let mut x = Vec::with_capacity(indices.len() * self.dim);
        let mut y = Vec::with_capacity(indices.len());
        for &i in indices {
            let row = self
                .features
                .get(i * self.dim..(i + 1) * self.dim)
                .ok_or_else(|| {
                    TrainError::Mismatch(format!(
                        "index {i} is past the set's {} points",
                        self.len()
                    ))
                })?;
            x.extend_from_slice(row);
            y.push(self.labels[i]);
        }
        let x = Tensor::from_slice(&x)
            .f_reshape([indices.len() as i64, self.dim as i64])?
            .f_to(device)?;
        let y = Tensor::from_slice(&y)
            .f_to_kind(Kind::Int64)?
            .f_to(device)?;
        Ok((x, y))
    }
}
