//! Tensors as objects: put in the store, passed to tasks and actors, and
//! returned, without copying their data inside a process.
//!
//! # Serialized form
//!
//! Used when the store spills a tensor to disk (and, later, to send it to
//! another node). It is the postcard encoding of the tuple
//! `(version: u8, dtype: u8, shape: Vec<u64>, data: bytes)`, that is:
//!
//! | field   | encoding                                             |
//! |---------|------------------------------------------------------|
//! | version | one byte, `1`                                        |
//! | dtype   | one byte, from the table below                       |
//! | shape   | varint dimension count, then one varint per dimension |
//! | data    | varint byte length, then the elements: row-major, contiguous, little-endian |
//!
//! dtype codes: 0 uint8, 1 int8, 2 int16, 3 int32, 4 int64, 5 float16,
//! 6 float32, 7 float64, 8 complex32, 9 complex64, 10 complex128, 11 bool
//! (each byte 0 or 1), 12 bfloat16, 13 float8_e5m2, 14 float8_e4m3fn,
//! 15 float8_e5m2fnuz, 16 float8_e4m3fnuz. Quantized tensors have no
//! serialized form. Strides, the device and `requires_grad` are not kept: a
//! decoded tensor is contiguous, on the CPU, and detached.
//!
//! Decoding checks everything (version, dtype, that the byte count is the
//! shape's, bool bytes) and fails with an error, never a panic.

use std::fmt;
use std::marker::PhantomData;
use std::ops::Deref;
use std::sync::{Mutex, MutexGuard};

use serde::de::{self, DeserializeSeed, SeqAccess, Visitor};
use serde::ser::SerializeTuple;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use tch::kind::Element;
use tch::{Device, Kind, Tensor};
use troupe_core::GetSize;

use crate::GpuError;

#[cfg(target_endian = "big")]
compile_error!("the tensor layout is little-endian; big-endian targets are not supported");

/// The version byte of the serialized form.
const FORMAT: u8 = 1;

const KINDS: [Kind; 17] = [
    Kind::Uint8,
    Kind::Int8,
    Kind::Int16,
    Kind::Int,
    Kind::Int64,
    Kind::Half,
    Kind::Float,
    Kind::Double,
    Kind::ComplexHalf,
    Kind::ComplexFloat,
    Kind::ComplexDouble,
    Kind::Bool,
    Kind::BFloat16,
    Kind::Float8e5m2,
    Kind::Float8e4m3fn,
    Kind::Float8e5m2fnuz,
    Kind::Float8e4m3fnuz,
];

fn code_of(kind: Kind) -> Option<u8> {
    KINDS.iter().position(|k| *k == kind).map(|i| i as u8)
}

fn kind_of(code: u8) -> Option<Kind> {
    KINDS.get(usize::from(code)).copied()
}

fn kind_name(kind: Kind) -> String {
    format!("{kind:?}")
}

/// A `tch::Tensor` as an object: put it in the store, pass it to tasks and
/// actors, return it. Any dtype; see [`TypedTensor`] for one checked dtype.
///
/// Within a process nothing copies the data: `put` moves the tensor in,
/// `get` shares it, and readers take [`view`](Self::view)s: tensors of
/// their own (their own shape, strides and autograd state, detached) over
/// the same storage. A reader can therefore never change another reader's
/// tensor object (`set_requires_grad`, `backward`, resizing): only the
/// shared data, and only by an in-place operation on its own view, which
/// every reader would then see. Call [`deep_copy`](Self::deep_copy) to get
/// data you may modify.
///
/// ```
/// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let rt = troupe_core::init(troupe_core::Config::default()).await?;
/// use troupe_gpu::TensorObject;
/// let t = tch::Tensor::from_slice(&[1.0f32, 2.0, 3.0]);
/// let address = t.data_ptr();
/// let r = rt.put(TensorObject::from(t)).await?; // moved in, not copied
/// let back = rt.get(&r).await?;                  // shared, not copied
/// assert_eq!(back.size(), vec![3]);
/// assert_eq!(back.view().data_ptr(), address);
/// # rt.shutdown().await?;
/// # Ok(()) }
/// ```
pub struct TensorObject(Mutex<Tensor>);

// No `unsafe impl Sync`: tch's `Tensor` is `Send` but not `Sync` (some of
// its `&self` methods change the tensor object: autograd state, `backward`),
// so shared access goes through a mutex, held only to read metadata or to
// make a view.

impl TensorObject {
    fn lock(&self) -> MutexGuard<'_, Tensor> {
        // libtorch calls under this lock do not unwind into it; a poisoned
        // lock still guards a whole tensor.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A tensor of your own over the same data (no copy): detached, so
    /// autograd on it touches nothing shared.
    pub fn view(&self) -> Tensor {
        self.lock().detach()
    }

    /// Takes the tensor out.
    pub fn into_tensor(self) -> Tensor {
        self.0.into_inner().unwrap_or_else(|e| e.into_inner())
    }

    /// A copy of the data, safe to modify in place.
    pub fn deep_copy(&self) -> Tensor {
        self.lock().detach().copy()
    }

    /// The element type.
    pub fn kind(&self) -> Kind {
        self.lock().kind()
    }

    /// The shape.
    pub fn size(&self) -> Vec<i64> {
        self.lock().size()
    }

    /// Where the data lives.
    pub fn device(&self) -> Device {
        self.lock().device()
    }

    /// The number of elements.
    pub fn numel(&self) -> usize {
        self.lock().numel()
    }

    /// The bytes the data takes (elements times element size).
    pub fn nbytes(&self) -> usize {
        let t = self.lock();
        t.numel() * t.kind().elt_size_in_bytes()
    }
}

impl From<Tensor> for TensorObject {
    fn from(tensor: Tensor) -> Self {
        TensorObject(Mutex::new(tensor))
    }
}

impl Clone for TensorObject {
    /// A view over the same data, as a task argument should get.
    fn clone(&self) -> Self {
        TensorObject::from(self.view())
    }
}

impl fmt::Debug for TensorObject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = self.lock();
        f.debug_struct("TensorObject")
            .field("kind", &t.kind())
            .field("size", &t.size())
            .field("device", &t.device())
            .finish()
    }
}

impl GetSize for TensorObject {
    /// Host memory only: the store's budget is the host's; a CUDA tensor's
    /// data lives on its device.
    fn get_heap_size_with_tracker<T: troupe_core::GetSizeTracker>(&self, tracker: T) -> (usize, T) {
        let host = match self.device() {
            Device::Cpu => self.nbytes(),
            _ => 0,
        };
        (host, tracker)
    }
}

/// Raw bytes, serialized as one byte string (not a sequence of numbers).
struct Bytes<'a>(&'a [u8]);

impl Serialize for Bytes<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(self.0)
    }
}

impl Serialize for TensorObject {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::Error;
        let view = self.view();
        let kind = view.kind();
        let code = code_of(kind)
            .ok_or_else(|| S::Error::custom(GpuError::UnsupportedDtype(kind_name(kind))))?;
        // Contiguous and on the CPU: the same tensor when it already is.
        let host = view
            .f_to_device(Device::Cpu)
            .and_then(|t| t.f_contiguous())
            .map_err(|e| S::Error::custom(GpuError::from(e)))?;
        let numel = host.numel();
        let mut data = vec![0u8; numel * kind.elt_size_in_bytes()];
        // libtorch copies the bytes out: no raw view of memory that a view
        // elsewhere could be writing.
        if numel > 0 {
            host.f_copy_data_u8(&mut data, numel)
                .map_err(|e| S::Error::custom(GpuError::from(e)))?;
        }
        let shape: Vec<u64> = host.size().iter().map(|d| *d as u64).collect();
        let mut tuple = serializer.serialize_tuple(4)?;
        tuple.serialize_element(&FORMAT)?;
        tuple.serialize_element(&code)?;
        tuple.serialize_element(&shape)?;
        tuple.serialize_element(&Bytes(&data))?;
        tuple.end()
    }
}

impl<'de> Deserialize<'de> for TensorObject {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_tuple(4, TensorVisitor)
    }
}

struct TensorVisitor;

impl<'de> Visitor<'de> for TensorVisitor {
    type Value = TensorObject;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a serialized tensor (version, dtype, shape, data)")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<TensorObject, A::Error> {
        let missing = |what| de::Error::custom(format!("serialized tensor: missing {what}"));
        let version: u8 = seq.next_element()?.ok_or_else(|| missing("version"))?;
        if version != FORMAT {
            return Err(de::Error::custom(format!(
                "serialized tensor: format version {version}, this build reads {FORMAT}"
            )));
        }
        let code: u8 = seq.next_element()?.ok_or_else(|| missing("dtype"))?;
        let kind = kind_of(code).ok_or_else(|| {
            de::Error::custom(format!("serialized tensor: unknown dtype code {code}"))
        })?;
        let shape: Vec<u64> = seq.next_element()?.ok_or_else(|| missing("shape"))?;
        let mut dims = Vec::with_capacity(shape.len());
        let mut numel: u64 = 1;
        for d in &shape {
            let dim = i64::try_from(*d).map_err(|_| {
                de::Error::custom(format!("serialized tensor: dimension {d} is too large"))
            })?;
            dims.push(dim);
            numel = numel
                .checked_mul(*d)
                .ok_or_else(|| de::Error::custom("serialized tensor: element count overflows"))?;
        }
        let expected = numel
            .checked_mul(kind.elt_size_in_bytes() as u64)
            .ok_or_else(|| de::Error::custom("serialized tensor: byte count overflows"))?;
        let tensor = seq
            .next_element_seed(Data {
                kind,
                dims,
                expected,
            })?
            .ok_or_else(|| missing("data"))?;
        Ok(TensorObject::from(tensor))
    }
}

/// Decodes the data field straight into a tensor (one copy, from the
/// decoder's buffer into libtorch's).
struct Data {
    kind: Kind,
    dims: Vec<i64>,
    expected: u64,
}

impl<'de> DeserializeSeed<'de> for Data {
    type Value = Tensor;
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Tensor, D::Error> {
        deserializer.deserialize_bytes(self)
    }
}

impl Visitor<'_> for Data {
    type Value = Tensor;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} bytes of tensor data", self.expected)
    }

    fn visit_bytes<E: de::Error>(self, data: &[u8]) -> Result<Tensor, E> {
        if data.len() as u64 != self.expected {
            return Err(E::custom(format!(
                "serialized tensor: {} bytes of data for shape {:?} of {:?}, which needs {}",
                data.len(),
                self.dims,
                self.kind,
                self.expected
            )));
        }
        // A bool that is not 0 or 1 is undefined behaviour in libtorch's C++.
        if self.kind == Kind::Bool && data.iter().any(|b| *b > 1) {
            return Err(E::custom(
                "serialized tensor: a bool element is neither 0 nor 1",
            ));
        }
        Tensor::f_from_data_size(data, &self.dims, self.kind)
            .map_err(|e| E::custom(format!("serialized tensor: libtorch refused it: {e}")))
    }

    fn visit_byte_buf<E: de::Error>(self, data: Vec<u8>) -> Result<Tensor, E> {
        self.visit_bytes(&data)
    }
}

/// A tensor whose element type is checked to be `E` (f32, i64, bool, ...):
/// what a typed ref such as `ObjectRef<TypedTensor<f32>>` holds. Building
/// one from, or decoding one of, another dtype fails with
/// [`GpuError::WrongDtype`].
///
/// ```
/// use troupe_gpu::TypedTensor;
/// let ok = TypedTensor::<f32>::new(tch::Tensor::from_slice(&[1.0f32]));
/// assert!(ok.is_ok());
/// let wrong = TypedTensor::<f32>::new(tch::Tensor::from_slice(&[1i64]));
/// assert!(wrong.is_err());
/// ```
pub struct TypedTensor<E> {
    inner: TensorObject,
    _element: PhantomData<fn() -> E>,
}

impl<E: Element> TypedTensor<E> {
    /// Checks the tensor's dtype.
    pub fn new(tensor: Tensor) -> Result<Self, GpuError> {
        Self::check(TensorObject::from(tensor))
    }

    fn check(inner: TensorObject) -> Result<Self, GpuError> {
        if inner.kind() != E::KIND {
            return Err(GpuError::WrongDtype {
                expected: kind_name(E::KIND),
                found: kind_name(inner.kind()),
            });
        }
        Ok(TypedTensor {
            inner,
            _element: PhantomData,
        })
    }

    /// The untyped object (no copy).
    pub fn into_object(self) -> TensorObject {
        self.inner
    }

    /// Takes the tensor out.
    pub fn into_tensor(self) -> Tensor {
        self.inner.into_tensor()
    }
}

impl<E: Element> TryFrom<TensorObject> for TypedTensor<E> {
    type Error = GpuError;
    fn try_from(object: TensorObject) -> Result<Self, GpuError> {
        Self::check(object)
    }
}

impl<E> Deref for TypedTensor<E> {
    type Target = TensorObject;
    fn deref(&self) -> &TensorObject {
        &self.inner
    }
}

impl<E> Clone for TypedTensor<E> {
    fn clone(&self) -> Self {
        TypedTensor {
            inner: self.inner.clone(),
            _element: PhantomData,
        }
    }
}

impl<E> fmt::Debug for TypedTensor<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.fmt(f)
    }
}

impl<E> GetSize for TypedTensor<E> {
    fn get_heap_size_with_tracker<T: troupe_core::GetSizeTracker>(&self, tracker: T) -> (usize, T) {
        self.inner.get_heap_size_with_tracker(tracker)
    }
}

impl<E> Serialize for TypedTensor<E> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.inner.serialize(serializer)
    }
}

impl<'de, E: Element> Deserialize<'de> for TypedTensor<E> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let inner = TensorObject::deserialize(deserializer)?;
        Self::check(inner).map_err(de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(t: &Tensor) -> Tensor {
        let bytes = postcard::to_stdvec(&TensorObject::from(t.shallow_clone())).unwrap();
        postcard::from_bytes::<TensorObject>(&bytes)
            .unwrap()
            .into_tensor()
    }

    fn assert_same(a: &Tensor, b: &Tensor) {
        assert_eq!(a.kind(), b.kind());
        assert_eq!(a.size(), b.size());
        assert!(b.is_contiguous());
        // Bit-exact: compare the raw bytes of contiguous copies.
        let bytes = |t: &Tensor| {
            let t = t.contiguous();
            let n = t.numel() * t.kind().elt_size_in_bytes();
            let mut out = vec![0u8; n];
            t.copy_data_u8(&mut out, t.numel());
            out
        };
        assert_eq!(bytes(a), bytes(b));
    }

    #[test]
    fn every_common_dtype_survives_exactly() {
        let base = Tensor::arange(24, (Kind::Float, Device::Cpu)).reshape([2, 3, 4]) / 7.0 - 1.0;
        for kind in [
            Kind::Float,
            Kind::Half,
            Kind::BFloat16,
            Kind::Double,
            Kind::Int64,
            Kind::Int,
            Kind::Int16,
            Kind::Int8,
            Kind::Uint8,
            Kind::Bool,
            Kind::ComplexFloat,
        ] {
            let t = base.to_kind(kind);
            assert_same(&t, &roundtrip(&t));
        }
        // Values a float16 cannot hold exactly still come back bit for bit.
        let nan = Tensor::from_slice(&[f32::NAN, f32::INFINITY, -0.0, 1e-42]);
        assert_same(&nan, &roundtrip(&nan));
    }

    #[test]
    fn non_contiguous_and_zero_size_tensors_survive() {
        let t = Tensor::arange(12, (Kind::Int64, Device::Cpu)).reshape([3, 4]);
        let transposed = t.transpose(0, 1);
        assert!(!transposed.is_contiguous());
        let back = roundtrip(&transposed);
        assert_same(&transposed, &back);
        assert_eq!(back.int64_value(&[1, 0]), 1);
        let strided = t.slice(1, 0, 4, 2);
        assert_same(&strided, &roundtrip(&strided));
        for shape in [vec![0i64], vec![3, 0, 2], vec![]] {
            let t = Tensor::zeros(shape.as_slice(), (Kind::Float, Device::Cpu));
            assert_same(&t, &roundtrip(&t));
        }
    }

    #[test]
    fn the_layout_is_the_documented_one() {
        let t = Tensor::from_slice(&[1i16, -2]).reshape([1, 2]);
        let bytes = postcard::to_stdvec(&TensorObject::from(t)).unwrap();
        // version, dtype int16 (2), 2 dims: 1 and 2, 4 data bytes, LE.
        assert_eq!(bytes, vec![1, 2, 2, 1, 2, 4, 1, 0, 0xfe, 0xff]);
    }

    #[test]
    fn malformed_bytes_are_errors_not_panics() {
        let good =
            postcard::to_stdvec(&TensorObject::from(Tensor::from_slice(&[1.0f32, 2.0]))).unwrap();
        let decode = |bytes: &[u8]| postcard::from_bytes::<TensorObject>(bytes).map(|_| ());
        // Truncated anywhere.
        for end in 0..good.len() {
            assert!(decode(&good[..end]).is_err(), "truncated at {end}");
        }
        // Wrong version, unknown dtype.
        let mut bad = good.clone();
        bad[0] = 9;
        assert!(decode(&bad).is_err());
        let mut bad = good.clone();
        bad[1] = 200;
        assert!(decode(&bad).is_err());
        // Shape that does not match the data.
        assert!(decode(&[1, 6, 1, 3, 8, 0, 0, 128, 63, 0, 0, 0, 64]).is_err());
        // A shape whose element count overflows.
        let huge = postcard::to_stdvec(&(1u8, 6u8, vec![u64::MAX, u64::MAX], [0u8; 0])).unwrap();
        assert!(decode(&huge).is_err());
        // A bool that is not 0 or 1.
        assert!(decode(&[1, 11, 1, 2, 2, 1, 7]).is_err());
        assert!(decode(&[1, 11, 1, 2, 2, 1, 0]).is_ok());
        // Random garbage.
        let mut x: u32 = 12345;
        for len in 0..200 {
            let junk: Vec<u8> = (0..len)
                .map(|_| {
                    x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                    (x >> 16) as u8
                })
                .collect();
            let _ = decode(&junk);
        }
    }

    #[test]
    fn typed_tensors_check_their_dtype() {
        let floats = TypedTensor::<f32>::new(Tensor::from_slice(&[1.0f32])).unwrap();
        let err = TypedTensor::<i64>::new(Tensor::from_slice(&[1.0f32])).unwrap_err();
        assert!(matches!(err, GpuError::WrongDtype { .. }), "{err}");
        // Decoding bytes of f32 as a typed i64 tensor fails with the reason.
        let bytes = postcard::to_stdvec(&floats).unwrap();
        let err = postcard::from_bytes::<TypedTensor<i64>>(&bytes).unwrap_err();
        // postcard keeps only the kind of a custom error, not its text.
        assert_eq!(err, postcard::Error::SerdeDeCustom);
        assert!(postcard::from_bytes::<TypedTensor<f32>>(&bytes).is_ok());
    }

    #[test]
    fn clones_share_the_data() {
        let object = TensorObject::from(Tensor::zeros([4], (Kind::Float, Device::Cpu)));
        let clone = object.clone();
        assert_eq!(object.view().data_ptr(), clone.view().data_ptr());
        let mut copy = object.deep_copy();
        assert_ne!(copy.data_ptr(), object.view().data_ptr());
        let _ = copy.fill_(1.0);
        assert_eq!(object.view().double_value(&[0]), 0.0);
        assert_eq!(object.get_heap_size(), 16);
    }

    #[test]
    fn a_reader_cannot_change_another_readers_tensor() {
        // What `unsafe impl Sync` over `&Tensor` allowed: one reader turning
        // on autograd (or running backward) on the object all share.
        let object = TensorObject::from(Tensor::zeros([3], (Kind::Float, Device::Cpu)));
        let mine = object.view().set_requires_grad(true);
        assert!(mine.requires_grad());
        assert!(
            !object.view().requires_grad(),
            "the shared tensor is untouched"
        );
        let loss = (&mine * 2.0).sum(Kind::Float);
        loss.backward();
        assert!(mine.grad().defined());
        assert!(!object.view().grad().defined());
        // Readers on many threads at once: each gets its own view.
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    for _ in 0..100 {
                        let v = object.view().set_requires_grad(true);
                        (&v * 3.0).sum(Kind::Float).backward();
                    }
                });
            }
        });
        assert!(!object.view().requires_grad());
    }

    #[test]
    fn quantized_tensors_are_refused_with_a_reason() {
        let q = Tensor::from_slice(&[1.0f32, 2.0]).quantize_per_tensor(0.1, 0, Kind::QInt8);
        let err = postcard::to_stdvec(&TensorObject::from(q)).unwrap_err();
        assert_eq!(err, postcard::Error::SerdeSerCustom);
    }
}
