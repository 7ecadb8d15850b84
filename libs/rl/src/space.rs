//! Observation and action spaces (Gymnasium's `Box` and `Discrete`), and
//! the actions that live in them.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::env::EnvError;

/// The set of valid observations or actions of an environment.
///
/// Only flat (one-dimensional) boxes: observations are `f32` vectors and a
/// policy's input is their concatenation, so a shape beyond the length adds
/// nothing here.
///
/// ```
/// use troupe_rl::{Action, Space};
/// let moves = Space::discrete(2);
/// assert!(moves.check(Action::Discrete(1)).is_ok());
/// assert!(moves.check(Action::Discrete(2)).is_err());
/// let torque = Space::bounded(vec![-2.0], vec![2.0]).unwrap();
/// assert_eq!(torque.flat_len(), 1);
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Space {
    /// `n` actions, numbered `0..n`. As an observation space, observations
    /// are written one-hot (`n` floats).
    Discrete {
        /// How many.
        n: u64,
    },
    /// Vectors of `low.len()` floats with `low[i] <= x[i] <= high[i]`
    /// (bounds may be infinite).
    Box {
        /// Lower bounds.
        low: Vec<f32>,
        /// Upper bounds.
        high: Vec<f32>,
    },
}

impl Space {
    /// `Discrete(n)`.
    pub fn discrete(n: u64) -> Space {
        Space::Discrete { n }
    }

    /// A box with these bounds; fails if their lengths differ, a bound is
    /// NaN, or a low bound exceeds its high bound.
    pub fn bounded(low: Vec<f32>, high: Vec<f32>) -> Result<Space, EnvError> {
        let space = Space::Box { low, high };
        space.validate()?;
        Ok(space)
    }

    /// A box of `len` unbounded floats.
    pub fn unbounded(len: usize) -> Space {
        Space::Box {
            low: vec![f32::NEG_INFINITY; len],
            high: vec![f32::INFINITY; len],
        }
    }

    /// How many floats an element takes: `n` for `Discrete` observations
    /// (one-hot), the length for a box.
    pub fn flat_len(&self) -> usize {
        match self {
            Space::Discrete { n } => *n as usize,
            Space::Box { low, .. } => low.len(),
        }
    }

    /// Checks that the space itself makes sense.
    pub fn validate(&self) -> Result<(), EnvError> {
        match self {
            Space::Discrete { n } if *n == 0 => Err(EnvError::InvalidSpace(
                "Discrete(0) has no elements; a discrete space needs n >= 1".into(),
            )),
            Space::Discrete { .. } => Ok(()),
            Space::Box { low, high } => {
                if low.len() != high.len() {
                    return Err(EnvError::InvalidSpace(format!(
                        "a box has {} low bounds but {} high bounds",
                        low.len(),
                        high.len()
                    )));
                }
                if low.is_empty() {
                    return Err(EnvError::InvalidSpace("a box of length 0".into()));
                }
                for (i, (l, h)) in low.iter().zip(high).enumerate() {
                    if l.is_nan() || h.is_nan() || l > h {
                        return Err(EnvError::InvalidSpace(format!(
                            "bound {i} of a box is [{l}, {h}]"
                        )));
                    }
                }
                Ok(())
            }
        }
    }

    /// Checks that `action` is an element of this space: the right kind, the
    /// right length, finite, within the bounds.
    pub fn check(&self, action: Action<'_>) -> Result<(), EnvError> {
        let outside = || EnvError::InvalidAction {
            action: action.to_string(),
            space: self.clone(),
        };
        match (self, action) {
            (Space::Discrete { n }, Action::Discrete(a)) if a < *n => Ok(()),
            (Space::Box { low, high }, Action::Continuous(values))
                if values.len() == low.len()
                    && values
                        .iter()
                        .zip(low.iter().zip(high))
                        .all(|(v, (l, h))| v.is_finite() && l <= v && v <= h) =>
            {
                Ok(())
            }
            _ => Err(outside()),
        }
    }

    /// How many numbers an action takes in a batch: 1 for `Discrete` (the
    /// index), the length for a box.
    pub fn action_len(&self) -> usize {
        match self {
            Space::Discrete { .. } => 1,
            Space::Box { low, .. } => low.len(),
        }
    }
}

impl fmt::Display for Space {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Space::Discrete { n } => write!(f, "Discrete({n})"),
            Space::Box { low, high } => {
                write!(f, "Box(")?;
                for (i, (l, h)) in low.iter().zip(high).enumerate() {
                    if i > 0 {
                        write!(f, ", ")?;
                    }
                    write!(f, "[{l}, {h}]")?;
                }
                write!(f, ")")
            }
        }
    }
}

/// One action, borrowed: an index into a `Discrete` space or the values of
/// a `Box` element.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Action<'a> {
    /// An index in `0..n`.
    Discrete(u64),
    /// A vector in a box.
    Continuous(&'a [f32]),
}

impl fmt::Display for Action<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::Discrete(a) => write!(f, "{a}"),
            Action::Continuous(values) => write!(f, "{values:?}"),
        }
    }
}

/// The actions of a whole batch of environments, one per environment.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Actions<'a> {
    /// One index per environment.
    Discrete(&'a [u64]),
    /// `len` values per environment, concatenated.
    Continuous(&'a [f32]),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discrete_actions_are_checked() {
        let space = Space::discrete(3);
        assert!(space.check(Action::Discrete(0)).is_ok());
        assert!(space.check(Action::Discrete(2)).is_ok());
        let err = space.check(Action::Discrete(3)).unwrap_err();
        assert!(err.to_string().contains("Discrete(3)"), "{err}");
        assert!(space.check(Action::Continuous(&[0.0])).is_err());
    }

    #[test]
    fn box_actions_are_checked_for_bounds_length_and_nan() {
        let space = Space::bounded(vec![-2.0], vec![2.0]).unwrap();
        assert!(space.check(Action::Continuous(&[2.0])).is_ok());
        assert!(space.check(Action::Continuous(&[-2.5])).is_err());
        assert!(space.check(Action::Continuous(&[f32::NAN])).is_err());
        assert!(space.check(Action::Continuous(&[0.0, 0.0])).is_err());
        assert!(space.check(Action::Discrete(0)).is_err());
    }

    #[test]
    fn nonsense_spaces_are_refused() {
        assert!(Space::bounded(vec![1.0], vec![0.0]).is_err());
        assert!(Space::bounded(vec![0.0, 0.0], vec![1.0]).is_err());
        assert!(Space::bounded(vec![f32::NAN], vec![1.0]).is_err());
        assert!(Space::discrete(0).validate().is_err());
    }
}
