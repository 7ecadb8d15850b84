//! Makes this crate's test binaries find libtorch at run time. tch's own
//! link arguments do not reach downstream binaries: without an rpath they
//! fail to load libtorch_cpu.so, and with a CUDA libtorch `--as-needed`
//! drops libtorch.so (so CUDA would look absent even on a GPU machine).
//! The facade's build.rs does the same for its binaries.

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
