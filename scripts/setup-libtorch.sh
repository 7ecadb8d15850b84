#!/usr/bin/env bash
# Installs libtorch 2.13.0 (what tch 0.26 links) into .cache/libtorch, from
# PyPI wheels pinned by hash, because pytorch's own download site is not
# reachable from every machine we build on and PyPI is.
#
#   scripts/setup-libtorch.sh          # CPU layout, or CUDA layout if nvidia-smi sees a GPU
#   TROUPE_LIBTORCH=cpu  scripts/setup-libtorch.sh   # force a layout
#   TROUPE_LIBTORCH=cuda scripts/setup-libtorch.sh
#
# Idempotent: a stamp file records the layout and the wheel hashes; when it
# matches, the script returns at once. `.cargo/config.toml` points LIBTORCH at
# .cache/libtorch/torch once and for all (a changed LIBTORCH value recompiles
# torch-sys's C++).
#
# Layouts (both keep the wheels' own directory shape, so the libraries' RPATH
# `$ORIGIN/../../nvidia/cu13/lib` finds the CUDA runtime without help):
# - cpu: torch's lib/ and include/ without the CUDA libraries, plus the two
#   small wheels libtorch_cpu.so needs even on CPU (libcudart, libcupti);
#   libtorch.so, which in the wheel only pulls in libtorch_cpu.so and
#   libtorch_cuda.so, is replaced by one that pulls in libtorch_cpu.so alone.
#   About 0.5 GB on disk, 540 MB to download.
# - cuda: `pip install --target` of torch and its whole CUDA wheel set, as
#   torch's own metadata lists it (about 2.4 GB to download, 3.9 GB on disk).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache="$root/.cache"
wheels="$cache/wheels"
dest="$cache/libtorch"
stamp="$dest/.troupe-layout"
python="${PYTHON:-python3}"

torch_pin="torch==2.13.0 --hash=sha256:60fcdcb2f3876e21146cb4524ef06397d727ca9ad5f020818547e25075fe3cb7"
cudart_pin="nvidia-cuda-runtime==13.0.96 --hash=sha256:7f82250d7782aa23b6cfe765ecc7db554bd3c2870c43f3d1821f1d18aebf0548"
cupti_pin="nvidia-cuda-cupti==13.0.85 --hash=sha256:4eb01c08e859bf924d222250d2e8f8b8ff6d3db4721288cf35d14252a4d933c8"

layout="${TROUPE_LIBTORCH:-}"
if [[ -z "$layout" ]]; then
    if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q '^GPU '; then
        layout=cuda
    else
        layout=cpu
    fi
fi
case "$layout" in
    cpu | cuda) ;;
    *) echo "setup-libtorch: TROUPE_LIBTORCH must be cpu or cuda, not '$layout'" >&2; exit 2 ;;
esac

want="$layout $(printf '%s\n' "$torch_pin" "$cudart_pin" "$cupti_pin" | sha256sum | cut -c1-16)"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    exit 0
fi

if [[ "$(uname -sm)" != "Linux x86_64" ]]; then
    echo "setup-libtorch: only Linux x86_64 is scripted; set LIBTORCH to a libtorch 2.13.0 by hand" >&2
    exit 1
fi
command -v "$python" >/dev/null || { echo "setup-libtorch: needs python3 with pip (for PyPI downloads)" >&2; exit 1; }
command -v cc >/dev/null || { echo "setup-libtorch: needs a C compiler (cc)" >&2; exit 1; }

echo "setup-libtorch: installing the $layout layout into $dest" >&2
rm -rf "$dest"
mkdir -p "$wheels" "$dest"

reqs="$(mktemp)"
trap 'rm -f "$reqs"' EXIT
printf '%s\n' "$torch_pin" "$cudart_pin" "$cupti_pin" >"$reqs"
# The pinned files only, cached; --require-hashes refuses anything else.
"$python" -m pip download --quiet --no-deps --only-binary=:all: \
    --require-hashes -r "$reqs" -d "$wheels"
torch_wheel="$wheels/torch-2.13.0-cp311-cp311-manylinux_2_28_x86_64.whl"

if [[ "$layout" == cuda ]]; then
    # The hash-checked torch wheel; its CUDA dependencies come at the exact
    # versions torch's own metadata pins.
    "$python" -m pip install --quiet --no-compile --only-binary=:all: \
        --target "$dest" "$torch_wheel"
else
    "$python" - "$wheels" "$dest" <<'PY'
import pathlib, sys, zipfile

wheels, dest = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
# What the CPU layout leaves out of torch/lib: the CUDA libraries and Python's.
skip = ("libtorch_cuda", "libc10_cuda", "libcaffe2_nvrtc", "libtorch_nvshmem",
        "libtorch_python", "libshm")
for wheel, keep in [
    ("torch-2.13.0-cp311-cp311-manylinux_2_28_x86_64.whl", ("torch/lib/", "torch/include/")),
    ("nvidia_cuda_runtime-13.0.96-py3-none-manylinux2014_x86_64.manylinux_2_17_x86_64.whl",
     ("nvidia/cu13/lib/libcudart.so.13",)),
    ("nvidia_cuda_cupti-13.0.85-py3-none-manylinux_2_25_x86_64.whl",
     ("nvidia/cu13/lib/libcupti.so.13",)),
]:
    with zipfile.ZipFile(wheels / wheel) as z:
        for info in z.infolist():
            name = info.filename
            if not name.startswith(keep) or name.endswith("/"):
                continue
            if name.startswith("torch/lib/") and pathlib.PurePath(name).name.startswith(skip):
                continue
            z.extract(info, dest)
PY
    # libtorch.so without the CUDA dependency: an empty library that needs
    # libtorch_cpu.so, which is all the wheel's libtorch.so is on CPU.
    lib="$dest/torch/lib"
    rm -f "$lib/libtorch.so"
    echo '' | cc -x c -shared -fPIC -o "$lib/libtorch.so" - \
        -Wl,-soname,libtorch.so -Wl,--no-as-needed -L"$lib" -ltorch_cpu -Wl,-rpath,'$ORIGIN'
fi

echo "2.13.0" >"$dest/torch/build-version"
test -f "$dest/torch/lib/libtorch_cpu.so" -a -d "$dest/torch/include/torch"
echo "$want" >"$stamp"
echo "setup-libtorch: done ($(du -sh "$dest" | cut -f1))" >&2
