//! The expansion of `#[troupe::remote]`.

use proc_macro2::TokenStream as TokenStream2;
use quote::{format_ident, quote};
use syn::spanned::Spanned;
use syn::{FnArg, GenericArgument, ItemFn, Pat, PathArguments, ReturnType, Type};

/// What `#[troupe::remote(..)]` was given: `num_returns` (1 by default), or
/// 0 for `generator`.
pub(crate) fn parse_remote_attr(attr: TokenStream2) -> syn::Result<usize> {
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

pub(crate) fn expand_remote(func: &ItemFn, num_returns: usize) -> syn::Result<TokenStream2> {
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
                    keep_copy: ::troupe::__private::keep_copy::<Function>,
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
