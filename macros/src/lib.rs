//! `#[troupe::actor]`: turns a plain `impl` block into a Troupe actor.
//!
//! For `impl Counter { pub fn incr(&mut self, by: u64) -> u64 {..} }` it
//! keeps the block as written and generates:
//! - `CounterHandle`, a cheap-to-clone typed handle with the management
//!   methods of `troupe::ActorHandle` (`stop`, `kill`, `id`, `info`, `location`,
//!   `is_alive`, `is_dead`, `restarts`, `options`), unless an actor method
//!   has that name, and
//!   `AsRef<troupe::ActorHandle<Counter>>`;
//! - for each `pub` (or `pub(crate)`, `pub(super)`) method taking `&self`
//!   or `&mut self`, a handle method of the same name, arguments and
//!   visibility returning `troupe::Pending<R>`;
//! - `impl troupe::Actor for Counter { type Handle = CounterHandle; }`;
//! - `Counter::remote(&rt, options)`, whose methods are the block's
//!   constructors (`fn ..(args) -> Self`) with their own arguments, to spawn
//!   the actor on a node of the cluster (`CounterRemote`; not generated when
//!   the block has an item named `remote`).
//!
//! Methods without a receiver (constructors) and private methods are left
//! alone. Async methods are supported. Generic methods, `self` by value and
//! `impl Trait` returns are rejected with an error that says why.

// The lint wall (CI denies warnings): no unsafe code but where a
// `SAFETY` comment allows it; every public item documented and truly
// public; no debugging leftovers; no `unwrap` outside tests.
#![deny(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]
#![warn(clippy::dbg_macro, clippy::todo)]
#![cfg_attr(not(test), warn(clippy::unwrap_used))]

mod actor;
mod remote;

use proc_macro::TokenStream;
use proc_macro2::Span;
use syn::visit_mut::VisitMut;
use syn::{parse_macro_input, ItemFn, ItemImpl, Type};

/// Replaces `Self` with the actor's type: inside the generated handle's
/// `impl`, `Self` would mean the handle.
struct ReplaceSelf<'a>(&'a Type);

impl VisitMut for ReplaceSelf<'_> {
    fn visit_type_mut(&mut self, ty: &mut Type) {
        if let Type::Path(path) = ty {
            if path.qself.is_none() && path.path.is_ident("Self") {
                *ty = self.0.clone();
                return;
            }
        }
        syn::visit_mut::visit_type_mut(self, ty);
    }
}

fn concrete(ty: &Type, self_ty: &Type) -> Type {
    let mut ty = ty.clone();
    ReplaceSelf(self_ty).visit_type_mut(&mut ty);
    ty
}

/// Makes the struct of an `impl` block a Troupe actor. See the crate docs.
#[proc_macro_attribute]
pub fn actor(attr: TokenStream, item: TokenStream) -> TokenStream {
    if !attr.is_empty() {
        return syn::Error::new(
            Span::call_site(),
            "#[troupe::actor] takes no arguments; pass options at spawn time with ActorOptions",
        )
        .to_compile_error()
        .into();
    }
    let block = parse_macro_input!(item as ItemImpl);
    match actor::expand(&block) {
        Ok(tokens) => tokens.into(),
        Err(err) => err.to_compile_error().into(),
    }
}

/// Makes a function a remote function (a task).
///
/// For `fn add(a: u64, b: u64) -> u64` it keeps the function as written and
/// adds a module `add` with `add::remote(&rt, a, b) -> ObjectRef<u64>` and
/// `add::options(TaskOptions).remote(&rt, a, b)`. Each parameter of type `T`
/// accepts a `T`, an `ObjectRef<T>` or a `&ObjectRef<T>`; refs are resolved
/// before the body runs. Parameter types are `Clone` (each attempt gets its
/// own copy) and storable; the result type is storable.
///
/// A function returning a type named `Result` is fallible: `Ok(v)` stores
/// `v`, `Err(e)` fails the task with `e` itself (read it back with
/// `downcast_ref` on the `TaskError`'s cause; retried only with
/// `retry_exceptions`). Sync bodies run on the blocking pool, async ones on
/// the runtime's workers. `NAME` is the function's stable name.
///
/// `#[troupe::remote(num_returns = N)]` on a function returning an N-tuple
/// (2 to 4) stores each element as its own object: `remote` returns a tuple
/// of N refs.
///
/// `#[troupe::remote(generator)]` on a plain function returning
/// `impl Iterator<Item = T>` makes a generator: `remote` returns an
/// `ObjectStream<T>` that yields one ref per item as the body produces it.
#[proc_macro_attribute]
pub fn remote(attr: TokenStream, item: TokenStream) -> TokenStream {
    let num_returns = match remote::parse_remote_attr(attr.into()) {
        Ok(n) => n,
        Err(err) => return err.to_compile_error().into(),
    };
    let func = parse_macro_input!(item as ItemFn);
    match remote::expand_remote(&func, num_returns) {
        Ok(tokens) => tokens.into(),
        Err(err) => err.to_compile_error().into(),
    }
}

#[cfg(test)]
mod tests {
    use super::actor::expand;
    use super::remote::{expand_remote, parse_remote_attr};
    use syn::{ItemFn, ItemImpl};

    fn error_of(code: &str) -> String {
        let block: ItemImpl = syn::parse_str(code).expect("test input parses");
        match expand(&block) {
            Ok(_) => panic!("expected an error for: {code}"),
            Err(err) => err.to_string(),
        }
    }

    #[test]
    fn generates_a_handle_for_public_methods_only() {
        let block: ItemImpl = syn::parse_str(
            "impl Counter {
                pub fn new() -> Self { Counter }
                pub fn incr(&mut self, by: u64) -> u64 { by }
                pub async fn slow(&self) {}
                fn helper(&self) -> u8 { 0 }
            }",
        )
        .unwrap();
        let out = expand(&block).unwrap().to_string();
        assert!(out.contains("pub struct CounterHandle"));
        assert!(out.contains("pub fn incr (& self , by : u64) -> :: troupe :: Pending < u64 >"));
        assert!(out.contains("call_async (\"slow\""));
        assert!(!out.contains("fn helper (& self) -> :: troupe :: Pending"));
        assert!(!out.contains("fn new (& self"));
        assert!(out.contains("impl :: troupe :: Actor for Counter"));
    }

    #[test]
    fn self_in_signatures_means_the_actor_type() {
        let block: ItemImpl = syn::parse_str(
            "impl Counter { pub fn merge(&mut self, other: Vec<Self>) -> Option<Self> { None } }",
        )
        .unwrap();
        let out = expand(&block).unwrap().to_string();
        assert!(out.contains("other : Vec < Counter >"), "{out}");
        assert!(out.contains("Pending < Option < Counter > >"), "{out}");
    }

    #[test]
    fn a_user_method_named_like_a_management_method_wins() {
        let block: ItemImpl =
            syn::parse_str("impl A { pub fn id(&self) -> String { String::new() } }").unwrap();
        let out = expand(&block).unwrap().to_string();
        assert!(out.contains("pub fn id (& self) -> :: troupe :: Pending < String >"));
        assert!(!out.contains("pub fn id (& self) -> u64"));
        assert!(out.contains("pub fn is_alive"));
    }

    #[test]
    fn rejects_trait_impls() {
        assert!(
            error_of("impl Clone for A { fn clone(&self) -> Self { A } }")
                .contains("inherent impl")
        );
    }

    #[test]
    fn rejects_generic_actors() {
        assert!(error_of("impl<T> A<T> { pub fn f(&self) {} }").contains("generic actors"));
    }

    #[test]
    fn rejects_generic_methods() {
        assert!(error_of("impl A { pub fn f<T>(&self, t: T) {} }").contains("cannot be generic"));
    }

    #[test]
    fn rejects_self_by_value() {
        assert!(error_of("impl A { pub fn f(self) {} }").contains("&self or &mut self"));
    }

    fn remote_error_of(attr: &str, code: &str) -> String {
        let func: ItemFn = syn::parse_str(code).expect("test input parses");
        let n = match parse_remote_attr(attr.parse().expect("attr tokens")) {
            Ok(n) => n,
            Err(err) => return err.to_string(),
        };
        match expand_remote(&func, n) {
            Ok(_) => panic!("expected an error for: {attr} {code}"),
            Err(err) => err.to_string(),
        }
    }

    #[test]
    fn remote_rejects_bad_num_returns() {
        assert!(remote_error_of("num_returns = 2", "fn f() -> u32 { 0 }").contains("2-tuple"));
        assert!(
            remote_error_of("num_returns = 3", "fn f() -> (u8, u8) { (0, 0) }")
                .contains("returns a 2-tuple")
        );
        assert!(remote_error_of("num_returns = 9", "fn f() {}").contains("1 to 4"));
        assert!(remote_error_of("retries = 2", "fn f() {}").contains("only `num_returns"));
    }

    #[test]
    fn generators_return_an_iterator_or_a_stream() {
        assert!(remote_error_of("generator", "fn g() -> u32 { 0 }").contains("impl Iterator"));
        assert!(remote_error_of(
            "generator",
            "async fn g() -> impl Iterator<Item = u8> { 0..1 }"
        )
        .contains("drop the `async`"));
        assert!(remote_error_of("stream", "fn g() {}").contains("`generator`"));
    }

    #[test]
    fn remote_rejects_generic_fns_methods_and_borrowed_params() {
        assert!(remote_error_of("", "fn f<T>(t: T) {}").contains("cannot be generic"));
        assert!(remote_error_of("", "fn f(x: &u32) {}").contains("owned values"));
        assert!(remote_error_of("", "fn f() -> impl Sized { 0 }").contains("impl Trait"));
    }

    #[test]
    fn rejects_impl_trait_returns() {
        assert!(
            error_of("impl A { pub fn f(&self) -> impl Fn() { || {} } }").contains("impl Trait")
        );
    }
}
