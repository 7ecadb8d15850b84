//! Fuzzing on stable Rust, as ordinary tests: proptest strategies that make
//! arbitrary bytes and mutations of valid encodings (the seed corpus in
//! `fuzz/corpus/<target>/`), a case count from `TROUPE_FUZZ_CASES`, and an
//! allocator that records the largest allocation a thread asked for (so a
//! test can tell a decoder that trusts a length prefix from one that checks
//! it). See `fuzz/README.md`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::path::PathBuf;

use proptest::prelude::*;
use proptest::test_runner::Config;

/// The environment variable that sets how many cases each fuzz target runs.
pub const CASES_ENV: &str = "TROUPE_FUZZ_CASES";

/// Cases per target, from [`CASES_ENV`], else `default` (what keeps the
/// whole suite within a few seconds of a debug build).
pub fn cases(default: u32) -> u32 {
    std::env::var(CASES_ENV)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

/// A proptest config of [`cases`]`(default)` cases. Failures are not
/// persisted: a crashing input belongs in the seed corpus, by hand.
pub fn config(default: u32) -> Config {
    Config {
        cases: cases(default),
        failure_persistence: None,
        // Shrinking a failure of a long session could take as long again.
        max_shrink_iters: 2048,
        ..Config::default()
    }
}

/// The directory of a target's seeds: `fuzz/corpus/<target>` at the
/// workspace root.
pub fn corpus_dir(target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target)
}

/// Every seed of `target`, in file-name order. Panics if there are none:
/// a fuzz test that silently replays nothing would prove nothing.
pub fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = corpus_dir(target);
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("no seed corpus at {}: {e}", dir.display()))
        .map(|entry| entry.expect("a corpus entry").path())
        .filter(|p| p.is_file())
        .collect();
    paths.sort();
    let seeds: Vec<Vec<u8>> = paths
        .iter()
        .map(|p| std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())))
        .collect();
    assert!(
        !seeds.is_empty(),
        "the corpus at {} is empty",
        dir.display()
    );
    seeds
}

/// Replaces `target`'s generated seeds (`seed-NNN.bin`) with `seeds`;
/// other files (crashing inputs kept as `crash-*.bin`) stay.
pub fn write_corpus(target: &str, seeds: &[Vec<u8>]) {
    let dir = corpus_dir(target);
    std::fs::create_dir_all(&dir).expect("the corpus directory");
    for entry in std::fs::read_dir(&dir).expect("the corpus directory") {
        let path = entry.expect("a corpus entry").path();
        let generated = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("seed-"));
        if generated {
            std::fs::remove_file(&path).expect("an old seed removed");
        }
    }
    for (i, seed) in seeds.iter().enumerate() {
        std::fs::write(dir.join(format!("seed-{i:03}.bin")), seed).expect("a seed written");
    }
}

/// Arbitrary bytes, up to `max` of them.
pub fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>(), 0..=max)
}

/// One change to an encoding.
#[derive(Clone, Debug)]
pub enum Mutation {
    /// Flips one bit (at a position modulo the length).
    FlipBit(usize, u8),
    /// Sets one byte.
    SetByte(usize, u8),
    /// Cuts the encoding to this length (modulo its length plus one).
    Truncate(usize),
    /// Inserts bytes.
    Insert(usize, Vec<u8>),
    /// Removes up to this many bytes.
    Remove(usize, usize),
    /// Writes a length that claims far more than follows: a huge varint,
    /// or a little-endian `u32`/`u64` near its maximum.
    HugeLength(usize, u8),
    /// Appends a copy of a slice of the encoding (repeated fields).
    Duplicate(usize, usize),
}

const HUGE: [&[u8]; 6] = [
    // varint u32::MAX and u64::MAX, then one with too many continuation bytes.
    &[0xff, 0xff, 0xff, 0xff, 0x0f],
    &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01],
    &[
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    ],
    // 4 GiB - 1 and 1 GiB as u32, and u64::MAX.
    &[0xff, 0xff, 0xff, 0xff],
    &[0x00, 0x00, 0x00, 0x40],
    &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
];

fn at(i: usize, len: usize) -> usize {
    if len == 0 {
        0
    } else {
        i % len
    }
}

impl Mutation {
    /// Applies the change to `bytes`.
    pub fn apply(&self, bytes: &mut Vec<u8>) {
        let len = bytes.len();
        match self {
            Mutation::FlipBit(i, bit) if len > 0 => bytes[at(*i, len)] ^= 1 << (bit % 8),
            Mutation::SetByte(i, b) if len > 0 => bytes[at(*i, len)] = *b,
            Mutation::Truncate(n) => bytes.truncate(n % (len + 1)),
            Mutation::Insert(i, new) => {
                let i = at(*i, len + 1);
                bytes.splice(i..i, new.iter().copied());
            }
            Mutation::Remove(i, n) if len > 0 => {
                let i = at(*i, len);
                let end = (i + n).min(len);
                bytes.drain(i..end);
            }
            Mutation::HugeLength(i, which) => {
                let huge = HUGE[usize::from(*which) % HUGE.len()];
                let i = at(*i, len + 1);
                let end = (i + huge.len()).min(len);
                bytes.splice(i..end, huge.iter().copied());
            }
            Mutation::Duplicate(i, n) if len > 0 => {
                let i = at(*i, len);
                let end = (i + n).min(len);
                let copy = bytes[i..end].to_vec();
                bytes.extend_from_slice(&copy);
            }
            _ => {}
        }
    }
}

/// One [`Mutation`].
pub fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        3 => (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::FlipBit(i, b)),
        2 => (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::SetByte(i, b)),
        2 => any::<usize>().prop_map(Mutation::Truncate),
        1 => (any::<usize>(), bytes(16)).prop_map(|(i, b)| Mutation::Insert(i, b)),
        1 => (any::<usize>(), 1usize..16).prop_map(|(i, n)| Mutation::Remove(i, n)),
        2 => (any::<usize>(), any::<u8>()).prop_map(|(i, w)| Mutation::HugeLength(i, w)),
        1 => (any::<usize>(), 1usize..64).prop_map(|(i, n)| Mutation::Duplicate(i, n)),
    ]
}

/// `base` with one to `max` mutations applied, in order.
pub fn mutate(base: Vec<u8>, max: usize) -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(mutation(), 1..=max.max(1)).prop_map(move |changes| {
        let mut bytes = base.clone();
        for change in &changes {
            change.apply(&mut bytes);
        }
        bytes
    })
}

/// The front of one seed spliced onto the back of another.
pub fn splice(seeds: Vec<Vec<u8>>) -> impl Strategy<Value = Vec<u8>> {
    let n = seeds.len();
    assert!(n > 0, "splicing needs seeds");
    (0..n, 0..n, any::<usize>(), any::<usize>()).prop_map(move |(a, b, i, j)| {
        let (a, b) = (&seeds[a], &seeds[b]);
        let mut out = a[..at(i, a.len() + 1)].to_vec();
        out.extend_from_slice(&b[at(j, b.len() + 1)..]);
        out
    })
}

/// What a fuzz target feeds its decoder: arbitrary bytes, mutated seeds,
/// and splices of two seeds (mutated too).
pub fn inputs(seeds: Vec<Vec<u8>>, max_random: usize) -> impl Strategy<Value = Vec<u8>> {
    assert!(!seeds.is_empty(), "fuzzing needs seeds");
    let n = seeds.len();
    let picked = seeds.clone();
    prop_oneof![
        1 => bytes(max_random),
        4 => (0..n).prop_flat_map(move |i| mutate(picked[i].clone(), 4)),
        2 => splice(seeds).prop_flat_map(|spliced| prop_oneof![
            Just(spliced.clone()),
            mutate(spliced, 2),
        ]),
    ]
}

thread_local! {
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

/// The system allocator, recording the largest allocation each thread asks
/// for. Install it in a fuzz test binary
/// (`#[global_allocator] static A: Recording = Recording;`) and check
/// [`largest_allocation`] after a decode.
pub struct Recording;

fn record(size: usize) {
    // `try_with`: a thread's allocations after its locals are gone are
    // simply not recorded. The local has no destructor and a const
    // initializer: touching it never allocates.
    let _ = LARGEST.try_with(|l| {
        if size > l.get() {
            l.set(size);
        }
    });
}

// SAFETY: every call is passed to `System` unchanged; recording the size
// touches only a thread-local `Cell`, which neither allocates nor unwinds.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Recording {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        record(layout.size());
        // SAFETY: the caller's contract, passed on.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        record(layout.size());
        // SAFETY: the caller's contract, passed on.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract, passed on.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        record(new_size);
        // SAFETY: the caller's contract, passed on.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// The largest allocation this thread asked for since the last call (with
/// [`Recording`] installed; 0 without), and starts recording afresh.
pub fn largest_allocation() -> usize {
    LARGEST.with(|l| l.replace(0))
}

/// Runs `f`, failing the test if it asked for one allocation over `cap`
/// bytes on this thread (a length prefix believed before the bytes it
/// announces arrived).
pub fn within_allocation<T>(cap: usize, what: &str, f: impl FnOnce() -> T) -> T {
    largest_allocation();
    let out = f();
    let largest = largest_allocation();
    assert!(
        largest <= cap,
        "{what}: one allocation of {largest} bytes (at most {cap} expected)"
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mutations_stay_within_the_encoding_or_grow_it_as_told() {
        let mut b = vec![1, 2, 3, 4];
        Mutation::FlipBit(5, 9).apply(&mut b);
        assert_eq!(b, vec![1, 0, 3, 4]);
        Mutation::Truncate(7).apply(&mut b);
        assert_eq!(b, vec![1, 0]);
        Mutation::HugeLength(1, 3).apply(&mut b);
        assert_eq!(b, vec![1, 0xff, 0xff, 0xff, 0xff]);
        let mut empty = Vec::new();
        Mutation::FlipBit(3, 1).apply(&mut empty);
        Mutation::Remove(3, 1).apply(&mut empty);
        assert!(empty.is_empty());
    }

    #[test]
    fn the_case_count_defaults_without_the_variable() {
        if std::env::var_os(CASES_ENV).is_none() {
            assert_eq!(cases(17), 17);
        }
    }
}
