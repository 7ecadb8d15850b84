//! Global ids: unique across nodes, serializable, no process-local meaning.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A node (one runtime). Random at start, so ids from different nodes never
/// collide without coordination.
///
/// In human-readable formats (JSON) it is its 16 hex digits, as it
/// displays: a random 64-bit number does not survive JavaScript's doubles
/// (a dashboard, `jq`). Binary formats (postcard, the wire) keep the `u64`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(pub u64);

impl Serialize for NodeId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if serializer.is_human_readable() {
            serializer.collect_str(self)
        } else {
            serializer.serialize_u64(self.0)
        }
    }
}

impl<'de> Deserialize<'de> for NodeId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = NodeId;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a node id: 16 hex digits, or a u64")
            }
            fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<NodeId, E> {
                Ok(NodeId(n))
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<NodeId, E> {
                u64::from_str_radix(s, 16)
                    .map(NodeId)
                    .map_err(|_| E::custom(format_args!("{s:?} is not a node id (16 hex digits)")))
            }
        }
        if deserializer.is_human_readable() {
            deserializer.deserialize_any(Visitor)
        } else {
            deserializer.deserialize_u64(Visitor)
        }
    }
}

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

/// A fast hasher for Troupe's ids (a node's random id and a counter), keyed
/// per map with random keys: ids from a peer cannot be chosen to collide
/// without knowing the keys, and hashing one costs a few multiplications
/// instead of SipHash's rounds (measured: about 300 instructions saved per
/// put and drop of an object).
#[derive(Clone, Debug)]
pub struct IdHasher {
    state: u64,
}

impl std::hash::Hasher for IdHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(word));
        }
    }

    fn write_u64(&mut self, x: u64) {
        self.state = (self.state ^ x)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
            .rotate_left(29);
    }

    fn finish(&self) -> u64 {
        let h = self.state;
        (h ^ (h >> 32)).wrapping_mul(0xD6E8_FEB8_6659_FD93) ^ (h >> 29)
    }
}

/// Builds [`IdHasher`]s with a random key of its own.
#[derive(Clone, Debug)]
pub struct IdHashing {
    key: u64,
}

impl Default for IdHashing {
    fn default() -> Self {
        use std::hash::{BuildHasher, Hasher};
        // A random key from the OS-seeded std hasher (no extra dependency).
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(0x5eed);
        Self { key: h.finish() }
    }
}

impl std::hash::BuildHasher for IdHashing {
    type Hasher = IdHasher;
    fn build_hasher(&self) -> IdHasher {
        IdHasher { state: self.key }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::hash::BuildHasher;

    #[test]
    fn sequential_ids_spread_over_the_hash_space() {
        let hashing = IdHashing::default();
        let node = NodeId::random();
        let hashes: HashSet<u64> = (0..100_000u64)
            .map(|seq| hashing.hash_one(ObjectId { node, seq }))
            .collect();
        assert_eq!(hashes.len(), 100_000, "no collision among sequential ids");
        // The low bits (what a table indexes with) take every value.
        let low: HashSet<u64> = hashes.iter().map(|h| h & 0xff).collect();
        assert_eq!(low.len(), 256);
        // Another map has another key.
        let other = IdHashing::default();
        assert_ne!(
            hashing.hash_one(ObjectId { node, seq: 1 }),
            other.hash_one(ObjectId { node, seq: 1 })
        );
    }

    #[test]
    fn node_ids_are_hex_strings_in_json_and_u64s_on_the_wire() {
        let id = ObjectId {
            node: NodeId(u64::MAX - 1),
            seq: 7,
        };
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, r#"{"node":"fffffffffffffffe","seq":7}"#);
        assert_eq!(serde_json::from_str::<ObjectId>(&json).unwrap(), id);
        // Numbers are still accepted (what older JSON said).
        let old: NodeId = serde_json::from_str("42").unwrap();
        assert_eq!(old, NodeId(42));
        let bytes = postcard::to_allocvec(&id).unwrap();
        assert_eq!(postcard::from_bytes::<ObjectId>(&bytes).unwrap(), id);
        assert!(bytes.len() <= 12, "a varint, not a string: {bytes:?}");
    }

    #[test]
    fn a_malformed_node_id_is_a_clear_error() {
        let err = serde_json::from_str::<NodeId>(r#""not hex""#).unwrap_err();
        assert!(err.to_string().contains("not a node id"), "{err}");
    }
}
