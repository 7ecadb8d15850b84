//! A trial's configuration: named values (Ray's `config` dict), typed.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::TrainableError;

/// One hyperparameter's value.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Value {
    /// An integer (a grid or choice of integers; PBT keeps it integral).
    Int(i64),
    /// A real number.
    Float(f64),
    /// A string (a choice of names).
    Str(String),
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Int(v) => write!(f, "{v}"),
            Value::Float(v) => write!(f, "{v:.6}"),
            Value::Str(v) => f.write_str(v),
        }
    }
}

impl From<i64> for Value {
    fn from(v: i64) -> Self {
        Value::Int(v)
    }
}

impl From<f64> for Value {
    fn from(v: f64) -> Self {
        Value::Float(v)
    }
}

impl From<&str> for Value {
    fn from(v: &str) -> Self {
        Value::Str(v.to_owned())
    }
}

impl From<String> for Value {
    fn from(v: String) -> Self {
        Value::Str(v)
    }
}

/// A trial's configuration: hyperparameter names and their values, in
/// name order.
///
/// ```
/// use troupe_tune::Params;
/// let params = Params::new().with("lr", 0.01).with("layers", 3).with("act", "relu");
/// assert_eq!(params.f64("lr").unwrap(), 0.01);
/// assert_eq!(params.i64("layers").unwrap(), 3);
/// assert_eq!(params.f64("layers").unwrap(), 3.0); // an integer reads as a float
/// assert_eq!(params.str("act").unwrap(), "relu");
/// assert!(params.f64("momentum").is_err());
/// ```
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Params(BTreeMap<String, Value>);

impl Params {
    /// No values.
    pub fn new() -> Self {
        Self::default()
    }

    /// With `name` set to `value`.
    pub fn with(mut self, name: impl Into<String>, value: impl Into<Value>) -> Self {
        self.set(name, value);
        self
    }

    /// Sets `name` to `value`.
    pub fn set(&mut self, name: impl Into<String>, value: impl Into<Value>) {
        self.0.insert(name.into(), value.into());
    }

    /// The value of `name`, if set.
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.0.get(name)
    }

    /// The names and values, in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// `name` as a float (an integer converts).
    pub fn f64(&self, name: &str) -> Result<f64, TrainableError> {
        match self.get(name) {
            Some(Value::Float(v)) => Ok(*v),
            Some(Value::Int(v)) => Ok(*v as f64),
            other => Err(self.wrong(name, "a number", other)),
        }
    }

    /// `name` as an integer.
    pub fn i64(&self, name: &str) -> Result<i64, TrainableError> {
        match self.get(name) {
            Some(Value::Int(v)) => Ok(*v),
            other => Err(self.wrong(name, "an integer", other)),
        }
    }

    /// `name` as a string.
    pub fn str(&self, name: &str) -> Result<&str, TrainableError> {
        match self.get(name) {
            Some(Value::Str(v)) => Ok(v),
            other => Err(self.wrong(name, "a string", other)),
        }
    }

    fn wrong(&self, name: &str, wanted: &'static str, found: Option<&Value>) -> TrainableError {
        TrainableError::Param {
            name: name.to_owned(),
            wanted,
            found: found.map_or_else(|| "nothing".to_owned(), |v| format!("{v:?}")),
        }
    }
}

impl fmt::Display for Params {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (k, v)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{k}={v}")?;
        }
        Ok(())
    }
}
