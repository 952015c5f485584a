#!/usr/bin/env bash
# Prepares a fresh machine for vmxray's tests: the peer tools the differential tests compare
# against (trace-cmd, perf), tmux for the terminal end-to-end test, and a mounted tracefs for
# the recorder tests. Idempotent; needs root for the installs and the mount (without root it
# only reports what is missing, and the tests that need it print SKIP).
set -euo pipefail

need=()
command -v trace-cmd >/dev/null 2>&1 || need+=(trace-cmd)
command -v perf >/dev/null 2>&1 || need+=(linux-perf)
command -v tmux >/dev/null 2>&1 || need+=(tmux)
# groff renders the generated man pages in tests/it/docs_cli.rs; man-db for `man -l`.
command -v groff >/dev/null 2>&1 || need+=(groff-base)
command -v man >/dev/null 2>&1 || need+=(man-db)
if [ "${#need[@]}" -gt 0 ]; then
    if [ "$(id -u)" = 0 ]; then
        echo "setup: installing ${need[*]}" >&2
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq >/dev/null
        apt-get install -y -qq "${need[@]}" >/dev/null
    else
        echo "setup: missing ${need[*]} (not root: cannot install)" >&2
    fi
fi

# The real-VMX lab (`vmxray lab --vmx`, samples/vmx/): Bochs with a VMX CPU model and the
# pieces of its boot image (ISO with isolinux, busybox initramfs, QEMU for the L1-Linux
# scenario). Kernels are not installed here: samples/vmx/build-image.sh downloads them into
# target/vmxlab/.
vmxlab=(bochs bochs-term bochsbios vgabios xorriso cpio isolinux syslinux-common busybox-static
    qemu-system-x86 xz-utils zstd binutils)
missing=()
for p in "${vmxlab[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    if [ "$(id -u)" = 0 ]; then
        echo "setup: installing ${missing[*]} (vmx lab)" >&2
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq >/dev/null
        apt-get install -y -qq --no-install-recommends -o DPkg::Lock::Timeout=600 \
            "${missing[@]}" >/dev/null
    else
        echo "setup: missing ${missing[*]} (vmx lab; not root: cannot install)" >&2
    fi
fi

if ! grep -q ' tracefs ' /proc/mounts 2>/dev/null; then
    if [ "$(id -u)" = 0 ] && [ -d /sys/kernel/tracing ]; then
        mount -t tracefs nodev /sys/kernel/tracing 2>/dev/null \
            && echo "setup: mounted tracefs at /sys/kernel/tracing" >&2 \
            || echo "setup: could not mount tracefs" >&2
    fi
fi

# DuckDB for the test that reads `vmxray scan`'s Parquet dataset back with another engine
# (tests/scan.rs; it fails under CI=true without it). A Debian python refuses a plain pip
# install into the system site-packages (PEP 668), hence the second form.
if command -v python3 >/dev/null 2>&1 && ! python3 -c 'import duckdb' 2>/dev/null; then
    echo "setup: installing the duckdb Python package" >&2
    python3 -m pip install -q duckdb 2>/dev/null \
        || python3 -m pip install -q --break-system-packages duckdb \
        || echo "setup: could not install duckdb" >&2
fi

# The Spark job's local-mode test (tests/it/spark.rs, analyze/spark/): a headless JRE from
# Debian and pyspark from PyPI, pinned (4.0.x runs on Java 17 and 21).
PYSPARK_VERSION=4.0.1
if ! command -v java >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ]; then
        echo "setup: installing default-jre-headless" >&2
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq >/dev/null
        apt-get install -y -qq default-jre-headless >/dev/null || echo "setup: could not install a JRE" >&2
    else
        echo "setup: missing java (not root: cannot install default-jre-headless)" >&2
    fi
fi
if command -v python3 >/dev/null 2>&1 \
    && ! python3 -c "import pyspark, sys; sys.exit(pyspark.__version__ != '$PYSPARK_VERSION')" 2>/dev/null; then
    echo "setup: installing pyspark==$PYSPARK_VERSION" >&2
    python3 -m pip install -q "pyspark==$PYSPARK_VERSION" 2>/dev/null \
        || python3 -m pip install -q --break-system-packages "pyspark==$PYSPARK_VERSION" \
        || echo "setup: could not install pyspark" >&2
fi
