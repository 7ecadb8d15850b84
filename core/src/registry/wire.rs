//! Calls by name, for generated code: decoding and encoding only where the
//! types allow it (autoref specialization: `(&Wire::<Args, R>::new())`
//! picks `ByName` when `Args: DeserializeOwned` and `R: Serialize`, and
//! `NotByName`, which explains, otherwise).

use super::*;

/// Marker for the call-by-name specialization. Used by generated code.
#[doc(hidden)]
pub struct Wire<Args, R>(std::marker::PhantomData<fn(Args) -> R>);

impl<Args, R> Wire<Args, R> {
    pub fn new() -> Self {
        Wire(std::marker::PhantomData)
    }
}

impl<Args, R> Default for Wire<Args, R> {
    fn default() -> Self {
        Self::new()
    }
}

#[doc(hidden)]
pub trait ByName<Args, R> {
    fn method<A: Actor>(
        &self,
        slot: Arc<dyn Any + Send + Sync>,
        store: &ObjectStore,
        bytes: &[u8],
        name: &'static str,
        call: impl FnOnce(&A::Handle, Args) -> crate::actor::Pending<R>,
    ) -> Result<EncodedReply, Refusal>;
}

impl<Args, R> ByName<Args, R> for Wire<Args, R>
where
    Args: DeserializeOwned + Send + 'static,
    R: Serialize + Send + 'static,
{
    fn method<A: Actor>(
        &self,
        slot: Arc<dyn Any + Send + Sync>,
        store: &ObjectStore,
        bytes: &[u8],
        name: &'static str,
        call: impl FnOnce(&A::Handle, Args) -> crate::actor::Pending<R>,
    ) -> Result<EncodedReply, Refusal> {
        let handle = crate::actor::handle_from_slot::<A>(slot).ok_or_else(|| {
            let reason = format!("the actor is not a {}", A::NAME);
            (CallProblem::NoSuchMethod, reason)
        })?;
        let info = handle.info_arc();
        let args: Args = store.decode(bytes).map_err(|e| {
            let reason = format!("its arguments did not decode: {e}");
            (CallProblem::Arguments, reason)
        })?;
        let pending = call(&A::Handle::from(handle), args);
        Ok(Box::pin(async move {
            let value = pending.await?;
            Encoded::of(&value).map_err(|e| ActorError::BadCall {
                actor: info,
                method: name.to_owned(),
                problem: CallProblem::Result,
                reason: format!("its result did not encode: {e}"),
            })
        }))
    }
}

#[doc(hidden)]
pub trait NotByName<Args, R> {
    fn method<A: Actor>(
        &self,
        slot: Arc<dyn Any + Send + Sync>,
        store: &ObjectStore,
        bytes: &[u8],
        name: &'static str,
        call: impl FnOnce(&A::Handle, Args) -> crate::actor::Pending<R>,
    ) -> Result<EncodedReply, Refusal>;
}

impl<Args, R> NotByName<Args, R> for &Wire<Args, R> {
    fn method<A: Actor>(
        &self,
        _: Arc<dyn Any + Send + Sync>,
        _: &ObjectStore,
        _: &[u8],
        _: &'static str,
        _: impl FnOnce(&A::Handle, Args) -> crate::actor::Pending<R>,
    ) -> Result<EncodedReply, Refusal> {
        let reason = format!(
            "its arguments ({}) or result ({}) are not serializable, so it cannot be called by name; make them Serialize + Deserialize + Clone",
            std::any::type_name::<Args>(),
            std::any::type_name::<R>()
        );
        Err((CallProblem::NotRemotable, reason))
    }
}

/// Calls a method of an actor on another node, its arguments encoded (when
/// they and the result are serde types). Used by generated code.
#[doc(hidden)]
pub trait RemoteCall<Args, R> {
    fn remote_call(
        &self,
        remote: &Arc<crate::actor::RemoteActor>,
        method: &'static str,
        args: Args,
    ) -> crate::actor::Pending<R>;
}

impl<Args, R> RemoteCall<Args, R> for Wire<Args, R>
where
    Args: Serialize,
    R: DeserializeOwned + Send + 'static,
{
    fn remote_call(
        &self,
        remote: &Arc<crate::actor::RemoteActor>,
        method: &'static str,
        args: Args,
    ) -> crate::actor::Pending<R> {
        remote.call::<Args, R>(method, &args)
    }
}

/// The fallback of [`RemoteCall`]: types that cannot travel. Used by
/// generated code.
#[doc(hidden)]
pub trait NoRemoteCall<Args, R> {
    fn remote_call(
        &self,
        remote: &Arc<crate::actor::RemoteActor>,
        method: &'static str,
        args: Args,
    ) -> crate::actor::Pending<R>;
}

impl<Args, R> NoRemoteCall<Args, R> for &Wire<Args, R> {
    fn remote_call(
        &self,
        remote: &Arc<crate::actor::RemoteActor>,
        method: &'static str,
        _: Args,
    ) -> crate::actor::Pending<R> {
        crate::actor::Pending::ready(Err(ActorError::BadCall {
            actor: remote.info_arc(),
            method: method.to_owned(),
            problem: CallProblem::NotRemotable,
            reason: format!(
                "the actor is on another node, and this method's arguments ({}) or result ({}) are not serde types, so they cannot travel",
                std::any::type_name::<Args>(),
                std::any::type_name::<R>()
            ),
        }))
    }
}

/// Marker for the spawn-by-name specialization. Used by generated code.
#[doc(hidden)]
pub struct WireNew<Args>(std::marker::PhantomData<fn(Args)>);

impl<Args> WireNew<Args> {
    pub fn new() -> Self {
        WireNew(std::marker::PhantomData)
    }
}

impl<Args> Default for WireNew<Args> {
    fn default() -> Self {
        Self::new()
    }
}

#[doc(hidden)]
pub trait ByNameNew<Args> {
    fn constructor<A: Actor>(
        &self,
        rt: &Runtime,
        options: ActorOptions,
        bytes: &[u8],
        new: fn(Args) -> A,
    ) -> Result<BoxFuture<'static, Result<ActorId, SpawnError>>, String>;

    /// Spawns `A` on the cluster through its constructor `name` (what the
    /// typed `A::remote(&rt, options).name(args)` calls).
    fn spawn_remote<A: Actor>(
        &self,
        rt: &Runtime,
        options: ActorOptions,
        name: &'static str,
        args: Args,
    ) -> BoxFuture<'static, Result<A::Handle, SpawnError>>;
}

impl<Args> ByNameNew<Args> for WireNew<Args>
where
    Args: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
{
    fn spawn_remote<A: Actor>(
        &self,
        rt: &Runtime,
        options: ActorOptions,
        name: &'static str,
        args: Args,
    ) -> BoxFuture<'static, Result<A::Handle, SpawnError>> {
        let rt = rt.clone();
        Box::pin(async move { rt.spawn_remote::<A>(options, name, &args).await })
    }

    fn constructor<A: Actor>(
        &self,
        rt: &Runtime,
        options: ActorOptions,
        bytes: &[u8],
        new: fn(Args) -> A,
    ) -> Result<BoxFuture<'static, Result<ActorId, SpawnError>>, String> {
        let args: Args = rt
            .objects()
            .decode(bytes)
            .map_err(|e| format!("its arguments did not decode: {e}"))?;
        let rt = rt.clone();
        Ok(Box::pin(async move {
            // A restart calls the constructor again with the same arguments.
            let factory = Factory::Sync(Arc::new(move || new(args.clone())));
            // Not collected when handles drop: its owner, elsewhere, stops it.
            let handle = rt.spawn_inner::<A>(options, factory, false).await?;
            Ok(handle.id())
        }))
    }
}

#[doc(hidden)]
pub trait NotByNameNew<Args> {
    fn constructor<A: Actor>(
        &self,
        rt: &Runtime,
        options: ActorOptions,
        bytes: &[u8],
        new: fn(Args) -> A,
    ) -> Result<BoxFuture<'static, Result<ActorId, SpawnError>>, String>;

    /// The constructor's arguments cannot travel: an error that says so.
    fn spawn_remote<A: Actor>(
        &self,
        rt: &Runtime,
        options: ActorOptions,
        name: &'static str,
        args: Args,
    ) -> BoxFuture<'static, Result<A::Handle, SpawnError>>;
}

impl<Args> NotByNameNew<Args> for &WireNew<Args> {
    fn spawn_remote<A: Actor>(
        &self,
        _: &Runtime,
        _: ActorOptions,
        name: &'static str,
        _: Args,
    ) -> BoxFuture<'static, Result<A::Handle, SpawnError>> {
        let err = SpawnError::BadArguments {
            constructor: format!("{}::{name}", A::NAME),
            cause: format!(
                "its arguments ({}) are not serializable and cloneable, so it cannot be spawned on another node; make them Serialize + Deserialize + Clone",
                std::any::type_name::<Args>()
            ),
        };
        Box::pin(async move { Err(err) })
    }

    fn constructor<A: Actor>(
        &self,
        _: &Runtime,
        _: ActorOptions,
        _: &[u8],
        _: fn(Args) -> A,
    ) -> Result<BoxFuture<'static, Result<ActorId, SpawnError>>, String> {
        Err(format!(
            "its arguments ({}) are not serializable and cloneable, so it cannot be spawned by name; make them Serialize + Deserialize + Clone",
            std::any::type_name::<Args>()
        ))
    }
}
