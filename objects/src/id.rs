//! Global ids: unique across nodes, serializable, no process-local meaning.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A node (one runtime). Random at start, so ids from different nodes never
/// collide without coordination.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct NodeId(pub u64);

impl NodeId {
    /// A fresh random node id (from the OS-seeded std hasher: no extra
    /// dependency, and uniqueness, not secrecy, is what matters).
    pub fn random() -> Self {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
        );
        h.write_u32(std::process::id());
        Self(h.finish())
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// An object: the node that created it and a sequence number there.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ObjectId {
    /// Where it was created (its owner).
    pub node: NodeId,
    /// Its number on that node.
    pub seq: u64,
}

impl fmt::Display for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "obj-{}-{}", self.node, self.seq)
    }
}

// Ids hold no heap memory: storable as parts of objects.
impl get_size2::GetSize for NodeId {}
impl get_size2::GetSize for ObjectId {}
