//! The expansion of `#[troupe::actor]`.

use proc_macro2::TokenStream as TokenStream2;
use quote::{format_ident, quote};
use syn::spanned::Spanned;
use syn::{FnArg, ImplItem, ItemImpl, Pat, ReturnType, Type, Visibility};

use crate::concrete;

/// Whether a method carries `#[blocking]` (and removes it: it is ours).
fn take_blocking(method: &mut syn::ImplItemFn) -> bool {
    let before = method.attrs.len();
    method.attrs.retain(|a| !a.path().is_ident("blocking"));
    method.attrs.len() != before
}

pub(crate) fn expand(block: &ItemImpl) -> syn::Result<TokenStream2> {
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
    let mut typed_constructors = Vec::new();

    for item in &block.items {
        let ImplItem::Fn(method) = item else { continue };
        // Public and crate-visible methods are messages (a handle method
        // as visible as the method); private ones are helpers.
        if matches!(method.vis, Visibility::Inherited) {
            continue;
        }
        let vis = &method.vis;
        let sig = &method.sig;
        let Some(FnArg::Receiver(receiver)) = sig.inputs.first() else {
            if let Some((function, entry, typed)) =
                constructor(sig, vis, self_ty, &type_ident, &handle)?
            {
                constructors.push((function, entry));
                typed_constructors.push(typed);
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
            ) -> ::std::result::Result<::troupe::__private::EncodedReply, ::troupe::__private::Refusal> {
                (&::troupe::__private::Wire::<(#(#arg_types,)*), #output>::new()).method::<#self_ty>(
                    slot,
                    store,
                    bytes,
                    #name_str,
                    |handle: &#handle, (#(#args,)*): (#(#arg_types,)*)| handle.#name(#(#args),*),
                )
            }
        });
        entries.push(quote! {
            ::troupe::__private::Method { name: #name_str, signature: #signature, call: #dispatch },
        });
        // Borrowed types cannot travel, and the specialization that picks
        // serde types cannot tell them apart (lifetimes are erased when it
        // chooses): such methods refuse remote calls outright.
        let borrowed = std::iter::once(output.to_string())
            .chain(arg_types.iter().map(|t| quote!(#t).to_string()))
            .any(|t| t.contains('&') || t.contains('\''));
        let remote_branch = if borrowed {
            quote! {
                if let ::std::option::Option::Some(__remote) = self.0.remote_target() {
                    return ::troupe::Pending::ready(::std::result::Result::Err(::troupe::ActorError::BadCall {
                        actor: __remote.info_arc(),
                        method: #name_str.to_owned(),
                        problem: ::troupe::CallProblem::NotRemotable,
                        reason: "the actor is on another node, and this method borrows (its arguments or result hold references), so it cannot be called there".to_owned(),
                    }));
                }
            }
        } else {
            quote! {
                if let ::std::option::Option::Some(__remote) = self.0.remote_target() {
                    #[allow(unused_imports)]
                    use ::troupe::__private::{NoRemoteCall as _, RemoteCall as _};
                    return (&::troupe::__private::Wire::<(#(#arg_types,)*), #output>::new())
                        .remote_call(__remote, #name_str, (#(#args,)*));
                }
            }
        };
        methods.push(quote! {
            #(#docs)*
            ///
            /// Sends the call at once; await the result for the reply.
            #vis fn #name(&self #(, #params)*) -> ::troupe::Pending<#output> {
                // On another node: the call travels by name, its arguments
                // encoded (when they can be).
                #remote_branch
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
            "location",
            quote! {
                /// Where the actor lives now, as far as this handle knows (an
                /// actor on another node restarted elsewhere: its new node).
                pub fn location(&self) -> ::std::sync::Arc<::troupe::ActorInfo> { self.0.location() }
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

    // `Counter::remote(&rt, options).new(args)`: the constructors, typed,
    // for a spawn on the cluster (not generated if the block has its own
    // item named `remote`).
    let builder = format_ident!("{}Remote", type_ident);
    let has_remote = block.items.iter().any(|item| match item {
        ImplItem::Fn(f) => f.sig.ident == "remote",
        ImplItem::Const(c) => c.ident == "remote",
        _ => false,
    });
    let remote_entry = if has_remote || typed_constructors.is_empty() {
        quote!()
    } else {
        let builder_doc = format!("A spawn of a [`{type_ident}`] on the cluster, waiting for its constructor: `{type_ident}::remote(&rt, options).new(args)`.");
        let entry_doc = format!("Spawns a `{type_ident}` on a node of the cluster (placed by `options`): call one of its constructors on what this returns, with that constructor's own arguments.");
        quote! {
            #[doc = #builder_doc]
            #[must_use = "nothing is spawned until a constructor is called and awaited"]
            pub struct #builder<'a> {
                rt: &'a ::troupe::Runtime,
                options: ::troupe::ActorOptions,
            }

            impl #self_ty {
                #[doc = #entry_doc]
                pub fn remote(rt: &::troupe::Runtime, options: ::troupe::ActorOptions) -> #builder<'_> {
                    #builder { rt, options }
                }
            }

            impl<'a> #builder<'a> {
                #(#typed_constructors)*
            }
        }
    };
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

        // A handle travels inside task arguments, calls and objects.
        impl ::troupe::__private::serde::Serialize for #handle {
            fn serialize<S: ::troupe::__private::serde::Serializer>(
                &self,
                serializer: S,
            ) -> ::std::result::Result<S::Ok, S::Error> {
                ::troupe::__private::serde::Serialize::serialize(&self.0, serializer)
            }
        }

        impl<'de> ::troupe::__private::serde::Deserialize<'de> for #handle {
            fn deserialize<D: ::troupe::__private::serde::Deserializer<'de>>(
                deserializer: D,
            ) -> ::std::result::Result<Self, D::Error> {
                <::troupe::ActorHandle<#self_ty> as ::troupe::__private::serde::Deserialize<'de>>::deserialize(deserializer)
                    .map(Self)
            }
        }

        impl ::troupe::GetSize for #handle {}

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

        #remote_entry
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
    vis: &Visibility,
    self_ty: &Type,
    type_ident: &syn::Ident,
    handle: &syn::Ident,
) -> syn::Result<Option<(TokenStream2, TokenStream2, TokenStream2)>> {
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
    let doc = format!(
        "Spawns the actor on a node of the cluster through its constructor `{name_str}`, with the constructor's own arguments (encoded; one that cannot be fails with `SpawnError::BadArguments`)."
    );
    let typed = quote! {
        #[doc = #doc]
        #vis fn #name(
            self
            #(, #idents: #types)*
        ) -> ::troupe::__private::BoxFuture<'static, ::std::result::Result<#handle, ::troupe::SpawnError>> {
            #[allow(unused_imports)]
            use ::troupe::__private::{ByNameNew as _, NotByNameNew as _};
            (&::troupe::__private::WireNew::<(#(#types,)*)>::new())
                .spawn_remote::<#self_ty>(self.rt, self.options, #name_str, (#(#idents,)*))
        }
    };
    Ok(Some((function, entry, typed)))
}
