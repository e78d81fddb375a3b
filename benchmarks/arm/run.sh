#!/usr/bin/env bash
# Prove the runtime on aarch64 under qemu-user: build (once, cached) an arm64 Debian bookworm root,
# install the runtime alone into it from aarch64 wheels, run the runtime's tests there, and compare the
# speech of bundles exported on this x86 host with the same run inside the root, on two emulated CPUs.
#
#   sudo benchmarks/arm/run.sh [--work DIR] [--tiny-frames N] [--small-frames N] [--test-cpus "LIST"]
#                              [--skip-tests] [--skip-speech]
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
test_cpus="cortex-a53 max"
run_speech=1
python="${PYTHON:-python3}"
while [ $# -gt 0 ]; do
    case "$1" in
        --work) work="$2"; shift 2 ;;
        --tiny-frames) tiny_frames="$2"; shift 2 ;;
        --small-frames) small_frames="$2"; shift 2 ;;
        --test-cpus) test_cpus="$2"; shift 2 ;;
        --skip-tests) run_tests=0; shift ;;
        --skip-speech) run_speech=0; shift ;;
        -h|--help) sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "run.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
[ "$(id -u)" = 0 ] || { echo "run.sh: needs root (apt-get, debootstrap, chroot, mount)" >&2; exit 2; }
"$python" -c "import voxtral_edge.export.bundle, onnxruntime" 2>/dev/null || {
    echo "run.sh: $python lacks voxtral-edge[export]; install it (pip install -e '.[export]') or set PYTHON" >&2; exit 2; }
mkdir -p "$work"
work="$(cd "$work" && pwd)"
root="$work/root"
step() { echo "== $(date +%T) $*" >&2; }

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

# -- aarch64 wheels of the runtime's dependencies ------------------------------------------------------
# The root cannot verify the registry's TLS certificate, so wheels are fetched here and installed offline.
versions() { "$python" -c 'import sys; from importlib.metadata import version; print(" ".join(f"{n}=={version(n)}" for n in sys.argv[1:]))' "$@"; }
# the runtime's dependencies as pyproject lists them (for Python 3.11), at the versions installed here
pins="$("$python" - "$repo/pyproject.toml" <<'PY'
import sys, tomllib
from importlib.metadata import version
from packaging.requirements import Requirement
deps = [Requirement(d) for d in tomllib.load(open(sys.argv[1], "rb"))["project"]["dependencies"]]
print(" ".join(f"{d.name}=={version(d.name)}" for d in deps
               if d.marker is None or d.marker.evaluate({"python_version": "3.11", "python_full_version": "3.11.2"})))
PY
)"
test_pins="$(versions ml_dtypes safetensors)"  # what the tests' numpy reference needs to read a checkpoint
wheels="$work/wheels"
if [ ! -e "$wheels/.pins" ] || [ "$(cat "$wheels/.pins")" != "$pins $test_pins" ]; then
    step "fetching aarch64 wheels: $pins (+ setuptools; for the tests: pytest, hypothesis, ml_dtypes, safetensors)"
    rm -rf "$wheels"
    # num2words needs docopt, which the registry has only as source: a pure-Python wheel built here
    "$python" -m pip wheel --quiet --no-deps --wheel-dir "$wheels" "$(versions docopt)"
    "$python" -m pip download --quiet --dest "$wheels" --find-links "$wheels" --platform manylinux_2_28_aarch64 \
        --platform manylinux2014_aarch64 --python-version 3.11 --only-binary=:all: \
        $pins "setuptools>=68" wheel pytest hypothesis $test_pins
    echo "$pins $test_pins" >"$wheels/.pins"
fi

# -- mounts, removed on exit ------------------------------------------------------------------------
mounted=()
cleanup() {
    while mountpoint -q "$root/proc/cpuinfo" 2>/dev/null; do umount "$root/proc/cpuinfo"; done
    for ((i = ${#mounted[@]} - 1; i >= 0; i--)); do umount "${mounted[i]}" 2>/dev/null || umount -l "${mounted[i]}"; done
}
trap cleanup EXIT
trap 'exit 130' INT TERM
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

# qemu-user 7.2 shows the guest the host's x86 /proc/cpuinfo: onnxruntime's cpuinfo library then crashes
# at import (SIGSEGV) when /sys is mounted too, or gives up without /proc. An Arm /proc/cpuinfo naming
# the emulated core (its MIDR fields) goes over it; the features come from the HWCAP qemu sets per
# QEMU_CPU, which is what cpuinfo reads on aarch64 (the Features line here is informative).
arm_cpuinfo() {  # arm_cpuinfo QEMU_CPU
    local implementer part revision features
    case "$1" in
        cortex-a53) implementer=0x41; part=0xd03; revision=4; features="fp asimd evtstrm crc32 cpuid" ;;
        max) implementer=0x00; part=0x051; revision=0  # qemu's "max" MIDR: implementer 0, part 'Q'
             features="fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm asimddp sve i8mm bf16 sme" ;;
        *) echo "run.sh: no /proc/cpuinfo for QEMU_CPU=$1" >&2; return 2 ;;
    esac
    for ((n = 0; n < $(nproc --all); n++)); do
        printf 'processor\t: %d\nBogoMIPS\t: 100.00\nFeatures\t: %s\nCPU implementer\t: %s\n' "$n" "$features" "$implementer"
        printf 'CPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: %s\nCPU revision\t: %d\n\n' "$part" "$revision"
    done
}
as_cpu() {  # as_cpu QEMU_CPU COMMAND...: run in the root as that emulated CPU
    local cpu="$1"; shift
    arm_cpuinfo "$cpu" >"$work/cpuinfo-$cpu"
    mount --bind "$work/cpuinfo-$cpu" "$root/proc/cpuinfo"
    local status=0
    QEMU_CPU=$cpu in_root QEMU_CPU="$cpu" "$@" || status=$?
    umount "$root/proc/cpuinfo"
    return $status
}

# -- the runtime alone, installed offline inside the root --------------------------------------------
step "installing voxtral-edge (no extras) into the root, offline"
sources() { (cd "$repo" && git ls-files -co --exclude-standard -z | xargs -0 tar -cf - --sort=name --mtime=@0 2>/dev/null); }
stamp="$(sources | sha256sum | cut -c1-64) $(cat "$wheels/.pins")"
if [ "$(cat "$root/opt/src.stamp" 2>/dev/null)" != "$stamp" ]; then  # pip under emulation takes minutes
    rm -rf "$root/opt/src" "$root/opt/src.stamp"
    mkdir -p "$root/opt/src"
    sources | tar -xf - -C "$root/opt/src"
    [ -x "$root/opt/venv/bin/python" ] || in_root python3 -m venv /opt/venv
    in_root /opt/venv/bin/pip install --quiet --no-index --find-links /wheels --force-reinstall --no-deps /opt/src
    in_root /opt/venv/bin/pip install --quiet --no-index --find-links /wheels /opt/src
    echo "$stamp" >"$root/opt/src.stamp"
fi
as_cpu cortex-a53 /opt/venv/bin/python -c "import voxtral_edge.runtime, onnxruntime, numpy, tokenizers, platform; \
print('root:', platform.machine(), 'python', platform.python_version(), 'onnxruntime', onnxruntime.__version__, \
'numpy', numpy.__version__, 'tokenizers', tokenizers.__version__)"

# -- the kernels' known answers inside the root ----------------------------------------------------------
for cpu in cortex-a53 max; do
    step "voxtral-edge doctor inside the root, QEMU_CPU=$cpu: the quantized kernels against their known answers"
    as_cpu "$cpu" /opt/venv/bin/voxtral-edge doctor --threads 1 \
        || echo "run.sh: a quantized kernel is wrong on $cpu with every fallback (bundles using it will refuse)" >&2
done

# -- the runtime's tests inside the root ------------------------------------------------------------
if [ "$run_tests" = 1 ]; then
    # the tests' tools, and what their oracle needs (the numpy reference reads BF16 safetensors checkpoints)
    in_root /opt/venv/bin/pip install --quiet --no-index --find-links /wheels pytest hypothesis ml_dtypes safetensors
    step "preparing test fixtures on the host"
    "$python" "$here/compare.py" fixtures --out "$work/data/fixtures"
    tests="$("$python" "$here/compare.py" runtime-tests --prefix .)"
    step "the test files that need no exporter: $tests"
    for cpu in $test_cpus; do
        step "runtime tests inside the root, QEMU_CPU=$cpu"
        as_cpu "$cpu" VOXTRAL_TEST_FIXTURES=/data/fixtures /bin/sh -c \
            "cd /opt/src && /opt/venv/bin/python -m pytest -q -p no:cacheprovider $tests"
    done
fi

# -- bundles on the host, speech on both sides -------------------------------------------------------
[ "$run_speech" = 1 ] || exit 0
step "exporting bundles on the host (cached) and speaking them on x86"
"$python" "$here/compare.py" prepare --data "$work/data" --tiny-frames "$tiny_frames" --small-frames "$small_frames"
for cpu in cortex-a53 max; do
    step "speaking inside the root, QEMU_CPU=$cpu"
    as_cpu "$cpu" /opt/venv/bin/python /opt/src/benchmarks/arm/compare.py speak --data /data --variant "$cpu"
done
"$python" "$here/compare.py" report --data "$work/data" --wheels "$wheels"
