//! Makes this crate's binaries find libtorch at run time when the facade's
//! `gpu` feature links it (tch's link arguments do not reach downstream
//! binaries: without an rpath they fail to load libtorch_cpu.so).
//!
//! - With this crate's `gpu` feature (the data_pipeline example), torch-sys is a
//!   direct dependency and passes its lib dir (`DEP_TCH_LIBTORCH_LIB`), as
//!   for troupe-rl; with a CUDA libtorch, libtorch.so is kept linked so
//!   that CUDA is found.
//! - Without it, a workspace build that turns on `troupe/gpu` (the
//!   project's test script does) still links libtorch into the tests: the
//!   rpath then comes from `LIBTORCH` (set by `.cargo/config.toml`), when
//!   its lib dir exists. An rpath to an unused directory costs nothing.

use std::path::Path;

fn main() {
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
