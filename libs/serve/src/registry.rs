//! Deployments registered by name ([`register_deployment!`]): what replicas
//! on other nodes of a cluster are built from, since a closure cannot
//! travel between processes but a name can (every node runs the same
//! program). Requests and responses cross between nodes as JSON, the same
//! encoding the HTTP proxy reads and writes.

use std::any::TypeId;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::deployment::{AnyRequest, AnyResponse, Codec, Deployment, ErasedDeployment, Typed};

/// A registered deployment, built: its code and how its values travel.
#[doc(hidden)]
pub struct Built {
    pub(crate) code: Box<dyn ErasedDeployment>,
}

impl std::fmt::Debug for Built {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Built").finish_non_exhaustive()
    }
}

/// What a registered deployment's type is, and how its values travel.
#[doc(hidden)]
#[derive(Clone, Copy)]
pub struct Types {
    pub(crate) type_id: TypeId,
    pub(crate) type_name: &'static str,
    pub(crate) codec: Codec,
    pub(crate) remote: RemoteCodec,
}

impl std::fmt::Debug for Types {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Types")
            .field("type_name", &self.type_name)
            .finish_non_exhaustive()
    }
}

/// The caller's side of a replica on another node: its requests encoded,
/// its responses decoded (JSON).
#[derive(Clone, Copy)]
pub(crate) struct RemoteCodec {
    pub(crate) encode_request: fn(&AnyRequest) -> Result<Vec<u8>, String>,
    pub(crate) decode_response: fn(&[u8]) -> Result<AnyResponse, String>,
}

impl RemoteCodec {
    /// JSON for `D`'s requests and responses, on the caller's side.
    pub(crate) fn of<D>() -> Self
    where
        D: Deployment,
        D::Request: Serialize,
        D::Response: DeserializeOwned,
    {
        RemoteCodec {
            encode_request: encode_request::<D>,
            decode_response: decode_response::<D>,
        }
    }
}

impl std::fmt::Debug for RemoteCodec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteCodec").finish_non_exhaustive()
    }
}

fn encode_request<D: Deployment>(request: &AnyRequest) -> Result<Vec<u8>, String>
where
    D::Request: Serialize,
{
    let request = request.downcast_ref::<D::Request>().ok_or_else(|| {
        format!(
            "a request of another type than {} reached the deployment",
            std::any::type_name::<D::Request>()
        )
    })?;
    serde_json::to_vec(request).map_err(|e| format!("the request does not encode as JSON: {e}"))
}

fn decode_response<D: Deployment>(bytes: &[u8]) -> Result<AnyResponse, String>
where
    D::Response: DeserializeOwned,
{
    serde_json::from_slice::<D::Response>(bytes)
        .map(|r| Box::new(r) as AnyResponse)
        .map_err(|e| {
            format!(
                "the replica's response does not decode as a {}: {e}",
                std::any::type_name::<D::Response>()
            )
        })
}

/// Builds a registered deployment's code (used by `register_deployment!`).
#[doc(hidden)]
pub fn built<D: Deployment>(code: D) -> Built {
    Built {
        code: Box::new(Typed(code)),
    }
}

/// A registered deployment's types (used by `register_deployment!`).
#[doc(hidden)]
pub fn types<D>() -> Types
where
    D: Deployment,
    D::Request: Serialize,
    D::Response: DeserializeOwned,
{
    Types {
        type_id: TypeId::of::<D>(),
        type_name: std::any::type_name::<D>(),
        codec: Codec::of::<D>(),
        remote: RemoteCodec::of::<D>(),
    }
}

/// A deployment registered by name, collected when the program is linked.
#[doc(hidden)]
#[derive(Debug)]
pub struct DeploymentRegistration {
    kind: &'static str,
    make: fn() -> Built,
    types: fn() -> Types,
}

impl DeploymentRegistration {
    #[doc(hidden)]
    pub const fn new(kind: &'static str, make: fn() -> Built, types: fn() -> Types) -> Self {
        DeploymentRegistration { kind, make, types }
    }
}

inventory::collect!(DeploymentRegistration);

/// Registers a deployment type under a kind name, when the program is
/// linked, so that its replicas can be built on any node of a cluster:
/// [`Serve::deploy_registered`](crate::Serve::deploy_registered) with
/// [`DeploymentOptions::replicas_on_cluster`](crate::DeploymentOptions::replicas_on_cluster),
/// or a config file's `kind`. Give the type and a closure that captures
/// nothing and builds one replica's value (called on the replica's node,
/// again after each restart). Its request must also be `Serialize` and its
/// response `Deserialize` (they cross between nodes as JSON). Write it at
/// the top level of a module; a kind must be registered once.
///
/// ```
/// use troupe_serve::{Deployment, HandlerError};
///
/// #[derive(Default)]
/// struct Doubler;
///
/// impl Deployment for Doubler {
///     type Request = i64;
///     type Response = i64;
///     async fn call(&mut self, x: i64) -> Result<i64, HandlerError> {
///         Ok(2 * x)
///     }
/// }
///
/// troupe_serve::register_deployment!("doubler", Doubler, Doubler::default);
///
/// assert!(troupe_serve::registered_deployments().contains(&"doubler"));
/// ```
#[macro_export]
macro_rules! register_deployment {
    ($kind:expr, $ty:ty, $make:expr $(,)?) => {
        const _: () = {
            fn __troupe_serve_make() -> $crate::__private::Built {
                let make = $make;
                let code: $ty = make();
                $crate::__private::built::<$ty>(code)
            }
            $crate::__private::inventory::submit! {
                $crate::__private::DeploymentRegistration::new(
                    $kind,
                    __troupe_serve_make,
                    $crate::__private::types::<$ty>,
                )
            }
        };
    };
}

/// The kinds registered with
/// [`register_deployment!`](crate::register_deployment) in this program,
/// sorted.
pub fn registered_deployments() -> Vec<&'static str> {
    let mut kinds: Vec<&'static str> = inventory::iter::<DeploymentRegistration>()
        .map(|r| r.kind)
        .collect();
    kinds.sort_unstable();
    kinds
}

/// A registered kind: how to build its code, and its types.
#[derive(Clone)]
pub(crate) struct Registered {
    pub(crate) make: Arc<dyn Fn() -> Box<dyn ErasedDeployment> + Send + Sync>,
    pub(crate) types: Types,
}

/// Why no registered deployment can be used for a kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Unregistered {
    /// No kind of that name.
    Unknown(String),
    /// Two registrations of that name.
    Twice(String),
}

impl std::fmt::Display for Unregistered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unregistered::Twice(kind) => write!(
                f,
                "the deployment kind {kind:?} is registered more than once (register_deployment!); give each a name of its own"
            ),
            Unregistered::Unknown(kind) => write!(
                f,
                "no deployment kind {kind:?} is registered in this program (registered: {}); register it with troupe_serve::register_deployment!, and run the same program on every node",
                registered_deployments().join(", ")
            ),
        }
    }
}

/// The deployment registered as `kind`, or why there is none to use.
pub(crate) fn registered(kind: &str) -> Result<Registered, Unregistered> {
    let mut found = inventory::iter::<DeploymentRegistration>().filter(|r| r.kind == kind);
    match (found.next(), found.next()) {
        (Some(one), None) => {
            let make = one.make;
            Ok(Registered {
                make: Arc::new(move || make().code),
                types: (one.types)(),
            })
        }
        (Some(_), Some(_)) => Err(Unregistered::Twice(kind.to_owned())),
        (None, _) => Err(Unregistered::Unknown(kind.to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::HandlerError;

    #[derive(Default)]
    struct Negate;

    impl Deployment for Negate {
        type Request = i64;
        type Response = i64;
        async fn call(&mut self, x: i64) -> Result<i64, HandlerError> {
            Ok(-x)
        }
    }

    crate::register_deployment!("RegistryTest-Negate", Negate, Negate::default);
    crate::register_deployment!("RegistryTest-Twice", Negate, Negate::default);
    crate::register_deployment!("RegistryTest-Twice", Negate, Negate::default);

    #[tokio::test]
    async fn a_registered_kind_builds_its_code_and_carries_its_values_as_json() {
        let found = registered("RegistryTest-Negate").unwrap();
        assert_eq!(found.types.type_id, TypeId::of::<Negate>());
        let mut code = (found.make)();
        // The caller's side encodes, the replica's side decodes, and back.
        let request: AnyRequest = Box::new(21_i64);
        let bytes = (found.types.remote.encode_request)(&request).unwrap();
        let decoded = (found.types.codec.decode)(&bytes).unwrap();
        let response = code.call(decoded).await.unwrap();
        let bytes = (found.types.codec.encode)(response).unwrap();
        let back = (found.types.remote.decode_response)(&bytes).unwrap();
        assert_eq!(*back.downcast::<i64>().unwrap(), -21);
        assert!(registered_deployments().contains(&"RegistryTest-Negate"));
    }

    #[test]
    fn an_unknown_or_twice_registered_kind_says_what_to_do() {
        let Err(unknown) = registered("RegistryTest-Nobody") else {
            panic!("an unknown kind is refused");
        };
        assert_eq!(unknown, Unregistered::Unknown("RegistryTest-Nobody".into()));
        assert!(
            unknown.to_string().contains("RegistryTest-Negate"),
            "lists the kinds"
        );
        let Err(twice) = registered("RegistryTest-Twice") else {
            panic!("a kind registered twice is refused");
        };
        assert!(twice.to_string().contains("more than once"), "{twice}");
    }
}
