//! Makes this crate's binaries find libtorch at run time when a workspace
//! build turns on the facade's `gpu` feature (the project's test script
//! does): tch's link arguments do not reach downstream binaries, which then
//! fail to load libtorch_cpu.so. troupe-tune itself needs no libtorch, so
//! the rpath comes from `LIBTORCH` (set by `.cargo/config.toml`) when its
//! lib dir exists; an rpath to an unused directory costs nothing.

use std::path::Path;

fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    if let Ok(root) = std::env::var("LIBTORCH") {
        let lib = Path::new(&root).join("lib");
        if lib.is_dir() {
            println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
            println!("cargo:rerun-if-changed={}", lib.display());
        }
    }
}
