//! Makes this crate's binaries (tests, examples, benches) find libtorch at
//! run time, as the facade's and gpu/'s build scripts do for theirs: tch's
//! link arguments do not reach downstream binaries, so without an rpath
//! they fail to load libtorch_cpu.so, and with a CUDA libtorch
//! `--as-needed` would drop libtorch.so (CUDA would look absent on a GPU
//! machine).

fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    if let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
        // The directory changes when setup-libtorch.sh switches layouts.
        println!("cargo:rerun-if-changed={lib}");
        if std::path::Path::new(&lib).join("libtorch_cuda.so").exists() {
            println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
            println!("cargo:rustc-link-arg=-ltorch");
        }
    }
}
