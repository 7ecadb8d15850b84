//! Trainables registered by name ([`register_trainable!`]): what trials on
//! other nodes of a cluster are built from, since a closure cannot travel
//! between processes but a name can (every node runs the same program).

use std::sync::Arc;

use crate::error::TrainableError;
use crate::params::Params;
use crate::trainable::{Factory, Trainable};

type MakeFn = fn(&Params) -> Result<Box<dyn Trainable>, TrainableError>;

/// A registered trainable: its name and a plain function of a trial's
/// config. Made by [`register_trainable!`](crate::register_trainable);
/// collected when the program is linked.
#[doc(hidden)]
#[derive(Debug)]
pub struct TrainableRegistration {
    name: &'static str,
    make: MakeFn,
}

impl TrainableRegistration {
    #[doc(hidden)]
    pub const fn new(name: &'static str, make: MakeFn) -> TrainableRegistration {
        TrainableRegistration { name, make }
    }
}

inventory::collect!(TrainableRegistration);

/// Boxes a registered factory's trainable (used by `register_trainable!`).
#[doc(hidden)]
pub fn boxed_trainable<T: Trainable>(
    made: Result<T, TrainableError>,
) -> Result<Box<dyn Trainable>, TrainableError> {
    made.map(|t| Box::new(t) as Box<dyn Trainable>)
}

/// Registers a trainable under a name, when the program is linked, so that
/// [`Tuner::registered`](crate::Tuner::registered) builds it on any node:
/// what trials on other nodes of a cluster need
/// ([`TuneOptions::trials_on_cluster`](crate::TuneOptions::trials_on_cluster)).
///
/// The factory is a closure of the trial's config (`&Params`) that
/// captures nothing, returning `Result<T, TrainableError>` for any
/// `T: Trainable`; inside it, `troupe::Runtime::current()` is the runtime
/// of the node the trial runs on. Write it at the top level of a module;
/// the name must be unique ([`Tuner::registered`](crate::Tuner::registered)
/// refuses one registered twice).
///
/// ```
/// use troupe_tune::{FnTrainable, Metrics, Params};
///
/// troupe_tune::register_trainable!("quadratic", |params: &Params| {
///     Ok(FnTrainable::new(params.clone(), |p: &Params, _: &mut (), i: u64| {
///         let x = p.f64("x")?;
///         Ok(Metrics::new().with("loss", x * x / i as f64))
///     }))
/// });
///
/// assert!(troupe_tune::registered_trainables().contains(&"quadratic"));
/// ```
#[macro_export]
macro_rules! register_trainable {
    ($name:expr, $make:expr $(,)?) => {
        const _: () = {
            fn __troupe_tune_make_trainable(
                params: &$crate::Params,
            ) -> ::std::result::Result<
                ::std::boxed::Box<dyn $crate::Trainable>,
                $crate::TrainableError,
            > {
                let make = $make;
                $crate::__private::boxed_trainable(make(params))
            }
            $crate::__private::inventory::submit! {
                $crate::__private::TrainableRegistration::new($name, __troupe_tune_make_trainable)
            }
        };
    };
}

/// The names of every trainable registered with
/// [`register_trainable!`](crate::register_trainable) in this program,
/// sorted.
pub fn registered_trainables() -> Vec<&'static str> {
    let mut names: Vec<&'static str> = inventory::iter::<TrainableRegistration>()
        .map(|r| r.name)
        .collect();
    names.sort_unstable();
    names
}

/// The factory registered as `name`, or why there is none to use.
pub(crate) fn registered(name: &str) -> Result<Factory, TrainableError> {
    let mut found = inventory::iter::<TrainableRegistration>().filter(|r| r.name == name);
    match (found.next(), found.next()) {
        (Some(one), None) => {
            let make = one.make;
            Ok(Arc::new(move |params: &Params| make(params)))
        }
        (Some(_), Some(_)) => Err(TrainableError::Failed(format!(
            "the trainable {name:?} is registered more than once (register_trainable!); give each a name of its own"
        ))),
        (None, _) => Err(TrainableError::Failed(format!(
            "no trainable is registered as {name:?} in this program (known: {}); register it with troupe_tune::register_trainable!, and run the same program on every node",
            registered_trainables().join(", ")
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trainable::FnTrainable;
    use crate::Metrics;

    crate::register_trainable!("RegistryTest-Counter", |params: &Params| {
        Ok(FnTrainable::new(
            params.clone(),
            |p: &Params, n: &mut f64, _i: u64| {
                *n += p.f64("step")?;
                Ok(Metrics::new().with("n", *n))
            },
        ))
    });
    crate::register_trainable!("RegistryTest-Twice", |p: &Params| {
        Ok(FnTrainable::new(p.clone(), |_: &Params, _: &mut (), _| {
            Ok(Metrics::new())
        }))
    });
    crate::register_trainable!("RegistryTest-Twice", |p: &Params| {
        Ok(FnTrainable::new(p.clone(), |_: &Params, _: &mut (), _| {
            Ok(Metrics::new())
        }))
    });

    #[test]
    fn a_registered_trainable_is_built_from_its_name_and_config() {
        let factory = registered("RegistryTest-Counter").unwrap();
        let mut t = factory(&Params::new().with("step", 1.5)).unwrap();
        t.step().unwrap();
        assert_eq!(t.step().unwrap().get("n"), Some(3.0));
        assert!(registered_trainables().contains(&"RegistryTest-Counter"));
    }

    #[test]
    fn an_unknown_or_twice_registered_name_says_what_to_do() {
        let Err(TrainableError::Failed(unknown)) = registered("RegistryTest-Nobody") else {
            panic!("an unknown name is refused");
        };
        assert!(unknown.contains("register_trainable!"), "{unknown}");
        assert!(
            unknown.contains("RegistryTest-Counter"),
            "lists the known: {unknown}"
        );
        let Err(TrainableError::Failed(twice)) = registered("RegistryTest-Twice") else {
            panic!("a name registered twice is refused");
        };
        assert!(twice.contains("more than once"), "{twice}");
    }
}
