//! Tensors and bytes seen as each other without a copy, for the
//! collectives over the transport (`mesh.rs`).
//!
//! Why: a chunk of an all-reduce across nodes was copied six times on its
//! way (into a vector, into the store, out of the received blob into a
//! fresh tensor, into the chunk, into the sum, into the result). On two
//! cores shared by both ranks those copies, not the wire, set the speed.
//! Sending now copies the tensor's bytes once, into a pooled store buffer;
//! receiving reads the store's buffer in place as the operand of the sum
//! or of the copy into the result.
//!
//! This is the crate's only `unsafe` code: two views, each checked before
//! it is made (CPU, contiguous, the byte count, the alignment) and each
//! tied to the memory it views.

#![allow(unsafe_code)]

use std::sync::Arc;

use tch::{Device, Kind, Tensor};
use troupe::Blob;

use crate::error::TrainError;

/// The bytes of `t`, borrowed: `t` must be a contiguous CPU tensor
/// (callers move and compact it first), and nothing may write to its
/// storage while the slice lives.
pub(crate) fn bytes_of(t: &Tensor) -> Result<&[u8], TrainError> {
    if t.device() != Device::Cpu || !t.is_contiguous() {
        return Err(TrainError::Transport(format!(
            "a chunk to send must be a contiguous CPU tensor, not {:?} on {:?}",
            t.size(),
            t.device()
        )));
    }
    let len = t.numel() * t.kind().elt_size_in_bytes();
    if len == 0 {
        return Ok(&[]);
    }
    let data = t.data_ptr() as *const u8;
    // SAFETY: a contiguous CPU tensor's `numel * elt_size` bytes from its
    // data pointer are its initialized elements (libtorch allocates a
    // storage of at least that size, aligned, and keeps it while `t` holds
    // a reference to it). The slice borrows `t`, so `t`'s reference lasts
    // as long as the slice; the callers only read the tensor while they
    // hold the slice (its bytes are copied into the store at once).
    Ok(unsafe { std::slice::from_raw_parts(data, len) })
}

/// A tensor over a received blob's bytes. The tensor does not own its
/// memory: this value keeps the blob alive, and the tensor is only lent
/// out as a read operand (`&Tensor`), never written to.
pub(crate) struct BlobTensor {
    // Dropped before `_bytes` (fields drop in order): the view never
    // outlives the memory it reads.
    tensor: Tensor,
    _bytes: Arc<Blob>,
}

impl BlobTensor {
    /// `len` elements of `kind` over `bytes` (checked to be that many
    /// bytes). Bytes not aligned for `kind` are copied into a tensor of
    /// their own instead (store buffers are always aligned; this is the
    /// safe way out should one not be).
    pub(crate) fn new(bytes: Arc<Blob>, len: i64, kind: Kind) -> Result<Self, TrainError> {
        let elt = kind.elt_size_in_bytes();
        let expected = usize::try_from(len).unwrap_or(0) * elt;
        if bytes.len() != expected {
            return Err(TrainError::Mismatch(format!(
                "received {} bytes where {len} elements of {kind:?} take {expected}",
                bytes.len()
            )));
        }
        let data = bytes.as_ptr();
        let tensor = if expected == 0 {
            Tensor::f_empty([0], (kind, Device::Cpu))?
        } else if (data as usize) % elt != 0 {
            Tensor::f_from_data_size(&bytes, &[len], kind)?
        } else {
            // SAFETY: `data` points to `expected` = `len * elt` initialized
            // bytes (checked above), aligned for `kind` (checked above), in
            // a blob this value holds until after the tensor is dropped
            // (field order). Blob bytes are immutable and the tensor is
            // only ever read: `tensor()` lends it as `&Tensor`, and its
            // callers use it as the source of a copy or a sum, never as
            // the target, nor `shallow_clone` it.
            unsafe { Tensor::f_from_blob(data, &[len], &[1], kind, Device::Cpu)? }
        };
        Ok(BlobTensor {
            tensor,
            _bytes: bytes,
        })
    }

    /// The view, to read.
    pub(crate) fn tensor(&self) -> &Tensor {
        &self.tensor
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_view_reads_the_bytes_a_tensor_was_sent_as() {
        for kind in [Kind::Float, Kind::Double, Kind::Int64, Kind::Uint8] {
            let t = Tensor::arange(1000, (Kind::Double, Device::Cpu)).to_kind(kind);
            let bytes = Arc::new(Blob::from(bytes_of(&t).expect("bytes").to_vec()));
            let view = BlobTensor::new(bytes, 1000, kind).expect("a view");
            assert!(view.tensor().equal(&t), "{kind:?}");
        }
        let empty = Tensor::f_empty([0], (Kind::Float, Device::Cpu)).expect("empty");
        assert!(bytes_of(&empty).expect("bytes").is_empty());
        let view = BlobTensor::new(Arc::new(Blob::from(Vec::new())), 0, Kind::Float);
        assert_eq!(view.expect("a view").tensor().numel(), 0);
    }

    #[test]
    fn a_wrong_byte_count_or_layout_is_an_error_not_a_read() {
        let bytes = Arc::new(Blob::from(vec![0u8; 10]));
        assert!(matches!(
            BlobTensor::new(bytes, 3, Kind::Float),
            Err(TrainError::Mismatch(_))
        ));
        let t = Tensor::arange(6, (Kind::Float, Device::Cpu)).view([2, 3]);
        assert!(
            bytes_of(&t.tr()).is_err(),
            "a transposed view is not contiguous"
        );
    }
}
