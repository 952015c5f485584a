#!/usr/bin/env bash
# Builds the boot images of the real-VMX lab (`vmxray lab --vmx`) from Debian packages.
#
# Everything it makes is cached under target/vmxlab/ (or $VMXLAB_CACHE); nothing is committed
# but the pins in packages.lock. Host tools (bochs, xorriso, cpio, qemu-system-x86 for the
# L1-Linux scenario) come from scripts/setup.sh; the kernels are never installed on the host.
#
#   build-image.sh fetch                      download and check every pinned .deb
#   build-image.sh base KERNEL                kernel, modules, busybox and /init of the emulated
#                                             host (KERNEL is 6.1 or 6.12)
#   build-image.sh l1linux KERNEL             QEMU + libraries + the L1 Linux (same kernel) for
#                                             the nested scenario
#   build-image.sh iso KERNEL PAYLOAD ISO [--l1linux]
#                                             a bootable ISO: base + [l1linux] + PAYLOAD (a
#                                             directory laid out as the guest's root; the shared
#                                             libraries of its bin/ and usr/bin/ executables are
#                                             added, and bin/vmxray is stripped)
#   build-image.sh repin                      resolve the newest versions in the archive and
#                                             rewrite packages.lock
#
# Each step prints what it did on stderr and the path of its result on stdout.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
CACHE=${VMXLAB_CACHE:-$ROOT/target/vmxlab}
LOCK=$HERE/packages.lock
APT=$CACHE/apt
DEBS=$CACHE/debs
PKG=$CACHE/pkg

say() { echo "build-image: $*" >&2; }
die() { echo "build-image: error: $*" >&2; exit 1; }

# --- the private apt root: Debian's archive, our own lists, the machine's config untouched ---
apt_opts() {
    echo -o Dir::Etc::SourceList="$APT/sources.list" -o Dir::Etc::SourceParts=/dev/null \
        -o Dir::State::Lists="$APT/lists" -o Dir::Cache="$APT/cache" \
        -o Dir::State::status="$APT/dpkg.status" -o Dir::Etc::Preferences=/dev/null \
        -o Dir::Etc::PreferencesParts=/dev/null -o APT::Architecture=amd64 \
        -o APT::Architectures::=amd64 -o APT::Sandbox::User=root -o Debug::NoLocking=1
}

apt_update() {
    mkdir -p "$APT/lists/partial" "$APT/cache/archives/partial"
    touch "$APT/dpkg.status"
    local key=/usr/share/keyrings/debian-archive-keyring.gpg
    cat > "$APT/sources.list" <<SRC
deb [signed-by=$key] http://deb.debian.org/debian bookworm main
deb [signed-by=$key] http://deb.debian.org/debian bookworm-updates main
deb [signed-by=$key] http://deb.debian.org/debian bookworm-backports main
deb [signed-by=$key] http://deb.debian.org/debian-security bookworm-security main
SRC
    # Fresh enough: lists less than a day old.
    if [ -z "$(find "$APT/lists" -maxdepth 1 -name '*_Packages' -mmin -1440 2>/dev/null | head -1)" ]; then
        say "apt-get update (private lists in $APT)"
        # shellcheck disable=SC2046
        apt-get $(apt_opts) -qq update >&2 || die "apt-get update failed"
    fi
}

# lock_field ROLE N: field N (2 package, 3 version, 4 sha256) of ROLE's line in packages.lock.
lock_field() {
    awk -v role="$1" -v n="$2" '$1 == role { print $n; found = 1 } END { exit !found }' "$LOCK" \
        || die "no '$1' line in $LOCK"
}

# fetch_role ROLE: the checked .deb of ROLE (downloaded once).
fetch_role() {
    local role=$1 pkg ver sum deb
    pkg=$(lock_field "$role" 2)
    ver=$(lock_field "$role" 3)
    sum=$(lock_field "$role" 4)
    mkdir -p "$DEBS"
    deb=$(find "$DEBS" -maxdepth 1 -name "${pkg}_*.deb" | while read -r f; do
        [ "$(dpkg-deb -f "$f" Version)" = "$ver" ] && echo "$f"; done | head -1)
    if [ -z "$deb" ]; then
        apt_update
        say "downloading $pkg=$ver"
        # shellcheck disable=SC2046
        (cd "$DEBS" && apt-get $(apt_opts) -qq download "$pkg=$ver" >&2) \
            || die "cannot download $pkg=$ver (pinned in $LOCK; if the archive dropped it, run '$0 repin')"
        deb=$(find "$DEBS" -maxdepth 1 -name "${pkg}_*.deb" | while read -r f; do
            [ "$(dpkg-deb -f "$f" Version)" = "$ver" ] && echo "$f"; done | head -1)
    fi
    [ -n "$deb" ] || die "no .deb for $pkg=$ver in $DEBS"
    if [ "$(sha256sum < "$deb" | cut -d' ' -f1)" != "$sum" ]; then
        die "$deb does not have the sha256 pinned in $LOCK"
    fi
    echo "$deb"
}

# unpack_role ROLE: the directory the .deb of ROLE is unpacked into (dpkg -x, once).
unpack_role() {
    local deb dir
    deb=$(fetch_role "$1")
    dir=$PKG/$(basename "$deb" .deb)
    if [ ! -e "$dir/.unpacked" ]; then
        rm -rf "$dir"
        mkdir -p "$dir"
        say "unpacking $(basename "$deb")"
        dpkg -x "$deb" "$dir"
        touch "$dir/.unpacked"
    fi
    echo "$dir"
}

kernel_role() {
    case $1 in
        6.1 | 6.12) echo "kernel-$1" ;;
        *) die "unknown kernel '$1' (expected 6.1 or 6.12)" ;;
    esac
}

# kernel_release KERNEL: uname -r of the pinned kernel (from its package name).
kernel_release() {
    lock_field "$(kernel_role "$1")" 2 | sed 's/^linux-image-//'
}

# module_file MDIR NAME: the file of module NAME under MDIR (- and _ are the same in names).
module_file() {
    local pat
    pat=$(echo "$2" | sed 's/[-_]/[-_]/g')
    find "$1/kernel" -regextype posix-extended -regex ".*/$pat\.ko(\.(xz|zst|gz))?" | head -1
}

# unpack_module FILE OUT: FILE decompressed to OUT.
unpack_module() {
    case $1 in
        *.ko) cp "$1" "$2" ;;
        *.ko.xz) xz -dc "$1" > "$2" ;;
        *.ko.zst) zstd -qdc "$1" > "$2" ;;
        *.ko.gz) gzip -dc "$1" > "$2" ;;
        *) die "unknown module file $1" ;;
    esac
}

# copy_modules KROOT KREL DEST LIST MODULE...: copies MODULE and every module it depends on
# (the depends= of its .modinfo, recursively), decompressed and stripped of debug info, into
# DEST, and appends them in load order to DEST/LIST. (No depmod: the host needs no kmod.)
copy_modules() {
    local kroot=$1 krel=$2 dest=$3 list=$4
    shift 4
    local mdir=$kroot/lib/modules/$krel m file name deps d
    [ -d "$mdir/kernel" ] || mdir=$kroot/usr/lib/modules/$krel
    [ -d "$mdir/kernel" ] || die "no modules of $krel under $kroot"
    touch "$dest/$list"
    for m in "$@"; do
        name=$(echo "$m" | tr - _)
        grep -qx "$name.ko" "$dest/$list" && continue
        file=$(module_file "$mdir" "$m")
        [ -n "$file" ] || die "module $m not found under $mdir"
        unpack_module "$file" "$dest/$name.ko"
        deps=$(objcopy -O binary --only-section=.modinfo "$dest/$name.ko" /dev/stdout \
            | tr '\0' '\n' | sed -n 's/^depends=//p' | tr , ' ')
        for d in $deps; do
            copy_modules "$kroot" "$krel" "$dest" "$list" "$d"
        done
        strip --strip-debug "$dest/$name.ko"
        echo "$name.ko" >> "$dest/$list"
    done
}

# make_cpio DIR OUT [gzip]: a newc archive of DIR, every file owned by root.
make_cpio() {
    local dir=$1 out=$2
    if [ "${3:-}" = gzip ]; then
        (cd "$dir" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet | gzip -6) > "$out.tmp"
    else
        (cd "$dir" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet) > "$out.tmp"
    fi
    # Linux reads concatenated archives; an uncompressed one must start 4-byte aligned.
    truncate -s %512 "$out.tmp"
    mv "$out.tmp" "$out"
}

# The shared libraries (and the loader) an ELF executable needs, as host paths.
elf_libs() {
    ldd "$1" 2>/dev/null | awk '{ for (i = 1; i <= NF; i++) if ($i ~ /^\//) print $i }' | sort -u
}

# add_libs ROOT: copies into ROOT the libraries of every executable in ROOT/bin and ROOT/usr/bin.
add_libs() {
    local root=$1 exe lib
    for exe in "$root"/bin/* "$root"/usr/bin/*; do
        [ -f "$exe" ] && [ -x "$exe" ] || continue
        head -c 4 "$exe" | grep -q ELF || continue
        for lib in $(elf_libs "$exe"); do
            [ -e "$root$lib" ] && continue
            mkdir -p "$root$(dirname "$lib")"
            cp -L "$lib" "$root$lib"
        done
    done
}

# A stamp over the inputs of a cached product: rebuilt when any of them changes.
inputs_stamp() {
    cat "$@" | sha256sum | cut -d' ' -f1
}

cmd_fetch() {
    local role
    for role in $(awk '!/^#/ && NF { print $1 }' "$LOCK"); do
        fetch_role "$role" > /dev/null
    done
    say "every pinned package is in $DEBS"
}

# base KERNEL: $CACHE/KERNEL/{vmlinuz,base.cpio.gz,manifest.txt}
cmd_base() {
    local kernel=$1 role krel kroot bb out stamp root
    role=$(kernel_role "$kernel")
    krel=$(kernel_release "$kernel")
    out=$CACHE/$kernel
    stamp=$(inputs_stamp "$LOCK" "$HERE/init" "$0")
    if [ -f "$out/base.cpio.gz" ] && [ "$(cat "$out/base.stamp" 2>/dev/null)" = "$stamp" ]; then
        echo "$out"
        return
    fi
    kroot=$(unpack_role "$role")
    bb=$(unpack_role busybox)
    mkdir -p "$out"
    root=$out/base.root
    rm -rf "$root"
    mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,lib/modules,proc,sys,dev,tmp,out,vmxlab}
    cp "$bb/bin/busybox" "$root/bin/busybox"
    cp "$HERE/init" "$root/init"
    chmod 755 "$root/init"
    # ATA disk for the results (Bochs' PIIX IDE), then KVM.
    copy_modules "$kroot" "$krel" "$root/lib/modules" storage.order ata_piix sd_mod
    copy_modules "$kroot" "$krel" "$root/lib/modules" kvm.order kvm_intel
    make_cpio "$root" "$out/base.cpio.gz" gzip
    cp "$kroot/boot/vmlinuz-$krel" "$out/vmlinuz"
    {
        echo "kernel $kernel"
        echo "release $krel"
        awk -v role="$role" '!/^#/ && NF && ($1 == role || $1 !~ /^kernel-/) { print "package " $2 " " $3 " " $4 }' "$LOCK"
        echo "modules $(tr '\n' ' ' < "$root/lib/modules/storage.order")$(tr '\n' ' ' < "$root/lib/modules/kvm.order")"
        echo "bochs $(dpkg-query -W -f='${Version}' bochs 2>/dev/null || echo missing)"
        echo "qemu $(dpkg-query -W -f='${Version}' qemu-system-x86 2>/dev/null || echo missing)"
    } > "$out/manifest.txt"
    rm -rf "$root"
    echo "$stamp" > "$out/base.stamp"
    say "built $out/base.cpio.gz ($(stat -c %s "$out/base.cpio.gz") bytes) for $krel"
    echo "$out"
}

# l1linux KERNEL: $CACHE/KERNEL/l1linux.cpio.gz — QEMU and an L1 Linux to run under it.
cmd_l1linux() {
    local kernel=$1 role krel kroot bb out stamp root l1 qemu
    role=$(kernel_role "$kernel")
    krel=$(kernel_release "$kernel")
    out=$CACHE/$kernel
    qemu=$(command -v qemu-system-x86_64) || die "qemu-system-x86_64 is not installed (scripts/setup.sh installs it)"
    stamp=$(inputs_stamp "$LOCK" "$HERE/linux-l1/init" "$HERE/linux-l1/run-l1.sh" "$0" "$qemu")
    if [ -f "$out/l1linux.cpio.gz" ] && [ "$(cat "$out/l1linux.stamp" 2>/dev/null)" = "$stamp" ]; then
        echo "$out/l1linux.cpio.gz"
        return
    fi
    kroot=$(unpack_role "$role")
    bb=$(unpack_role busybox)
    mkdir -p "$out"
    # The L1 guest's own base initramfs (its /init adds vmxray at run time: see run-l1.sh).
    l1=$out/l1base.root
    rm -rf "$l1"
    mkdir -p "$l1"/{bin,sbin,lib/modules,proc,sys,dev,tmp}
    cp "$bb/bin/busybox" "$l1/bin/busybox"
    cp "$HERE/linux-l1/init" "$l1/init"
    chmod 755 "$l1/init"
    copy_modules "$kroot" "$krel" "$l1/lib/modules" kvm.order kvm_intel
    # What L0 unpacks: QEMU, its libraries and firmware, the L1 kernel and base initramfs.
    root=$out/l1linux.root
    rm -rf "$root"
    mkdir -p "$root"/{usr/bin,l1/share}
    cp "$qemu" "$root/usr/bin/qemu-system-x86_64"
    add_libs "$root"
    # microvm boots with qboot (bios-microvm.bin); -nodefaults and no devices need nothing else.
    cp -L /usr/share/qemu/bios-microvm.bin "$root/l1/share/"
    cp "$kroot/boot/vmlinuz-$krel" "$root/l1/vmlinuz"
    make_cpio "$l1" "$root/l1/base.cpio.gz" gzip
    cp "$HERE/linux-l1/run-l1.sh" "$root/l1/run-l1.sh"
    chmod 755 "$root/l1/run-l1.sh"
    make_cpio "$root" "$out/l1linux.cpio.gz" gzip
    echo "qemu $(dpkg-query -W -f='${Version}' qemu-system-x86 2>/dev/null || echo unknown)" > "$out/l1linux.manifest"
    rm -rf "$root" "$l1"
    echo "$stamp" > "$out/l1linux.stamp"
    say "built $out/l1linux.cpio.gz ($(stat -c %s "$out/l1linux.cpio.gz") bytes)"
    echo "$out/l1linux.cpio.gz"
}

# iso KERNEL PAYLOAD ISO [--l1linux]
cmd_iso() {
    local kernel=$1 payload=$2 iso=$3 l1linux=${4:-} out work initrds isolinux syslinux
    [ -d "$payload" ] || die "no payload directory $payload"
    command -v xorriso > /dev/null || die "xorriso is not installed (scripts/setup.sh installs it)"
    out=$(cmd_base "$kernel")
    isolinux=$(unpack_role isolinux)
    syslinux=$(unpack_role syslinux-common)
    work=$(dirname "$iso")/iso.root
    rm -rf "$work"
    mkdir -p "$work/isolinux"
    cp "$isolinux/usr/lib/ISOLINUX/isolinux.bin" "$work/isolinux/"
    cp "$syslinux/usr/lib/syslinux/modules/bios/ldlinux.c32" "$work/isolinux/"
    cp "$out/vmlinuz" "$work/vmlinuz"
    cp "$out/base.cpio.gz" "$work/base.gz"
    initrds=/base.gz
    if [ "$l1linux" = --l1linux ]; then
        cp "$(cmd_l1linux "$kernel")" "$work/l1linux.gz"
        initrds=$initrds,/l1linux.gz
    fi
    add_libs "$payload"
    # A debug build is ~110 MB, ~65 MB without symbols: every byte is read by the emulated CPU.
    if [ -f "$payload/bin/vmxray" ]; then
        strip "$payload/bin/vmxray"
    fi
    # What run-l1.sh copies into the L1 Linux: the payload with its libraries.
    mkdir -p "$payload/vmxlab"
    (cd "$payload" && find . -mindepth 1 ! -path ./vmxlab/payload.files | LC_ALL=C sort) \
        > "$payload/vmxlab/payload.files"
    # The payload stays uncompressed: gunzip in the emulated CPU costs more than reading it.
    make_cpio "$payload" "$work/payload.cpio"
    initrds=$initrds,/payload.cpio
    cat > "$work/isolinux/isolinux.cfg" <<CFG
SERIAL 0 115200
DEFAULT vmxlab
PROMPT 0
TIMEOUT 0
LABEL vmxlab
  KERNEL /vmlinuz
  INITRD $initrds
  APPEND ${VMXLAB_CMDLINE:-console=ttyS0,115200 nokaslr mitigations=off lpj=1000000 tsc=reliable nowatchdog loglevel=4 panic=0}
CFG
    xorriso -as mkisofs -quiet -o "$iso.tmp" -b isolinux/isolinux.bin -c isolinux/boot.cat \
        -no-emul-boot -boot-load-size 4 -boot-info-table -R -J "$work" >&2
    mv "$iso.tmp" "$iso"
    rm -rf "$work"
    say "built $iso ($(stat -c %s "$iso") bytes)"
    echo "$iso"
}

cmd_repin() {
    apt_update
    local o k61 k612 bpo role pkg ver deb tmp
    o=$(apt_opts)
    # shellcheck disable=SC2086
    k61=$(apt-cache $o depends linux-image-amd64 | awk '/Depends: linux-image-6\.1\./ { print $2; exit }')
    # shellcheck disable=SC2086
    bpo=$(apt-cache $o madison linux-image-amd64 | awk -F'|' '$2 ~ /bpo12/ { gsub(/ /, "", $2); print $2; exit }')
    # shellcheck disable=SC2086
    k612=$(apt-cache $o show "linux-image-amd64=$bpo" | awk '/^Depends:/ { for (i = 2; i <= NF; i++) if ($i ~ /^linux-image-6\.12/) { sub(/,$/, "", $i); print $i; exit } }')
    [ -n "$k61" ] && [ -n "$k612" ] || die "cannot resolve the 6.1 and 6.12 kernel packages"
    tmp=$(mktemp)
    {
        echo "# Pinned Debian packages of the real-VMX lab image (build-image.sh repin rewrites this)."
        echo "# role package version sha256-of-the-.deb"
        for role in kernel-6.1:$k61 kernel-6.12:$k612 busybox:busybox-static isolinux:isolinux \
            syslinux-common:syslinux-common; do
            pkg=${role#*:}
            if [ "${role%%:*}" = kernel-6.12 ]; then
                # shellcheck disable=SC2086
                ver=$(apt-cache $o madison "$pkg" | awk -F'|' '{ gsub(/ /, "", $2); print $2; exit }')
            else
                # shellcheck disable=SC2086
                ver=$(apt-cache $o policy "$pkg" | awk '/Candidate:/ { print $2 }')
            fi
            # shellcheck disable=SC2086
            mkdir -p "$DEBS"
            (cd "$DEBS" && apt-get $o -qq download "$pkg=$ver" >&2)
            deb=$(ls "$DEBS/${pkg}_"*.deb | while read -r f; do
                [ "$(dpkg-deb -f "$f" Version)" = "$ver" ] && echo "$f"; done | head -1)
            echo "${role%%:*} $pkg $ver $(sha256sum < "$deb" | cut -d' ' -f1)"
        done
    } > "$tmp"
    mv "$tmp" "$LOCK"
    say "rewrote $LOCK"
    cat "$LOCK" >&2
}

case ${1:-} in
    fetch) cmd_fetch ;;
    base) [ $# = 2 ] || die "usage: $0 base KERNEL"; cmd_base "$2" ;;
    l1linux) [ $# = 2 ] || die "usage: $0 l1linux KERNEL"; cmd_l1linux "$2" ;;
    iso) [ $# -ge 4 ] || die "usage: $0 iso KERNEL PAYLOAD ISO [--l1linux]"; cmd_iso "$2" "$3" "$4" "${5:-}" ;;
    repin) cmd_repin ;;
    *) die "usage: $0 fetch | base KERNEL | l1linux KERNEL | iso KERNEL PAYLOAD ISO [--l1linux] | repin" ;;
esac
