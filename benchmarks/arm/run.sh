#!/usr/bin/env bash
# Prove the runtime on aarch64 under qemu-user: build (once, cached) an arm64 Debian bookworm root,
# install the runtime alone into it from aarch64 wheels, run the runtime's tests there, and compare the
# speech of bundles exported on this x86 host with the same run inside the root, on two emulated CPUs.
#
#   sudo benchmarks/arm/run.sh [--work DIR] [--tiny-frames N] [--small-frames N] [--skip-tests]
#
# Needs root (apt-get, debootstrap, chroot, mount) and a host Python with voxtral-edge[export]
# installed (PYTHON, default python3). Emulation is slow and its timings mean nothing: none are printed.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
work="$repo/work/arm"
tiny_frames=24
small_frames=4
run_tests=1
python="${PYTHON:-python3}"
while [ $# -gt 0 ]; do
    case "$1" in
        --work) work="$2"; shift 2 ;;
        --tiny-frames) tiny_frames="$2"; shift 2 ;;
        --small-frames) small_frames="$2"; shift 2 ;;
        --skip-tests) run_tests=0; shift ;;
        -h|--help) sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "run.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
[ "$(id -u)" = 0 ] || { echo "run.sh: needs root (apt-get, debootstrap, chroot, mount)" >&2; exit 2; }
mkdir -p "$work"
work="$(cd "$work" && pwd)"
root="$work/root"
step() { echo "== $*" >&2; }

# -- host tools ------------------------------------------------------------------------------------
if ! command -v qemu-aarch64-static >/dev/null || ! command -v debootstrap >/dev/null \
        || ! command -v update-binfmts >/dev/null; then
    step "installing qemu-user-static, binfmt-support, debootstrap"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq qemu-user-static binfmt-support debootstrap >/dev/null
fi
if [ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; then
    mountpoint -q /proc/sys/fs/binfmt_misc || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
    update-binfmts --enable qemu-aarch64
fi

# -- the arm64 root (built once) -------------------------------------------------------------------
if [ ! -e "$root/.built" ]; then
    step "debootstrap: arm64 Debian bookworm into $root (a few minutes, once)"
    rm -rf "$root"
    debootstrap --arch=arm64 --variant=minbase --include=python3,python3-venv,python3-pip \
        bookworm "$root" http://deb.debian.org/debian >"$work/debootstrap.log" 2>&1 \
        || { tail -20 "$work/debootstrap.log" >&2; exit 1; }
    touch "$root/.built"
fi

# -- aarch64 wheels of the runtime's dependencies, at the host's versions ---------------------------
# The root cannot verify the registry's TLS certificate, so wheels are fetched here and installed offline.
pins="$("$python" - <<'PY'
from importlib.metadata import version
print(" ".join(f"{name}=={version(name)}" for name in ("numpy", "onnxruntime", "tokenizers")))
PY
)"
wheels="$work/wheels"
if [ ! -e "$wheels/.pins" ] || [ "$(cat "$wheels/.pins")" != "$pins" ]; then
    step "fetching aarch64 wheels: $pins (+ setuptools; for the tests: pytest, hypothesis, ml_dtypes)"
    rm -rf "$wheels"
    "$python" -m pip download --quiet --dest "$wheels" --platform manylinux_2_28_aarch64 \
        --platform manylinux2014_aarch64 --python-version 3.11 --only-binary=:all: \
        $pins "setuptools>=68" wheel pytest hypothesis "ml_dtypes==$("$python" -c 'from importlib.metadata import version; print(version("ml_dtypes"))')"
    echo "$pins" >"$wheels/.pins"
fi

# -- mounts, removed on exit ------------------------------------------------------------------------
mounted=()
cleanup() {
    for ((i = ${#mounted[@]} - 1; i >= 0; i--)); do umount "${mounted[i]}" 2>/dev/null || umount -l "${mounted[i]}"; done
}
trap cleanup EXIT
bind() {  # bind HOST_PATH ROOT_PATH
    mkdir -p "$root$2"
    mountpoint -q "$root$2" || { mount --bind "$1" "$root$2"; mounted+=("$root$2"); }
}
mountpoint -q "$root/proc" || { mount -t proc proc "$root/proc"; mounted+=("$root/proc"); }
mountpoint -q "$root/sys" || { mount -t sysfs sysfs "$root/sys"; mounted+=("$root/sys"); }
mkdir -p "$work/data"
bind "$wheels" /wheels
bind "$work/data" /data
in_root() { chroot "$root" /usr/bin/env -i PATH=/usr/local/bin:/usr/bin:/bin HOME=/root LANG=C.UTF-8 "$@"; }

# -- the runtime alone, installed offline inside the root --------------------------------------------
step "installing voxtral-edge (no extras) into the root, offline"
rm -rf "$root/opt/src"
mkdir -p "$root/opt/src"
(cd "$repo" && git ls-files -co --exclude-standard -z | xargs -0 tar -cf - 2>/dev/null) | tar -xf - -C "$root/opt/src"
[ -x "$root/opt/venv/bin/python" ] || in_root python3 -m venv /opt/venv
in_root /opt/venv/bin/pip install --quiet --no-index --find-links /wheels --force-reinstall --no-deps /opt/src
in_root /opt/venv/bin/pip install --quiet --no-index --find-links /wheels /opt/src
in_root /opt/venv/bin/python -c "import voxtral_edge.runtime, onnxruntime, numpy, tokenizers, platform; \
print('root:', platform.machine(), 'python', platform.python_version(), 'onnxruntime', onnxruntime.__version__, \
'numpy', numpy.__version__, 'tokenizers', tokenizers.__version__)"

# -- the runtime's tests inside the root ------------------------------------------------------------
if [ "$run_tests" = 1 ]; then
    # the tests' tools, and ml_dtypes for their oracle (the numpy reference reads BF16 checkpoints)
    in_root /opt/venv/bin/pip install --quiet --no-index --find-links /wheels pytest hypothesis ml_dtypes
    step "preparing test fixtures on the host"
    "$python" "$here/compare.py" fixtures --out "$work/data/fixtures"
    tests="$("$python" "$here/compare.py" runtime-tests --prefix .)"
    step "the test files that need no exporter: $tests"
    for cpu in cortex-a53 max; do
        step "runtime tests inside the root, QEMU_CPU=$cpu"
        QEMU_CPU=$cpu in_root QEMU_CPU=$cpu VOXTRAL_TEST_FIXTURES=/data/fixtures /bin/sh -c \
            "cd /opt/src && /opt/venv/bin/python -m pytest -q -p no:cacheprovider $tests"
    done
fi

# -- bundles on the host, speech on both sides -------------------------------------------------------
step "exporting bundles on the host (cached) and speaking them on x86"
"$python" "$here/compare.py" prepare --data "$work/data" --tiny-frames "$tiny_frames" --small-frames "$small_frames"
for cpu in cortex-a53 max; do
    step "speaking inside the root, QEMU_CPU=$cpu"
    QEMU_CPU=$cpu in_root QEMU_CPU=$cpu /opt/venv/bin/python /opt/src/benchmarks/arm/compare.py speak \
        --data /data --variant "$cpu"
done
"$python" "$here/compare.py" report --data "$work/data" --wheels "$wheels"
