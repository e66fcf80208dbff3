#!/usr/bin/env bash
# Runs a test script in a throwaway qemu VM on Debian 12's kernel (kTLS) and exits with its code.
# The VM boots a busybox initramfs holding our binaries with their shared libraries and the kTLS
# modules; no disk, no network but lo. Used by the `vm` test suite (tests/vm/meson.build).
#
# usage: run-in-vm.sh [--cache DIR] --work DIR [--bin PATH]... [--file SRC:DEST]...
#                     [--env NAME=VALUE]... --script SCRIPT [--timeout-s N] [--mem-mb N]
#   --cache    where vm-kernel.sh keeps the kernel (default: $DERP_VM_CACHE, else
#              $DERP_BUILD_ROOT/vm-cache); fetched on first use.
#   --work     scratch dir for the initramfs and console.log (recreated on every run).
#   --bin      an executable to copy in at the same absolute path, with every library `ldd` names
#              (and the dynamic loader) at their paths too, so it runs unchanged; also on PATH by
#              its base name (/vm-bin).
#   --file     copy SRC (file or directory) to DEST inside the VM.
#   --env      export NAME=VALUE to the script. DERP_BUILD_ROOT, DERP_SOURCE_ROOT,
#              DERP_FIXTURES_DIR, ASAN_OPTIONS and UBSAN_OPTIONS are passed on when set; the
#              script also sees DERPD_VM=1.
#   --script   run with /bin/sh (busybox ash) as root in /tmp, after lo is up and the modules
#              are loaded. Its output goes to the console, which is this script's stdout.
# Exit: the script's code; 1 on timeout, on a guest that died without reporting, or a harness
# error; 77 (skip) when qemu, busybox or the kernel package are not available.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
marker=DERPD-VM-EXIT
cache=${DERP_VM_CACHE:-}
if [[ -z "$cache" && -n "${DERP_BUILD_ROOT:-}" ]]; then cache=$DERP_BUILD_ROOT/vm-cache; fi
work='' script='' timeout_s=120 mem_mb=1024
bins=() files=() envs=()

usage() { sed -n '/^# usage:/,/^# Exit/p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
skip() { echo "SKIP: run-in-vm: $*"; exit 77; }
die() { echo "run-in-vm: $*" >&2; exit 1; }

while (($#)); do
  [[ $# -ge 2 ]] || usage
  case "$1" in
    --cache) cache=$2 ;;
    --work) work=$2 ;;
    --bin) bins+=("$2") ;;
    --file) files+=("$2") ;;
    --env) envs+=("$2") ;;
    --script) script=$2 ;;
    --timeout-s) timeout_s=$2 ;;
    --mem-mb) mem_mb=$2 ;;
    *) usage ;;
  esac
  shift 2
done
[[ -n "$cache" && -n "$work" && -n "$script" ]] || usage
[[ -f "$script" ]] || die "no script $script"
[[ "$timeout_s" =~ ^[0-9]+$ && "$mem_mb" =~ ^[0-9]+$ ]] || die "--timeout-s and --mem-mb take numbers"

qemu=$(command -v qemu-system-x86_64) ||
  skip "qemu-system-x86_64 not installed (apt-get install qemu-system-x86)"
busybox=$(command -v busybox) || skip "busybox not installed (apt-get install busybox-static)"
command -v cpio >/dev/null || skip "cpio not installed (apt-get install cpio)"

rc=0
"$here/vm-kernel.sh" "$cache" || rc=$?
if ((rc == 77)); then skip "no Debian kernel (see vm-kernel's message above)"; fi
((rc == 0)) || die "vm-kernel.sh failed ($rc)"
release=$(cat "$cache/kernel-release")

mkdir -p "$work"
work=$(cd "$work" && pwd)
root=$work/initramfs
rm -rf "$root"
mkdir -p "$root"

# Mirror the host's merged-/usr layout (/lib -> usr/lib, ...) so that the paths ldd reports, the
# loader's built-in search dirs and busybox's applet paths all land in one tree, as on the host.
for d in bin sbin lib lib32 lib64 libx32; do
  if [[ -L "/$d" ]]; then
    target=$(readlink "/$d")
    mkdir -p "$root/${target#/}"
    ln -s "$target" "$root/$d"
  fi
done
mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,proc,sys,dev,tmp,run,etc,root,vm-bin}

# Copies a host file to the same path in the image. --remove-destination: the path may be a busybox
# applet symlink, and writing through it would overwrite busybox itself.
put() {
  mkdir -p "$root$(dirname "$2")"
  cp -L --remove-destination "$1" "$root$2"
}
# An executable and everything the dynamic loader will map for it, at the paths ldd resolved.
put_exe() {
  local exe=$1 line lib
  put "$exe" "$exe"
  local out
  out=$(ldd "$exe" 2>&1) || true
  [[ "$out" == *"not a dynamic executable"* || "$out" == *"statically linked"* ]] && return
  while read -r line; do # (read strips ldd's leading tab)
    case "$line" in
      *"=> not found"*) die "$exe needs ${line%% =>*}, which ldd cannot find" ;;
      *"=> /"*) lib=${line#*=> }; lib=${lib%% (*} ;;
      /*) lib=${line%% (*} ;;
      *) continue ;; # linux-vdso.so.1: provided by the kernel
    esac
    [[ -e "$root$lib" ]] || put "$lib" "$lib"
  done <<<"$out"
}

# busybox-static normally; a dynamic busybox works too since its libraries come along.
put_exe "$busybox"
while IFS= read -r applet; do
  [[ -e "$root/$applet" || -L "$root/$applet" ]] || ln -s "$busybox" "$root/$applet"
done < <("$busybox" --list-full)
[[ -e "$root/bin/sh" ]] || ln -s "$busybox" "$root/bin/sh"

for b in "${bins[@]}"; do
  [[ -x "$b" && -f "$b" ]] || die "--bin $b is not an executable file"
  abs=$(realpath -s "$b")
  put_exe "$abs"
  ln -sf "$abs" "$root/vm-bin/$(basename "$abs")"
done
for f in "${files[@]}"; do
  src=${f%%:*} dest=${f#*:}
  [[ "$f" == *:* && "$dest" == /* && -e "$src" ]] ||
    die "--file wants SRC:/ABS/DEST with an existing SRC, got $f"
  mkdir -p "$root$(dirname "$dest")"
  cp -RL --remove-destination "$src" "$root$dest"
done

cp -R "$cache/lib/modules" "$root/lib/"
sed "s|^|/lib/modules/$release/|" "$cache/modules.load" >"$root/etc/vm-modules.load"
cp "$script" "$root/vm-script"

# Enough of /etc for getpwuid() and resolving "localhost" (glibc 2.36 has nss_files built in).
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' \
  >"$root/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' >"$root/etc/group"
printf '127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n' >"$root/etc/hosts"

# Environment for the script, single-quoted for ash.
quote() { local s=${1//\'/\'\\\'\'}; printf "'%s'" "$s"; }
{
  echo "export DERPD_VM=1"
  for v in DERP_BUILD_ROOT DERP_SOURCE_ROOT DERP_FIXTURES_DIR ASAN_OPTIONS UBSAN_OPTIONS; do
    if [[ -n "${!v:-}" ]]; then echo "export $v=$(quote "${!v}")"; fi
  done
  for e in "${envs[@]}"; do
    [[ "$e" =~ ^[A-Za-z_][A-Za-z0-9_]*= ]] || die "--env wants NAME=VALUE, got $e"
    echo "export ${e%%=*}=$(quote "${e#*=}")"
  done
} >"$root/etc/vm-env"

cat >"$root/init" <<EOF
#!/bin/sh
# PID 1 of the test VM (written by tests/vm/run-in-vm.sh): set up a minimal system, run the
# script, report its exit code on the console and power off. PID 1 must never exit: the kernel
# would panic (panic=-1 + qemu -no-reboot turn that into a quick exit, but without the marker).
export PATH=/vm-bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root TERM=dumb
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
# No tmpfs on /tmp or /run: the initramfs root is already a writable tmpfs, and a mount there
# would hide --bin/--file paths under them.
chmod 1777 /tmp
hostname derpd-vm
echo "derpd-vm: init up on \$(uname -r), \$(nproc) cpus"
ip link set lo up
while read -r m; do
  # EEXIST: built in or already pulled in; anything else is reported and left to the test.
  out=\$(insmod "\$m" 2>&1) ||
    case "\$out" in *exists*) ;; *) echo "derpd-vm: insmod \$m: \$out" ;; esac
done </etc/vm-modules.load
# 6.1 has no io_uring_disabled knob (6.6+ does); should a later kernel default it on, turn it off.
knob=/proc/sys/kernel/io_uring_disabled
if [ -e \$knob ] && [ "\$(cat \$knob)" != 0 ]; then
  echo "derpd-vm: enabling io_uring (io_uring_disabled was \$(cat \$knob))"
  echo 0 >\$knob
fi
# The kernel's default is 1024 soft / 4096 hard; relay tests open many sockets.
ulimit -n 65536
. /etc/vm-env
cd /tmp
/bin/sh /vm-script
rc=\$?
if [ "\$rc" != 0 ]; then
  echo "derpd-vm: script failed (\$rc); last kernel messages:"
  dmesg | tail -n 40
fi
echo "$marker=\$rc"
sync
poweroff -f
# Unreachable unless power-off failed; a reboot ends qemu too (-no-reboot).
reboot -f
EOF
chmod +x "$root/init"

# The kernel opens /dev/console for init before /init can mount devtmpfs, so the image must carry
# the node; a hand-made newc entry avoids needing root for mknod.
newc_entry() { # name mode rdevmajor rdevminor
  local name=$1 hdr
  hdr=$(printf '070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X' \
    0 "$2" 0 0 1 0 0 0 0 "$3" "$4" $((${#name} + 1)) 0)
  printf '%s%s\0' "$hdr" "$name"
  # header (110 bytes) + name + NUL, padded to a multiple of 4
  local pad=$(((4 - (110 + ${#name} + 1) % 4) % 4))
  head -c "$pad" /dev/zero
}
initrd=$work/initrd.img
{
  newc_entry dev $((0040755)) 0 0
  newc_entry dev/console $((0020600)) 5 1
  newc_entry TRAILER!!! 0 0 0
  (cd "$root" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet)
} | gzip -1 >"$initrd"

# Boot. quiet: the console carries the test's output, not the boot log; mitigations=off,
# tsc=reliable (no clocksource watchdog) and 8250.nr_uarts=1 (probe one UART, not 4) trim TCG boot.
log=$work/console.log
# qboot (qemu-system-data) only loads the kernel from fw_cfg: no SeaBIOS banner and screen-clearing
# escapes on the serial console. -nodefaults drops the NIC (and its iPXE ROM) and VGA; the console
# is the one serial port.
firmware=()
if [[ -f /usr/share/qemu/qboot.rom ]]; then firmware=(-bios qboot.rom); fi
# The uncompressed PVH vmlinux boots ~3 s faster than the bzImage (see vm-kernel.sh).
kernel=$cache/vmlinuz
if [[ -f "$cache/vmlinux" ]]; then kernel=$cache/vmlinux; fi
append="console=ttyS0 quiet panic=-1 mitigations=off tsc=reliable 8250.nr_uarts=1"
echo "run-in-vm: booting $release (timeout ${timeout_s}s), console log $log"
start=$SECONDS
set +e
# --foreground keeps qemu in our process group: without it timeout(1) moves itself and qemu into a
# group of their own, and meson's kill of the test's group on its timeout would orphan the VM.
timeout --foreground -k 5 "$timeout_s" \
  "$qemu" -accel tcg -cpu max -m "$mem_mb" -smp 2 -nographic -no-reboot \
  "${firmware[@]}" -nodefaults -serial stdio \
  -kernel "$kernel" -initrd "$initrd" -append "$append" </dev/null 2>&1 | tee "$log"
qemu_rc=${PIPESTATUS[0]}
set -e
elapsed=$((SECONDS - start))

if ((qemu_rc == 124 || qemu_rc == 137)); then
  echo "run-in-vm: TIMEOUT: the VM did not finish within ${timeout_s}s; qemu killed (log: $log)"
  exit 1
fi
code=$(tr -d '\r' <"$log" | sed -n "s/^.*$marker=\([0-9]\{1,3\}\).*$/\1/p" | tail -n 1)
if [[ -z "$code" ]]; then
  if ((qemu_rc != 0)) && ! grep -q 'derpd-vm: init up' "$log"; then
    skip "qemu-system-x86_64 could not start (exit $qemu_rc; see above)"
  fi
  echo "run-in-vm: FAIL: the VM stopped (qemu exit $qemu_rc) without reporting the script's" \
    "exit code (log: $log)"
  exit 1
fi
echo "run-in-vm: script exited $code; VM ran ${elapsed}s"
exit "$code"
