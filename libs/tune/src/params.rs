//! A trial's configuration: named values (Ray's `config` dict), typed.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::TrainableError;

/// One hyperparameter's value.
///
/// Serialized untagged where the format is human-readable (a JSON state
/// file says `"lr": 0.01`), tagged elsewhere (postcard, between nodes,
/// cannot read an untagged enum).
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// An integer (a grid or choice of integers; PBT keeps it integral).
    Int(i64),
    /// A real number.
    Float(f64),
    /// A string (a choice of names).
    Str(String),
}

/// [`Value`] as it is written.
#[derive(Serialize)]
enum ValueRef<'a> {
    Int(i64),
    Float(f64),
    Str(&'a str),
}

#[derive(Serialize)]
#[serde(untagged)]
enum UntaggedRef<'a> {
    Int(i64),
    Float(f64),
    Str(&'a str),
}

/// [`Value`] as it is read.
#[derive(Deserialize)]
enum Tagged {
    Int(i64),
    Float(f64),
    Str(String),
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Untagged {
    Int(i64),
    Float(f64),
    Str(String),
}

impl Serialize for Value {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if serializer.is_human_readable() {
            match self {
                Value::Int(v) => UntaggedRef::Int(*v),
                Value::Float(v) => UntaggedRef::Float(*v),
                Value::Str(v) => UntaggedRef::Str(v),
            }
            .serialize(serializer)
        } else {
            match self {
                Value::Int(v) => ValueRef::Int(*v),
                Value::Float(v) => ValueRef::Float(*v),
                Value::Str(v) => ValueRef::Str(v),
            }
            .serialize(serializer)
        }
    }
}

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(if deserializer.is_human_readable() {
            match Untagged::deserialize(deserializer)? {
                Untagged::Int(v) => Value::Int(v),
                Untagged::Float(v) => Value::Float(v),
                Untagged::Str(v) => Value::Str(v),
            }
        } else {
            match Tagged::deserialize(deserializer)? {
                Tagged::Int(v) => Value::Int(v),
                Tagged::Float(v) => Value::Float(v),
                Tagged::Str(v) => Value::Str(v),
            }
        })
    }
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
            wanted: wanted.to_owned(),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Metrics, TrainableError};

    fn params() -> Params {
        Params::new()
            .with("lr", 0.01)
            .with("layers", 3)
            .with("act", "relu")
    }

    #[test]
    fn configs_read_back_from_json_and_from_the_wire() {
        let json = serde_json::to_string(&params()).unwrap();
        assert_eq!(
            json, r#"{"act":"relu","layers":3,"lr":0.01}"#,
            "untagged in JSON"
        );
        assert_eq!(serde_json::from_str::<Params>(&json).unwrap(), params());
        let wire = postcard::to_stdvec(&params()).unwrap();
        assert_eq!(postcard::from_bytes::<Params>(&wire).unwrap(), params());
    }

    #[test]
    fn metrics_and_errors_cross_the_wire() {
        let metrics = Metrics::new()
            .with("loss", f64::NAN)
            .with("acc", 0.5)
            .done();
        let back: Metrics = postcard::from_bytes(&postcard::to_stdvec(&metrics).unwrap()).unwrap();
        assert!(back.get("loss").is_some_and(f64::is_nan));
        assert_eq!(back.get("acc"), Some(0.5));
        assert!(back.is_done());
        let json: Metrics =
            serde_json::from_str(&serde_json::to_string(&metrics).unwrap()).unwrap();
        assert!(
            json.get("loss").is_some_and(f64::is_nan),
            "JSON's null reads as NaN"
        );

        let error = params().i64("act").unwrap_err();
        let back: TrainableError =
            postcard::from_bytes(&postcard::to_stdvec(&error).unwrap()).unwrap();
        assert_eq!(back, error);
    }
}
