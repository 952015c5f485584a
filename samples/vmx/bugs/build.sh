#!/usr/bin/env bash
# Builds kvm.ko + kvm-intel.ko out of tree from Debian's own kernel source, stock or with one of
# the bug patches under patches/<kernel>/, for the real-VMX lab (issue 16). The modules match
# the lab's Debian kernel exactly (same source package version, same headers, same gcc-12), so
# their vermagic and every symbol CRC equal the distribution's and they insmod into the stock
# kernel in place of its own kvm/kvm-intel (out-of-tree and unsigned: the kernel is tainted
# "OE", nothing else changes).
#
#   samples/vmx/bugs/build.sh [--kernel 6.1|6.12|all] [VARIANT...]
#   samples/vmx/bugs/build.sh --list
#
# VARIANT is `stock` or a patch name (patches/<kernel>/<name>.patch without `.patch`); none
# means stock plus every patch for that kernel. Output, per kernel and variant:
#   target/vmxbugs/modules/<kernel>/<variant>/{kvm.ko,kvm-intel.ko,BUILD-INFO}
# (debug info stripped, like Debian's). Everything is cached under target/vmxbugs/ (override
# with VMXBUGS_DIR): the .debs (apt-get download through a private apt configuration, so the
# machine's sources are not touched), the unpacked headers and KVM sources, one incremental
# build tree per kernel, and the modules, rebuilt only when the patch, the source package or
# this script changes. CPU work runs under `nice -n ${NICE:-10}` with `make -j${JOBS:-2}`.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../../.." && pwd)
dir=${VMXBUGS_DIR:-$repo/target/vmxbugs}
jobs=${JOBS:-2}
nice_level=${NICE:-10}

# The Debian kernels the lab boots. These must be the lab's kernel packages (see
# samples/vmx/build-image.sh in the lab harness): a module set is only loadable into the exact
# ABI it was built for.
kernel_params() {
    case "$1" in
        6.1)
            abi=6.1.0-57-amd64 version=6.1.192-3
            common=linux-headers-6.1.0-57-common kbuild=linux-kbuild-6.1
            source_pkg=linux-source-6.1 ;;
        6.12)
            abi=6.12.95+deb12-amd64 version=6.12.95-1~bpo12+1
            common=linux-headers-6.12.95+deb12-common kbuild=linux-kbuild-6.12.95+deb12
            source_pkg=linux-source-6.12 ;;
        *) echo "build.sh: unknown kernel '$1' (6.1 or 6.12)" >&2; exit 2 ;;
    esac
}

log() { echo "build.sh: $*" >&2; }

# apt-get/apt-cache with a private configuration under $dir/apt: bookworm, bookworm-security
# (both kernels live there) and bookworm-backports, read with Debian's archive key.
apt_private() {
    local tool=$1; shift
    "$tool" -o Dir::Etc::sourcelist="$dir/apt/sources.list" -o Dir::Etc::sourceparts=- \
        -o Dir::State::Lists="$dir/apt/lists" -o Dir::Cache="$dir/apt/cache" \
        -o Dir::State::status="$dir/apt/status" -o Debug::NoLocking=1 \
        -o APT::Architecture=amd64 -o APT::Sandbox::User=root "$@"
}

apt_setup() {
    [ -f "$dir/apt/sources.list" ] && return 0
    mkdir -p "$dir/apt/lists/partial" "$dir/apt/cache/archives/partial"
    : >"$dir/apt/status"
    local key=/usr/share/keyrings/debian-archive-keyring.gpg
    cat >"$dir/apt/sources.list" <<EOF
deb [signed-by=$key] http://deb.debian.org/debian bookworm main
deb [signed-by=$key] http://deb.debian.org/debian-security bookworm-security main
deb [signed-by=$key] http://deb.debian.org/debian bookworm-backports main
EOF
    log "apt-get update (private configuration in $dir/apt)"
    apt_private apt-get update -qq >/dev/null
}

# Downloads <package>=<version> into $dir/debs unless it is there already.
fetch_deb() {
    local pkg=$1 ver=$2 file
    file=$(printf '%s_%s_' "$pkg" "${ver//:/%3a}")
    if compgen -G "$dir/debs/$file*.deb" >/dev/null; then return 0; fi
    apt_setup
    mkdir -p "$dir/debs"
    log "apt-get download $pkg=$ver"
    (cd "$dir/debs" && apt_private apt-get download -qq "$pkg=$ver") || {
        log "refreshing the package lists and retrying"
        apt_private apt-get update -qq >/dev/null
        (cd "$dir/debs" && apt_private apt-get download -qq "$pkg=$ver")
    }
}

deb_path() { compgen -G "$dir/debs/$(printf '%s_%s_' "$1" "${2//:/%3a}")*.deb" | head -n1; }

# Unpacks the headers and kbuild packages into $kdir/root and the KVM part of the source tree
# into $kdir/pristine (arch/x86/kvm and virt/kvm: all that kvm.ko and kvm-intel.ko are made of).
prepare_kernel() {
    local k=$1
    kernel_params "$k"
    kdir=$dir/$k
    headers=$kdir/root/usr/src/linux-headers-$abi
    local stamp="$abi $version"
    if [ -f "$kdir/prepared" ] && [ "$(cat "$kdir/prepared")" = "$stamp" ]; then return 0; fi
    for pkg in "linux-headers-$abi" "$common" "$kbuild" "$source_pkg"; do
        fetch_deb "$pkg" "$version"
    done
    rm -rf "$kdir"
    mkdir -p "$kdir/root" "$kdir/srcdeb" "$kdir/pristine"
    for pkg in "linux-headers-$abi" "$common" "$kbuild"; do
        dpkg-deb -x "$(deb_path "$pkg" "$version")" "$kdir/root"
    done
    # The arch headers' Makefile includes the common one by its installed absolute path.
    sed -i "s|^include /usr/src/|include $kdir/root/usr/src/|" "$headers/Makefile"
    grep -q "^include $kdir/root/usr/src/" "$headers/Makefile" \
        || { log "unexpected $headers/Makefile:"; cat "$headers/Makefile" >&2; exit 1; }
    dpkg-deb -x "$(deb_path "$source_pkg" "$version")" "$kdir/srcdeb"
    local tarball top
    tarball=$(compgen -G "$kdir/srcdeb/usr/src/linux-source-*.tar.xz" | head -n1)
    top=$(basename "$tarball" .tar.xz)
    log "unpacking arch/x86/kvm and virt/kvm from $(basename "$tarball")"
    nice -n "$nice_level" tar -xJf "$tarball" -C "$kdir/pristine" --strip-components=1 \
        "$top/arch/x86/kvm" "$top/virt/kvm"
    rm -rf "$kdir/srcdeb"
    echo "$stamp" >"$kdir/prepared"
}

# The Kbuild file that builds the tree under $1 as an external module: the in-tree Makefile
# with $(srctree) (the headers, which hold no KVM sources) replaced by the tree itself.
# -I virt/kvm makes trace.h's TRACE_INCLUDE_PATH (../../arch/x86/kvm, relative to an include
# directory) resolve inside the tree. kvm-amd is not built.
write_kbuild() {
    local tree=$1
    {
        echo '# Generated by samples/vmx/bugs/build.sh from this directory'"'"'s Makefile.'
        echo 'VMXBUGS_TREE := $(abspath $(src)/../../..)'
        sed 's|\$(srctree)/|$(VMXBUGS_TREE)/|g' "$tree/arch/x86/kvm/Makefile"
        echo 'ccflags-y += -I $(VMXBUGS_TREE)/virt/kvm'
        echo 'obj-m := $(filter-out kvm-amd.o,$(obj-m))'
    } >"$tree/arch/x86/kvm/Kbuild"
}

# Makes the build tree's sources equal the staged ones, touching only the files that differ,
# so that make rebuilds just what a patch changed.
sync_tree() {
    local from=$1 to=$2 rel
    (cd "$from" && find . -type f -print) | while read -r rel; do
        if ! cmp -s "$from/$rel" "$to/$rel"; then
            mkdir -p "$(dirname "$to/$rel")"
            cp "$from/$rel" "$to/$rel"
        fi
    done
}

# Debian's 6.12 headers ship a BTF-only vmlinux, so kbuild generates each module's BTF with
# pahole, as Debian did for its own modules (CONFIG_PAHOLE_VERSION=124: bookworm's 1.24). The
# package is unpacked under $dir/tools, not installed; its libraries (libdw1, libelf1,
# libbpf1) are the machine's.
pahole_version=1.24-4.1
pahole_setup() {
    [ -f "$headers/vmlinux" ] || return 0
    local root=$dir/tools/pahole-$pahole_version
    if [ ! -x "$root/usr/bin/pahole" ]; then
        fetch_deb pahole "$pahole_version"
        mkdir -p "$root"
        dpkg-deb -x "$(deb_path pahole "$pahole_version")" "$root"
    fi
    "$root/usr/bin/pahole" --version >/dev/null \
        || { log "$root/usr/bin/pahole does not run (libdw1, libelf1, libbpf1 installed?)"; exit 1; }
    PATH=$root/usr/bin:$PATH
}

modinfo_field() {
    objcopy -O binary --only-section=.modinfo "$1" /dev/stdout 2>/dev/null | tr '\0' '\n' \
        | sed -n "s/^$2=//p"
}

build_variant() {
    local k=$1 variant=$2 patch="" patch_sum=none
    if [ "$variant" != stock ]; then
        patch=$here/patches/$k/$variant.patch
        [ -f "$patch" ] || { log "no patch $patch"; exit 2; }
        patch_sum=$(sha256sum "$patch" | cut -d' ' -f1)
    fi
    local out=$dir/modules/$k/$variant
    local key
    key="$abi $version patch:$patch_sum script:$(sha256sum "$0" | cut -d' ' -f1)"
    if [ -f "$out/BUILD-INFO" ] && [ "$(sed -n 's/^key: //p' "$out/BUILD-INFO")" = "$key" ]; then
        log "$k/$variant: up to date ($out)"
        return 0
    fi
    local stage=$kdir/stage work=$kdir/work
    rm -rf "$stage"
    cp -a "$kdir/pristine" "$stage"
    if [ -n "$patch" ]; then
        (cd "$stage" && patch -p1 -F0 -s --no-backup-if-mismatch <"$patch") \
            || { log "$k/$variant: $patch does not apply to $source_pkg $version"; exit 1; }
    fi
    write_kbuild "$stage"
    mkdir -p "$work"
    sync_tree "$stage" "$work"
    pahole_setup
    log "$k/$variant: make (nice $nice_level, -j$jobs); log in $work/build.log"
    if ! nice -n "$nice_level" make -C "$headers" M="$work/arch/x86/kvm" -j"$jobs" modules \
        >"$work/build.log" 2>&1; then
        grep -E 'error|Error' "$work/build.log" | head -n 20 >&2 || true
        log "$k/$variant: build failed (see $work/build.log)"
        exit 1
    fi
    rm -rf "$out"
    mkdir -p "$out"
    local m vermagic
    for m in kvm kvm-intel; do
        strip --strip-debug -o "$out/$m.ko" "$work/arch/x86/kvm/$m.ko"
        vermagic=$(modinfo_field "$out/$m.ko" vermagic)
        case "$vermagic" in
            "$abi "*) ;;
            *) log "$k/$variant: $m.ko has vermagic '$vermagic', want '$abi ...'"; exit 1 ;;
        esac
    done
    {
        echo "key: $key"
        echo "kernel: $abi ($source_pkg $version, headers linux-headers-$abi)"
        echo "variant: $variant"
        [ -n "$patch" ] && echo "patch: samples/vmx/bugs/patches/$k/$variant.patch sha256 $patch_sum"
        echo "vermagic: $(modinfo_field "$out/kvm.ko" vermagic)"
        echo "compiler: $(gcc-12 --version | head -n1)"
        for m in kvm kvm-intel; do echo "sha256 $m.ko: $(sha256sum "$out/$m.ko" | cut -d' ' -f1)"; done
    } >"$out/BUILD-INFO"
    log "$k/$variant: $out"
}

variants_for() {
    local k=$1 p
    echo stock
    for p in "$here/patches/$k"/*.patch; do
        [ -f "$p" ] && basename "$p" .patch
    done
}

kernels=(6.1)
requested=()
while [ $# -gt 0 ]; do
    case "$1" in
        --kernel|-k)
            [ $# -ge 2 ] || { log "--kernel needs 6.1, 6.12 or all"; exit 2; }
            if [ "$2" = all ]; then kernels=(6.1 6.12); else kernels=("$2"); fi
            shift 2 ;;
        --list)
            for k in 6.1 6.12; do variants_for "$k" | sed "s|^|$k |"; done
            exit 0 ;;
        -h|--help) sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        -*) log "unknown option $1"; exit 2 ;;
        *) requested+=("$1"); shift ;;
    esac
done

command -v gcc-12 >/dev/null || { log "gcc-12 is needed (Debian's kernels are built with it)"; exit 1; }
for k in "${kernels[@]}"; do
    prepare_kernel "$k"
    if [ ${#requested[@]} -gt 0 ]; then
        list=("${requested[@]}")
    else
        mapfile -t list < <(variants_for "$k")
    fi
    for v in "${list[@]}"; do build_variant "$k" "$v"; done
done
