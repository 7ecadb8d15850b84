//! Training loops registered by name ([`register_train_loop!`]): what
//! workers on other nodes of a cluster run, since a closure cannot travel
//! between processes but a name can (every node runs the same program).

use crate::context::WorkerContext;
use crate::error::LoopError;

/// A registered loop's function.
pub(crate) type LoopFnPtr = fn(&mut WorkerContext) -> Result<(), LoopError>;

/// A registered training loop. Made by
/// [`register_train_loop!`](crate::register_train_loop); collected when
/// the program is linked.
#[doc(hidden)]
#[derive(Debug)]
pub struct TrainLoopRegistration {
    name: &'static str,
    f: LoopFnPtr,
}

impl TrainLoopRegistration {
    #[doc(hidden)]
    pub const fn new(name: &'static str, f: LoopFnPtr) -> Self {
        TrainLoopRegistration { name, f }
    }
}

inventory::collect!(TrainLoopRegistration);

/// Registers a training loop under a name, when the program is linked, so
/// that [`Trainer::fit_registered`](crate::Trainer::fit_registered) runs it
/// on workers on any node of a cluster.
///
/// The loop is a closure that captures nothing, from `&mut WorkerContext`
/// to `Result<(), E>` with `E: Into<LoopError>`; what it needs from the
/// caller comes from [`WorkerContext::loop_config`]. Write it at the top
/// level of a module; the name must be unique.
///
/// ```
/// troupe_train::register_train_loop!("count-to-three", |ctx| {
///     for _ in ctx.iteration()..3 {
///         ctx.report(troupe_train::Metrics::new(), None)?;
///     }
///     Ok::<_, troupe_train::TrainError>(())
/// });
///
/// assert!(troupe_train::registered_train_loops().contains(&"count-to-three"));
/// ```
#[macro_export]
macro_rules! register_train_loop {
    ($name:expr, $f:expr $(,)?) => {
        const _: () = {
            fn __troupe_train_loop(
                ctx: &mut $crate::WorkerContext,
            ) -> ::std::result::Result<(), $crate::LoopError> {
                let f: fn(&mut $crate::WorkerContext) -> ::std::result::Result<(), _> = $f;
                f(ctx).map_err(::std::convert::Into::into)
            }
            $crate::__private::inventory::submit! {
                $crate::__private::TrainLoopRegistration::new($name, __troupe_train_loop)
            }
        };
    };
}

/// The names of every training loop registered in this program, sorted.
pub fn registered_train_loops() -> Vec<&'static str> {
    let mut names: Vec<&'static str> = inventory::iter::<TrainLoopRegistration>()
        .map(|r| r.name)
        .collect();
    names.sort_unstable();
    names
}

/// The loop registered as `name`, or why there is none to use.
pub(crate) fn lookup(name: &str) -> Result<LoopFnPtr, String> {
    let mut found = inventory::iter::<TrainLoopRegistration>().filter(|r| r.name == name);
    match (found.next(), found.next()) {
        (Some(one), None) => Ok(one.f),
        (Some(_), Some(_)) => Err(format!(
            "the training loop {name:?} is registered more than once (register_train_loop!); give each a name of its own"
        )),
        (None, _) => Err(format!(
            "no training loop is registered as {name:?} in this program (known: {}); register it with troupe_train::register_train_loop!, and run the same program on every node",
            registered_train_loops().join(", ")
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    crate::register_train_loop!("RegistryTest-Once", |_ctx| Ok::<_, LoopError>(()));
    crate::register_train_loop!("RegistryTest-Twice", |_ctx| Ok::<_, LoopError>(()));
    crate::register_train_loop!("RegistryTest-Twice", |_ctx| Ok::<_, LoopError>(()));

    #[test]
    fn a_loop_is_found_by_its_one_name_and_the_errors_say_what_to_do() {
        assert!(lookup("RegistryTest-Once").is_ok());
        let twice = lookup("RegistryTest-Twice").expect_err("ambiguous");
        assert!(twice.contains("more than once"), "{twice}");
        let unknown = lookup("nope").expect_err("unknown");
        assert!(
            unknown.contains("RegistryTest-Once") && unknown.contains("register_train_loop!"),
            "{unknown}"
        );
    }
}
