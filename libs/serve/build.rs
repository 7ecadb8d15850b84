//! With the `gpu` feature, makes this crate's binaries (the model example)
//! find libtorch at run time, as troupe-rl's build script does: tch's link
//! arguments do not reach downstream binaries, so without an rpath they
//! fail to load libtorch_cpu.so, and with a CUDA libtorch `--as-needed`
//! would drop libtorch.so. Without the feature it does nothing.

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
