//! The fuzz target for the tensor layout (`TensorObject`'s serialized
//! form, and `TypedTensor`'s dtype check on top of it): arbitrary bytes,
//! mutations of the seeds in `fuzz/corpus/tensor/` and splices of two
//! seeds decode to a tensor or to an error, never a panic (libtorch's
//! included: a malformed shape or byte count must not reach it), and never
//! ask for an allocation much larger than the input. What decodes
//! re-encodes to bytes that decode to the same tensor. See
//! `fuzz/README.md`.

use proptest::prelude::*;
use tch::{Device, Kind, Tensor};
use troupe_gpu::{TensorObject, TypedTensor};
use troupe_test_kit::fuzz::{self, Recording};

#[global_allocator]
static ALLOC: Recording = Recording;

const CASES: u32 = 512;
/// serde preallocates at most 1 MiB for a sequence whatever it claims.
const CAP: usize = 2 << 20;
const MAX_RANDOM: usize = 512;

fn encode(tensor: &Tensor) -> Vec<u8> {
    postcard::to_stdvec(&TensorObject::from(tensor.shallow_clone())).expect("encodes")
}

/// Seeds: every dtype family, a scalar, empty and non-contiguous tensors.
fn seeds() -> Vec<Vec<u8>> {
    let mut seeds = Vec::new();
    for kind in [
        Kind::Uint8,
        Kind::Int8,
        Kind::Int16,
        Kind::Int,
        Kind::Int64,
        Kind::Half,
        Kind::Float,
        Kind::Double,
        Kind::ComplexFloat,
        Kind::Bool,
        Kind::BFloat16,
    ] {
        let t = Tensor::arange(6, (Kind::Int64, Device::Cpu))
            .remainder(2)
            .to_kind(kind)
            .reshape([2, 3]);
        seeds.push(encode(&t));
    }
    seeds.push(encode(&Tensor::from(3.5f32)));
    seeds.push(encode(&Tensor::zeros([0, 4], (Kind::Float, Device::Cpu))));
    seeds.push(encode(
        &Tensor::arange(24, (Kind::Float, Device::Cpu))
            .reshape([2, 3, 4])
            .transpose(0, 2),
    ));
    seeds
}

/// Same dtype, shape and bytes.
fn same(a: &Tensor, b: &Tensor) -> bool {
    if a.kind() != b.kind() || a.size() != b.size() {
        return false;
    }
    let (a, b) = (a.contiguous(), b.contiguous());
    let n = a.numel() * a.kind().elt_size_in_bytes();
    let (mut x, mut y) = (vec![0u8; n], vec![0u8; n]);
    a.copy_data_u8(&mut x, a.numel());
    b.copy_data_u8(&mut y, b.numel());
    x == y
}

/// Decodes `bytes` as a tensor and as a typed one; what decodes round-trips.
fn check(bytes: &[u8]) {
    let decoded = fuzz::within_allocation(CAP, "a tensor decode", || {
        postcard::from_bytes::<TensorObject>(bytes)
    });
    let typed = postcard::from_bytes::<TypedTensor<f32>>(bytes);
    match decoded {
        Ok(tensor) => {
            let again = encode(&tensor.view());
            let back: TensorObject = postcard::from_bytes(&again).expect("a re-encoding decodes");
            assert!(same(&tensor.view(), &back.view()), "{bytes:02x?}");
            // The typed view agrees with the dtype byte.
            assert_eq!(typed.is_ok(), tensor.kind() == Kind::Float, "{bytes:02x?}");
        }
        Err(_) => assert!(typed.is_err(), "{bytes:02x?}"),
    }
}

/// Regenerates the seed corpus: `cargo test -p troupe-gpu --test
/// fuzz_tensor -- --ignored write_seed_corpus`.
#[test]
#[ignore = "writes fuzz/corpus: run it to regenerate the seeds"]
fn write_seed_corpus() {
    fuzz::write_corpus("tensor", &seeds());
}

#[test]
fn every_seed_replays_and_the_generated_ones_are_current() {
    let on_disk = fuzz::corpus("tensor");
    for seed in &on_disk {
        check(seed);
    }
    for seed in seeds() {
        assert!(
            on_disk.contains(&seed),
            "the tensor corpus is stale (regenerate it)"
        );
    }
}

#[test]
fn shapes_and_lengths_claiming_too_much_are_refused_before_libtorch() {
    // Version 1, float32, then a shape.
    let header = |dims: &[u64]| {
        let mut b = vec![1u8, 6];
        b.extend(postcard::to_stdvec(&dims.to_vec()).expect("encodes"));
        b
    };
    // An element count that overflows u64, then an empty data field.
    let mut overflow = header(&[u64::MAX, 3]);
    overflow.push(0);
    // A dimension past i64.
    let mut huge = header(&[1 << 63]);
    huge.push(0);
    // A shape of 2^32 dimensions announced, none sent.
    let mut dims = vec![1u8, 6];
    dims.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0x0f]);
    // A byte count of 4 GiB announced for 4 elements.
    let mut bytes = header(&[4]);
    bytes.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0x0f]);
    // 16 bytes for 4 floats, but a shape of 5.
    let mut short = header(&[5]);
    short.push(16);
    short.extend_from_slice(&[0; 16]);
    for input in [overflow, huge, dims, bytes, short] {
        let got = fuzz::within_allocation(CAP, "a lying header", || {
            postcard::from_bytes::<TensorObject>(&input)
        });
        assert!(got.is_err(), "{input:02x?}");
    }
}

proptest! {
    #![proptest_config(fuzz::config(CASES))]

    #[test]
    fn fuzz_tensor(bytes in fuzz::inputs(fuzz::corpus("tensor"), MAX_RANDOM)) {
        check(&bytes);
    }

    /// Generated tensors survive exactly.
    #[test]
    fn generated_tensors_round_trip(
        values in prop::collection::vec(any::<i32>(), 0..64),
        kind in prop::sample::select(vec![
            Kind::Uint8, Kind::Int16, Kind::Int, Kind::Int64, Kind::Float, Kind::Double, Kind::Bool,
        ]),
    ) {
        let t = Tensor::from_slice(&values).to_kind(kind);
        let back: TensorObject = postcard::from_bytes(&encode(&t)).expect("decodes");
        prop_assert!(same(&t, &back.view()));
    }
}
