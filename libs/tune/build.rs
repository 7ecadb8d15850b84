//! Makes this crate's binaries find libtorch at run time (see
//! `troupe-libtorch-rpath`).

fn main() {
    troupe_libtorch_rpath::emit();
}
