//! `#[troupe::actor]`: turns a plain `impl` block into a Troupe actor.
//!
//! For `impl Counter { pub fn incr(&mut self, by: u64) -> u64 {..} }` it
//! keeps the block as written and generates:
//! - `CounterHandle`, a cheap-to-clone typed handle with the management
//!   methods of `troupe::ActorHandle` (`kill`, `id`, `info`, `is_alive`,
//!   `is_dead`, `options`), unless an actor method has that name, and
//!   `AsRef<troupe::ActorHandle<Counter>>`;
//! - for each `pub` method taking `&self` or `&mut self`, a handle method of
//!   the same name and arguments returning `troupe::Pending<R>`;
//! - `impl troupe::Actor for Counter { type Handle = CounterHandle; }`.
//!
//! Methods without a receiver (constructors) and non-`pub` methods are left
//! alone. Async methods are supported. Generic methods, `self` by value and
//! `impl Trait` returns are rejected with an error that says why.

use proc_macro::TokenStream;
use proc_macro2::{Span, TokenStream as TokenStream2};
use quote::{format_ident, quote};
use syn::spanned::Spanned;
use syn::visit_mut::VisitMut;
use syn::{
    parse_macro_input, FnArg, GenericArgument, ImplItem, ItemFn, ItemImpl, Pat, PathArguments,
    ReturnType, Type, Visibility,
};

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
    match expand(&block) {
        Ok(tokens) => tokens.into(),
        Err(err) => err.to_compile_error().into(),
    }
}

/// Whether a method carries `#[blocking]` (and removes it: it is ours).
fn take_blocking(method: &mut syn::ImplItemFn) -> bool {
    let before = method.attrs.len();
    method.attrs.retain(|a| !a.path().is_ident("blocking"));
    method.attrs.len() != before
}

fn expand(block: &ItemImpl) -> syn::Result<TokenStream2> {
    let mut block = block.clone();
    let mut blocking_methods = std::collections::HashSet::new();
    for item in &mut block.items {
        if let ImplItem::Fn(method) = item {
            if take_blocking(method) {
                if method.sig.asyncness.is_some() {
                    return Err(syn::Error::new(
                        method.sig.ident.span(),
                        "#[blocking] is for sync methods that may block; an async method should await instead",
                    ));
                }
                blocking_methods.insert(method.sig.ident.to_string());
            }
        }
    }
    let block = &block;
    if block.trait_.is_some() {
        return Err(syn::Error::new(
            block.span(),
            "#[troupe::actor] goes on an inherent impl block (impl MyActor { .. }), not a trait impl",
        ));
    }
    if !block.generics.params.is_empty() {
        return Err(syn::Error::new(
            block.generics.span(),
            "#[troupe::actor] does not support generic actors yet; wrap a concrete type",
        ));
    }
    let self_ty = &block.self_ty;
    let type_ident = match &**self_ty {
        Type::Path(path) => path
            .path
            .segments
            .last()
            .map(|s| s.ident.clone())
            .ok_or_else(|| syn::Error::new(self_ty.span(), "expected a type name"))?,
        other => {
            return Err(syn::Error::new(
                other.span(),
                "#[troupe::actor] needs a named struct or enum type",
            ))
        }
    };
    let handle = format_ident!("{}Handle", type_ident);
    let mut methods = Vec::new();
    let mut taken = std::collections::HashSet::new();
    let mut dispatchers = Vec::new();
    let mut entries = Vec::new();
    let mut constructors = Vec::new();

    for item in &block.items {
        let ImplItem::Fn(method) = item else { continue };
        if !matches!(method.vis, Visibility::Public(_)) {
            continue;
        }
        let sig = &method.sig;
        let Some(FnArg::Receiver(receiver)) = sig.inputs.first() else {
            if let Some(ctor) = constructor(sig, self_ty, &type_ident)? {
                constructors.push(ctor);
            }
            continue; // a constructor or associated function
        };
        if receiver.reference.is_none() {
            return Err(syn::Error::new(
                receiver.span(),
                "actor methods take &self or &mut self; a method taking self by value would consume the actor",
            ));
        }
        if !sig.generics.params.is_empty() {
            return Err(syn::Error::new(
                sig.generics.span(),
                "actor methods cannot be generic (calls are type-erased messages); make it private or concrete",
            ));
        }
        let output: TokenStream2 = match &sig.output {
            ReturnType::Default => quote!(()),
            ReturnType::Type(_, ty) => {
                if matches!(**ty, Type::ImplTrait(_)) {
                    return Err(syn::Error::new(
                        ty.span(),
                        "actor methods cannot return impl Trait: the reply type must be nameable",
                    ));
                }
                let ty = concrete(ty, self_ty);
                quote!(#ty)
            }
        };
        let name = &sig.ident;
        let name_str = name.to_string();
        taken.insert(name_str.clone());
        let mut params = Vec::new();
        let mut args = Vec::new();
        for (i, input) in sig.inputs.iter().skip(1).enumerate() {
            let FnArg::Typed(pat_ty) = input else {
                continue;
            };
            let ident = match &*pat_ty.pat {
                Pat::Ident(p) => p.ident.clone(),
                _ => format_ident!("__arg{}", i),
            };
            let ty = concrete(&pat_ty.ty, self_ty);
            params.push(quote!(#ident: #ty));
            args.push(quote!(#ident));
        }
        let docs: Vec<_> = method
            .attrs
            .iter()
            .filter(|a| a.path().is_ident("doc"))
            .collect();
        let body = if sig.asyncness.is_some() {
            quote! {
                self.0.call_async(#name_str, move |this: &mut #self_ty| -> ::troupe::__private::BoxFuture<'_, #output> {
                    ::std::boxed::Box::pin(this.#name(#(#args),*))
                })
            }
        } else if blocking_methods.contains(&name_str) {
            quote! {
                self.0.call_blocking(#name_str, move |this: &mut #self_ty| this.#name(#(#args),*))
            }
        } else {
            quote! {
                self.0.call(#name_str, move |this: &mut #self_ty| this.#name(#(#args),*))
            }
        };
        // Callable by name (from another node) when its types allow it.
        let arg_types: Vec<Type> = sig
            .inputs
            .iter()
            .skip(1)
            .filter_map(|input| match input {
                FnArg::Typed(pat_ty) => Some(concrete(&pat_ty.ty, self_ty)),
                FnArg::Receiver(_) => None,
            })
            .collect();
        let signature = signature_of(&arg_types, &output);
        let dispatch = format_ident!("__troupe_call_{}", name);
        dispatchers.push(quote! {
            fn #dispatch(
                slot: ::std::sync::Arc<dyn ::std::any::Any + ::std::marker::Send + ::std::marker::Sync>,
                store: &::troupe::ObjectStore,
                bytes: &[u8],
            ) -> ::std::result::Result<::troupe::__private::EncodedReply, ::std::string::String> {
                (&::troupe::__private::Wire::<(#(#arg_types,)*), #output>::new()).method::<#self_ty>(
                    slot,
                    store,
                    bytes,
                    |handle: &#handle, (#(#args,)*): (#(#arg_types,)*)| handle.#name(#(#args),*),
                )
            }
        });
        entries.push(quote! {
            ::troupe::__private::Method { name: #name_str, signature: #signature, call: #dispatch },
        });
        methods.push(quote! {
            #(#docs)*
            ///
            /// Sends the call at once; await the result for the reply.
            pub fn #name(&self #(, #params)*) -> ::troupe::Pending<#output> {
                #body
            }
        });
    }

    let management: Vec<TokenStream2> = [
        (
            "id",
            quote! {
                /// The actor's id, unique across nodes and stable across restarts.
                pub fn id(&self) -> ::troupe::ActorId { self.0.id() }
            },
        ),
        (
            "info",
            quote! {
                /// Who the actor is (id, name, type).
                pub fn info(&self) -> &::troupe::ActorInfo { self.0.info() }
            },
        ),
        (
            "is_alive",
            quote! {
                /// Whether an incarnation is running now (false while restarting).
                pub fn is_alive(&self) -> bool { self.0.is_alive() }
            },
        ),
        (
            "is_dead",
            quote! {
                /// Whether the actor is dead for good.
                pub fn is_dead(&self) -> bool { self.0.is_dead() }
            },
        ),
        (
            "options",
            quote! {
                /// The options the actor was spawned with.
                pub fn options(&self) -> &::troupe::ActorOptions { self.0.options() }
            },
        ),
        (
            "kill",
            quote! {
                /// Kills the running incarnation at once; with `no_restart` the
                /// actor is dead for good. Returns once it has stopped.
                pub async fn kill(&self, no_restart: bool) { self.0.kill(no_restart).await }
            },
        ),
        (
            "stop",
            quote! {
                /// Stops the actor gracefully: it answers the calls sent
                /// before this, then stops for good. Returns once it is dead.
                pub async fn stop(&self) { self.0.stop().await }
            },
        ),
        (
            "restarts",
            quote! {
                /// How many times the actor has been restarted.
                pub fn restarts(&self) -> u32 { self.0.restarts() }
            },
        ),
    ]
    .into_iter()
    .filter(|(name, _)| !taken.contains(*name))
    .map(|(_, tokens)| tokens)
    .collect();

    let doc = format!("Typed handle to a [`{type_ident}`] actor, generated by `#[troupe::actor]`. Cheap to clone; valid across restarts.");
    let type_name = type_ident.to_string();
    let (ctor_fns, ctor_entries): (Vec<_>, Vec<_>) = constructors.into_iter().unzip();
    Ok(quote! {
        #block

        // Registered under its stable name, so that another node running
        // this binary can spawn it and call its methods by name.
        const _: () = {
            #[allow(unused_imports)]
            use ::troupe::__private::{ByName as _, NotByName as _, ByNameNew as _, NotByNameNew as _};
            #(#dispatchers)*
            #(#ctor_fns)*
            ::troupe::__private::inventory::submit! {
                ::troupe::__private::ActorType {
                    name: <#self_ty as ::troupe::Actor>::NAME,
                    methods: &[#(#entries)*],
                    constructors: &[#(#ctor_entries)*],
                }
            }
        };

        #[doc = #doc]
        #[derive(Clone, Debug)]
        pub struct #handle(::troupe::ActorHandle<#self_ty>);

        impl ::std::convert::From<::troupe::ActorHandle<#self_ty>> for #handle {
            fn from(handle: ::troupe::ActorHandle<#self_ty>) -> Self {
                Self(handle)
            }
        }

        impl ::std::convert::AsRef<::troupe::ActorHandle<#self_ty>> for #handle {
            fn as_ref(&self) -> &::troupe::ActorHandle<#self_ty> {
                &self.0
            }
        }

        impl ::troupe::Actor for #self_ty {
            type Handle = #handle;
            const NAME: &'static str = ::std::concat!(::std::module_path!(), "::", #type_name);
        }

        impl #handle {
            #(#methods)*
            #(#management)*
        }
    })
}

/// `(A, B) -> R`, as written: part of the build id.
fn signature_of(args: &[Type], output: &TokenStream2) -> String {
    let args: Vec<String> = args.iter().map(|t| quote!(#t).to_string()).collect();
    format!("({}) -> {}", args.join(", "), output)
}

/// A `pub fn name(args) -> Self` of the actor's block: its by-name spawner
/// and its registry entry.
fn constructor(
    sig: &syn::Signature,
    self_ty: &Type,
    type_ident: &syn::Ident,
) -> syn::Result<Option<(TokenStream2, TokenStream2)>> {
    let returns_self = match &sig.output {
        ReturnType::Type(_, ty) => match &**ty {
            Type::Path(p) => p.path.is_ident("Self") || p.path.is_ident(type_ident),
            _ => false,
        },
        ReturnType::Default => false,
    };
    if !returns_self || sig.asyncness.is_some() || !sig.generics.params.is_empty() {
        return Ok(None);
    }
    let name = &sig.ident;
    let name_str = name.to_string();
    let mut types = Vec::new();
    let mut idents = Vec::new();
    for (i, input) in sig.inputs.iter().enumerate() {
        let FnArg::Typed(pat_ty) = input else {
            return Ok(None);
        };
        types.push(concrete(&pat_ty.ty, self_ty));
        idents.push(format_ident!("__arg{}", i));
    }
    let signature = signature_of(&types, &quote!(Self));
    let spawner = format_ident!("__troupe_new_{}", name);
    let function = quote! {
        fn #spawner(
            rt: &::troupe::Runtime,
            options: ::troupe::ActorOptions,
            bytes: &[u8],
        ) -> ::std::result::Result<
            ::troupe::__private::BoxFuture<'static, ::std::result::Result<::troupe::ActorId, ::troupe::SpawnError>>,
            ::std::string::String,
        > {
            (&::troupe::__private::WireNew::<(#(#types,)*)>::new()).constructor::<#self_ty>(
                rt,
                options,
                bytes,
                |(#(#idents,)*): (#(#types,)*)| <#self_ty>::#name(#(#idents),*),
            )
        }
    };
    let entry = quote! {
        ::troupe::__private::Constructor { name: #name_str, signature: #signature, spawn: #spawner },
    };
    Ok(Some((function, entry)))
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
/// `v`, `Err(e)` fails the task with `e`'s text (retried only with
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
    let num_returns = match parse_remote_attr(attr.into()) {
        Ok(n) => n,
        Err(err) => return err.to_compile_error().into(),
    };
    let func = parse_macro_input!(item as ItemFn);
    match expand_remote(&func, num_returns) {
        Ok(tokens) => tokens.into(),
        Err(err) => err.to_compile_error().into(),
    }
}

/// What `#[troupe::remote(..)]` was given: `num_returns` (1 by default), or
/// 0 for `generator`.
fn parse_remote_attr(attr: TokenStream2) -> syn::Result<usize> {
    if attr.is_empty() {
        return Ok(1);
    }
    if let Ok(ident) = syn::parse2::<syn::Ident>(attr.clone()) {
        if ident == "generator" {
            return Ok(GENERATOR);
        }
        return Err(syn::Error::new(
            ident.span(),
            "#[troupe::remote] takes `num_returns = N` or `generator`",
        ));
    }
    let pair: syn::MetaNameValue = syn::parse2(attr)?;
    if !pair.path.is_ident("num_returns") {
        return Err(syn::Error::new(
            pair.path.span(),
            "#[troupe::remote] takes only `num_returns = N` or `generator`; other options go in f::options(TaskOptions)",
        ));
    }
    let syn::Expr::Lit(syn::ExprLit {
        lit: syn::Lit::Int(n),
        ..
    }) = &pair.value
    else {
        return Err(syn::Error::new(
            pair.value.span(),
            "num_returns takes an integer",
        ));
    };
    let n: usize = n.base10_parse()?;
    if !(1..=4).contains(&n) {
        return Err(syn::Error::new(
            n.span(),
            "num_returns must be 1 to 4 (return a tuple of that many values)",
        ));
    }
    Ok(n)
}

/// `num_returns` value that stands for `generator`.
const GENERATOR: usize = 0;

/// `impl Iterator<Item = T>` or `impl Stream<Item = T>`: its `T`, and
/// whether it is a stream.
fn iterator_item(ty: &Type) -> Option<(&Type, bool)> {
    let Type::ImplTrait(imp) = ty else {
        return None;
    };
    imp.bounds.iter().find_map(|bound| {
        let syn::TypeParamBound::Trait(t) = bound else {
            return None;
        };
        let last = t.path.segments.last()?;
        let is_stream = last.ident == "Stream";
        if last.ident != "Iterator" && !is_stream {
            return None;
        }
        let PathArguments::AngleBracketed(args) = &last.arguments else {
            return None;
        };
        args.args.iter().find_map(|arg| match arg {
            GenericArgument::AssocType(assoc) if assoc.ident == "Item" => {
                Some((&assoc.ty, is_stream))
            }
            _ => None,
        })
    })
}

/// `Result<T, E>` (or an alias `Result<T>`): its `T`.
fn ok_type(ty: &Type) -> Option<&Type> {
    let Type::Path(path) = ty else { return None };
    let last = path.path.segments.last()?;
    if last.ident != "Result" {
        return None;
    }
    let PathArguments::AngleBracketed(args) = &last.arguments else {
        return None;
    };
    match args.args.first()? {
        GenericArgument::Type(t) => Some(t),
        _ => None,
    }
}

fn expand_remote(func: &ItemFn, num_returns: usize) -> syn::Result<TokenStream2> {
    let sig = &func.sig;
    if !sig.generics.params.is_empty() {
        return Err(syn::Error::new(
            sig.generics.span(),
            "remote functions cannot be generic: they are registered and run by name",
        ));
    }
    if let Some(FnArg::Receiver(r)) = sig.inputs.first() {
        return Err(syn::Error::new(
            r.span(),
            "#[troupe::remote] goes on a free function; for methods, use #[troupe::actor]",
        ));
    }
    let name = &sig.ident;
    let vis = &func.vis;
    let generator = num_returns == GENERATOR;
    if generator && sig.asyncness.is_some() {
        return Err(syn::Error::new(
            sig.asyncness.span(),
            "a generator is a plain fn returning impl Iterator<Item = T> (sync) or impl Stream<Item = T> (async); drop the `async`",
        ));
    }
    let (item_ty, streaming) = match (&sig.output, generator) {
        (ReturnType::Type(_, ty), true) => {
            let (item, streaming) = iterator_item(ty).ok_or_else(|| {
                syn::Error::new(
                    ty.span(),
                    "a generator returns impl Iterator<Item = T> or impl Stream<Item = T>",
                )
            })?;
            (Some(item), streaming)
        }
        (ReturnType::Default, true) => {
            return Err(syn::Error::new(
                sig.ident.span(),
                "a generator returns impl Iterator<Item = T> or impl Stream<Item = T>",
            ))
        }
        _ => (None, false),
    };
    let (result_ty, fallible): (TokenStream2, bool) = match &sig.output {
        _ if generator => (quote!(()), false),
        ReturnType::Default => (quote!(()), false),
        ReturnType::Type(_, ty) => {
            if matches!(**ty, Type::ImplTrait(_)) {
                return Err(syn::Error::new(
                    ty.span(),
                    "remote functions cannot return impl Trait: the result is stored by type",
                ));
            }
            match ok_type(ty) {
                Some(ok) => (quote!(#ok), true),
                None => (quote!(#ty), false),
            }
        }
    };
    // With num_returns = N the value is an N-tuple, returned as N refs.
    let refs_ty = if let Some(item) = item_ty {
        quote!(::troupe::ObjectStream<#item>)
    } else if num_returns == 1 {
        quote!(::troupe::ObjectRef<#result_ty>)
    } else {
        let value: Type = syn::parse2(result_ty.clone())?;
        let Type::Tuple(tuple) = &value else {
            return Err(syn::Error::new(
                value.span(),
                format!(
                    "num_returns = {num_returns} needs a function returning a {num_returns}-tuple"
                ),
            ));
        };
        if tuple.elems.len() != num_returns {
            return Err(syn::Error::new(
                tuple.span(),
                format!(
                    "num_returns = {num_returns}, but the function returns a {}-tuple",
                    tuple.elems.len()
                ),
            ));
        }
        let elems = tuple.elems.iter();
        quote!((#(::troupe::ObjectRef<#elems>,)*))
    };
    let mut params = Vec::new();
    let mut idents = Vec::new();
    for (i, input) in sig.inputs.iter().enumerate() {
        let FnArg::Typed(pat_ty) = input else {
            continue;
        };
        let ident = match &*pat_ty.pat {
            Pat::Ident(p) => p.ident.clone(),
            _ => format_ident!("__arg{}", i),
        };
        let ty = &pat_ty.ty;
        if matches!(**ty, Type::Reference(_)) {
            return Err(syn::Error::new(
                ty.span(),
                "remote function parameters are owned values (the task may run later, elsewhere); take T, not &T",
            ));
        }
        params.push((ident.clone(), (**ty).clone()));
        idents.push(ident);
    }
    let types: Vec<&Type> = params.iter().map(|(_, ty)| ty).collect();
    let arg_params: Vec<TokenStream2> = params
        .iter()
        .map(|(ident, ty)| quote!(#ident: impl ::troupe::IntoArg<#ty>))
        .collect();
    let indices: Vec<syn::Index> = (0..params.len()).map(syn::Index::from).collect();
    let is_async = sig.asyncness.is_some();
    let blocking = !is_async && !streaming;
    let call = if is_async {
        quote!(super::#name(#(#idents),*).await)
    } else {
        quote!(super::#name(#(#idents),*))
    };
    let finish = if fallible {
        quote! {
            match #call {
                ::std::result::Result::Ok(value) => ::std::result::Result::Ok(value),
                ::std::result::Result::Err(err) => {
                    #[allow(unused_imports)]
                    use ::troupe::__private::{DisplayError as _, TypedError as _};
                    ::std::result::Result::Err(::troupe::__private::Failure::Error(
                        (&::troupe::__private::ErrorOf::new(err)).to_cause(),
                    ))
                }
            }
        }
    } else {
        quote!(::std::result::Result::Ok(#call))
    };
    let returns = if generator {
        quote!(::troupe::__private::One<()>)
    } else if num_returns == 1 {
        quote!(::troupe::__private::One<#result_ty>)
    } else {
        quote!(::troupe::__private::Tuple<#result_ty>)
    };
    let item = match item_ty {
        Some(item) => quote!(#item),
        None => quote!(()),
    };
    let value_ty = if generator {
        quote!(())
    } else {
        quote!(#result_ty)
    };
    let resolve_now = quote! { #(let #idents = args.#indices.resolve_now(&start.store)?;)* };
    let resolve = quote! { #(let #idents = args.#indices.resolve(&store).await?;)* };
    let body = if let (true, true) = (generator, streaming) {
        // An async stream: consumed on the workers, each item stored and
        // its ref sent as it arrives.
        quote! {
            fn call_async(
                args: &Self::Args,
                start: &::troupe::__private::Start,
            ) -> ::troupe::__private::BoxFuture<'static, ::std::result::Result<(), ::troupe::__private::Failure>> {
                let args = ::std::clone::Clone::clone(args);
                let store = start.store.clone();
                let sink = start.sink().cloned();
                ::std::boxed::Box::pin(async move {
                    let sink = sink?;
                    #resolve
                    sink.run_stream(super::#name(#(#idents),*)).await
                })
            }
        }
    } else if generator {
        quote! {
            fn call_blocking(
                args: &Self::Args,
                start: &::troupe::__private::Start,
            ) -> ::std::result::Result<(), ::troupe::__private::Failure> {
                #resolve_now
                start.sink()?.run(super::#name(#(#idents),*))
            }
        }
    } else if is_async {
        quote! {
            fn call_async(
                args: &Self::Args,
                start: &::troupe::__private::Start,
            ) -> ::troupe::__private::BoxFuture<'static, ::std::result::Result<#value_ty, ::troupe::__private::Failure>> {
                let args = ::std::clone::Clone::clone(args);
                let store = start.store.clone();
                ::std::boxed::Box::pin(async move {
                    #resolve
                    #finish
                })
            }
        }
    } else {
        quote! {
            // A plain fn may block: it runs on a CPU thread, never on an
            // async worker; its arguments are settled before it starts.
            fn call_blocking(
                args: &Self::Args,
                start: &::troupe::__private::Start,
            ) -> ::std::result::Result<#value_ty, ::troupe::__private::Failure> {
                #resolve_now
                #finish
            }
        }
    };
    let submit = if generator {
        quote!(rt.submit_generator::<Function>(self.0, args))
    } else {
        quote!(rt.submit_fn::<Function>(self.0, args))
    };
    let signature = {
        let args: Vec<String> = types.iter().map(|t| quote!(#t).to_string()).collect();
        let out = if generator {
            quote!(stream of #item)
        } else {
            quote!(#result_ty)
        };
        format!("({}) -> {}", args.join(", "), out)
    };
    let doc = format!("Remote form of [`{name}()`](fn@{name}), generated by `#[troupe::remote]`.");

    Ok(quote! {
        #func

        #[doc = #doc]
        #[allow(non_snake_case)]
        #vis mod #name {
            #[allow(unused_imports)]
            use super::*;

            /// The function's stable name (its module path).
            pub const NAME: &str = module_path!();

            /// The function, as the runtime runs it (by value here, or by
            /// name from another node).
            #[doc(hidden)]
            pub struct Function;

            impl ::troupe::__private::RemoteFn for Function {
                const NAME: &'static str = NAME;
                const BLOCKING: bool = #blocking;
                const GENERATOR: bool = #generator;
                type Args = (#(::troupe::__private::Arg<#types>,)*);
                type Returns = #returns;
                type Item = #item;

                #[allow(unused_mut)]
                fn deps(args: &Self::Args) -> ::std::vec::Vec<::troupe::ObjectId> {
                    let mut deps = ::std::vec::Vec::new();
                    #(deps.extend(args.#indices.dependency());)*
                    deps
                }

                #body
            }

            ::troupe::__private::inventory::submit! {
                ::troupe::__private::RemoteFunction {
                    name: NAME,
                    signature: #signature,
                    returns: <Function as ::troupe::__private::RemoteFn>::RETURNS,
                    build: ::troupe::__private::build_task::<Function>,
                }
            }

            /// Submits the task with the default options (1 CPU, 3 retries)
            /// and returns a ref to its result at once.
            pub fn remote(rt: &::troupe::Runtime #(, #arg_params)*) -> #refs_ty {
                options(::troupe::TaskOptions::default()).remote(rt #(, #idents)*)
            }

            /// The task with other options (resources, retries).
            pub fn options(options: ::troupe::TaskOptions) -> Options {
                Options(options)
            }

            /// A remote function with options, ready to submit.
            pub struct Options(::troupe::TaskOptions);

            impl Options {
                /// Submits the task and returns a ref to its result at once.
                pub fn remote(self, rt: &::troupe::Runtime #(, #arg_params)*) -> #refs_ty {
                    let args = (#(::troupe::IntoArg::into_arg(#idents),)*);
                    #submit
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
