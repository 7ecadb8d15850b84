//! Build-script helper shared by the crates whose binaries may link
//! libtorch (the facade, and every library with a `gpu` feature or
//! tests built with the facade's): tch's link arguments do not reach
//! downstream binaries, and without an rpath they fail to load
//! `libtorch_cpu.so`.
//!
//! A crate's `build.rs` is `fn main() { troupe_libtorch_rpath::emit(); }`,
//! with this crate as a build-dependency.

#![deny(unsafe_code)]
#![warn(missing_docs)]

use std::path::Path;

/// Prints the cargo instructions that give this crate's binaries an rpath
/// to libtorch's lib directory:
///
/// - when torch-sys is a direct dependency, its lib directory
///   (`DEP_TCH_LIBTORCH_LIB`); with a CUDA libtorch, `libtorch.so` is
///   kept linked so that CUDA is found;
/// - otherwise `$LIBTORCH/lib` when it exists (set by `.cargo/config.toml`):
///   a workspace build that turns on `troupe/gpu` (the project's test
///   script does) still links libtorch into this crate's tests. An rpath to
///   an unused directory costs nothing.
pub fn emit() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    if let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
        // The directory changes when setup-libtorch.sh switches layouts.
        println!("cargo:rerun-if-changed={lib}");
        if Path::new(&lib).join("libtorch_cuda.so").exists() {
            println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
            println!("cargo:rustc-link-arg=-ltorch");
        }
    } else if let Ok(root) = std::env::var("LIBTORCH") {
        let lib = Path::new(&root).join("lib");
        if lib.is_dir() {
            println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
            println!("cargo:rerun-if-changed={}", lib.display());
        }
    }
}
