#!/bin/sh
# Runs vmx-* scenarios of our L1 hypervisor in Bochs with TWO emulated host CPUs (the lab
# harness, samples/vmx/, boots one). Needed for vmx-init: with one host CPU the emulated
# Debian 6.1 host stalls while both vCPU threads of the L1 run (observed 2026-12-05: the
# serial console stops mid-line, nothing more). Derived from shared/tools/vmx-lab-probe.
#
#   samples/vmx/l1/smp/run.sh WORK_DIR "SCENARIO PROFILE OUTNAME [KVM_INTEL_ARGS]" ...
#   e.g. samples/vmx/l1/smp/run.sh target/l1-smp "vmx-init mmu l1-init-6.1"
#
# KVM_INTEL_ARGS is comma-separated (default nested=1). The traces and their .truth.json come
# back over the serial console (base64) into WORK_DIR/out/. Needs bochs, bochs-term,
# bochsbios, vgabios, busybox-static, isolinux, syslinux-common, xorriso, cpio, gcc, apt-get
# (scripts/setup.sh), and a built target/debug/vmxray.
set -eu
ROOT=$(cd "$(dirname "$0")/../../../.." && pwd)
W=$(mkdir -p "$1" && cd "$1" && pwd)
shift
K=6.1.0-57-amd64
cd "$W"
make -s -C "$ROOT/samples/vmx/l1" O="$W/l1"
if [ ! -d kpkg ]; then
    apt-get download "linux-image-$K" >/dev/null
    dpkg -x linux-image-"$K"_*.deb kpkg
fi

R=initramfs
rm -rf $R && mkdir -p $R/bin $R/lib/modules $R/proc $R/sys $R/dev $R/tmp $R/lib64 $R/lib/x86_64-linux-gnu
cp /bin/busybox $R/bin/busybox
strip -o $R/bin/vmxray "$ROOT/target/debug/vmxray"
for lib in $(ldd "$ROOT/target/debug/vmxray" | awk '{for(i=1;i<=NF;i++) if ($i ~ /^\//) print $i}'); do
    mkdir -p "$R$(dirname "$lib")" && cp -L "$lib" "$R$lib"
done
cp "$W/l1/l1.bin" $R/l1.bin
M=kpkg/lib/modules/$K/kernel
cp $M/virt/lib/irqbypass.ko $M/arch/x86/kvm/kvm.ko $M/arch/x86/kvm/kvm-intel.ko $R/lib/modules/
for m in $R/lib/modules/*.ko; do strip --strip-debug "$m"; done
mknod -m 600 $R/dev/console c 5 1
mknod -m 666 $R/dev/null c 1 3
: >$R/scenarios
for line in "$@"; do echo "$line" >>$R/scenarios; done
cat >$R/init <<'EOF'
#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin:/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
mount -t tracefs tracefs /sys/kernel/tracing
M=/lib/modules
insmod $M/irqbypass.ko && insmod $M/kvm.ko && insmod $M/kvm-intel.ko nested=1
loaded=nested=1
echo "L1SMP: kernel $(uname -r), $(grep -c ^processor /proc/cpuinfo) CPUs"
cd /tmp
while read s prof out kargs; do
    [ -n "$s" ] || continue
    kargs=${kargs:-nested=1}
    if [ "$kargs" != "$loaded" ]; then
        rmmod kvm_intel && insmod $M/kvm-intel.ko $(echo "$kargs" | tr ',' ' ') && loaded=$kargs
    fi
    echo "L1SMP: run $s ($prof, kvm_intel $kargs)"
    timeout 240 /bin/vmxray lab "$s" --profile "$prof" --l1-image /l1.bin -o "/tmp/$out.dat"
    echo "L1SMP: rc=$? for $s"
    for f in "/tmp/$out.dat" "/tmp/$out.dat.truth.json"; do
        [ -e "$f" ] || continue
        echo "L1SMP-FILE-BEGIN $(basename "$f")"
        base64 "$f"
        echo "L1SMP-FILE-END"
    done
done </scenarios
echo "L1SMP-DONE"
sync
sleep 2
poweroff -f
EOF
chmod +x $R/init
(cd $R && find . | cpio -o -H newc 2>/dev/null | gzip -1) >initramfs.cpio.gz

rm -rf iso && mkdir -p iso/isolinux
cp /usr/lib/ISOLINUX/isolinux.bin /usr/lib/syslinux/modules/bios/ldlinux.c32 iso/isolinux/
cp kpkg/boot/vmlinuz-$K iso/vmlinuz
cp initramfs.cpio.gz iso/initrd.gz
cat >iso/isolinux/isolinux.cfg <<EOF
SERIAL 0 115200
DEFAULT l1
PROMPT 0
TIMEOUT 0
LABEL l1
  KERNEL /vmlinuz
  INITRD /initrd.gz
  APPEND console=ttyS0,115200 nokaslr mitigations=off lpj=1000000 tsc=reliable loglevel=4 nowatchdog
EOF
xorriso -as mkisofs -quiet -o boot.iso -b isolinux/isolinux.bin -c isolinux/boot.cat \
    -no-emul-boot -boot-load-size 4 -boot-info-table -R -J iso

cat >bochsrc <<EOF
config_interface: textconfig
display_library: term
romimage: file=/usr/share/bochs/BIOS-bochs-latest
vgaromimage: file=/usr/share/bochs/VGABIOS-lgpl-latest
vga: extension=vbe
megs: 512
cpu: model=corei7_haswell_4770, count=2, ips=50000000, reset_on_triple_fault=1
ata0: enabled=1, ioaddr1=0x1f0, ioaddr2=0x3f0, irq=14
ata0-master: type=cdrom, path=boot.iso, status=inserted
boot: cdrom
clock: sync=none, time0=local
com1: enabled=1, mode=file, dev=serial.log
log: bochs.log
panic: action=fatal
error: action=ignore
info: action=ignore
debug: action=ignore
mouse: enabled=0
speaker: enabled=0
sound: driver=dummy
EOF
printf 'c\nquit\n' >dbg.rc
rm -f serial.log
# Debian's bochs: term display in a pty (no nogui plugin), debugger continues at once,
# SIGTERM ignored (hence KILL).
TERM=xterm timeout -k 20 1810 script -qfc "timeout -s KILL 1800 nice -n 10 bochs -f bochsrc -rc dbg.rc" \
    term.out >/dev/null 2>&1 </dev/null || true
grep -a '^L1SMP: \|^vmxray' serial.log || true

mkdir -p out
awk -v out="$W/out" '
    { sub(/\r$/, "") }
    /^L1SMP-FILE-BEGIN / { name = $2; file = out "/" name ".b64"; printf "" > file; next }
    /^L1SMP-FILE-END/ { close(file); name = ""; next }
    name != "" { print >> file }
' serial.log
for f in out/*.b64; do
    [ -e "$f" ] || continue
    base64 -d "$f" >"${f%.b64}" && rm "$f" && echo "$W/${f%.b64}"
done
grep -q '^L1SMP-DONE' serial.log
