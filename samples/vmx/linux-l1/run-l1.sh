#!/bin/sh
# Runs in L0: boots the L1 Linux under QEMU on L0's KVM, with L1 running `vmxray ARGS` (the
# script's arguments; default: a short unrecorded `lab io-loop`) as its L2 workload. L1's
# console goes to L0's console (the lab's serial log) and to l1-console.log in the working
# directory. Exits when L1 resets itself: 0 when L1 says its vmxray exited 0.
[ $# -gt 0 ] || set -- lab io-loop=50 --no-record
# L1's initramfs: its base plus vmxray and its libraries from L0's own root.
mkdir -p /tmp/l1args/vmxlab
printf '%s\n' "$@" > /tmp/l1args/vmxlab/l1-args
(cd / && cpio -o -H newc < /vmxlab/payload.files) > /tmp/l1-initrd 2>/dev/null || exit 1
(cd /tmp/l1args && echo vmxlab/l1-args | cpio -o -H newc) >> /tmp/l1-initrd 2>/dev/null || exit 1
cat /l1/base.cpio.gz /tmp/l1-initrd > /tmp/l1-initrd.full || exit 1
rm /tmp/l1-initrd
qemu-system-x86_64 -L /l1/share \
    -M microvm,x-option-roms=off,rtc=on,isa-serial=on -enable-kvm -cpu host,+vmx \
    -m "${L1_MEM:-384}" -smp 1 -nodefaults -no-user-config -display none \
    -chardev stdio,id=con,signal=off,logfile=l1-console.log -serial chardev:con \
    -monitor none -no-reboot \
    -kernel /l1/vmlinuz -initrd /tmp/l1-initrd.full \
    -append "console=ttyS0 quiet nokaslr mitigations=off lpj=1000000 tsc=reliable nowatchdog panic=-1 pci=off acpi=off reboot=t" \
    < /dev/null > /dev/console
rc=$?
rm -f /tmp/l1-initrd.full
echo "run-l1: qemu exited with $rc" >&2
grep -q 'L1: vmxray rc=0' l1-console.log || { echo "run-l1: L1 did not report 'vmxray rc=0'" >&2; exit 1; }
exit $rc
