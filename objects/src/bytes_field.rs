//! A `Vec<u8>` field as serde bytes: `#[serde(with = "troupe_objects::bytes_field")]`.
//!
//! Serde writes a plain `Vec<u8>` as a sequence, one element at a time:
//! postcard then pushes each byte through its serializer, which for the
//! 100 KiB a frame may carry inline costs far more than the copy (and
//! held a node's cluster thread for over a second in a debug build). As
//! bytes it is one length and one copy each way. postcard writes both the
//! same (a varint length, then the bytes), so the wire does not change; a
//! format that writes bytes as a list of numbers (JSON) is read back too.

use std::fmt;

use serde::{Deserializer, Serializer};

/// Writes `bytes` as serde bytes.
pub fn serialize<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_bytes(bytes)
}

/// Reads serde bytes, or a sequence of `u8`, into a `Vec<u8>`.
pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
    deserializer.deserialize_byte_buf(BytesVisitor)
}

/// Accepts bytes however the format hands them over.
pub(crate) struct BytesVisitor;

impl<'de> serde::de::Visitor<'de> for BytesVisitor {
    type Value = Vec<u8>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("bytes")
    }

    fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
        Ok(v.to_vec())
    }

    fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
        Ok(v)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
        // A hostile length must not reserve memory the input does not hold.
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 20));
        while let Some(b) = seq.next_element()? {
            out.push(b);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use serde::{Deserialize, Serialize};

    #[derive(Serialize, Deserialize, PartialEq, Debug)]
    struct AsSeq {
        bytes: Vec<u8>,
        tail: u32,
    }

    #[derive(Serialize, Deserialize, PartialEq, Debug)]
    struct AsBytes {
        #[serde(with = "super")]
        bytes: Vec<u8>,
        tail: u32,
    }

    #[test]
    fn the_wire_is_the_same_as_a_plain_vec_and_reads_back() {
        for len in [0usize, 1, 127, 128, 300, 100 << 10] {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
            let plain = postcard::to_allocvec(&AsSeq {
                bytes: bytes.clone(),
                tail: 7,
            })
            .unwrap();
            let fast = postcard::to_allocvec(&AsBytes {
                bytes: bytes.clone(),
                tail: 7,
            })
            .unwrap();
            assert_eq!(plain, fast, "{len} bytes");
            let back: AsBytes = postcard::from_bytes(&plain).unwrap();
            assert_eq!(back.bytes, bytes);
            assert_eq!(back.tail, 7);
        }
    }

    #[test]
    fn a_format_that_writes_a_list_reads_back_and_a_short_input_is_an_error() {
        let value = AsBytes {
            bytes: vec![1, 2, 255],
            tail: 9,
        };
        let json = serde_json::to_string(&value).unwrap();
        assert_eq!(serde_json::from_str::<AsBytes>(&json).unwrap(), value);
        let wire = postcard::to_allocvec(&value).unwrap();
        assert!(postcard::from_bytes::<AsBytes>(&wire[..2]).is_err());
        // A length far past the input: an error, not an allocation.
        assert!(postcard::from_bytes::<AsBytes>(&[0xff, 0xff, 0xff, 0x7f, 1]).is_err());
    }
}
