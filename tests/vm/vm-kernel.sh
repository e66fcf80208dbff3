#!/usr/bin/env bash
# Fetches Debian 12's kernel and the modules kTLS needs into a cache dir for the VM tests.
# The package (linux-image-6.1.*-amd64, kTLS as the `tls` module) is downloaded with apt-get, never
# installed. Usage: vm-kernel.sh CACHE_DIR. Exit 77 when the package cannot be had.
#
# Cache layout (complete once `.complete` exists; reused as-is after that):
#   vmlinuz; vmlinux (its ELF payload, when that has a PVH note); kernel-release;
#   modules.load (module paths under lib/modules/<release>/, in load order);
#   lib/modules/<release>/... (only the modules below, uncompressed, with modules.dep/alias);
#   linux-image-*.deb (kept, so that a change of the module list needs no second download).
set -euo pipefail

die77() { echo "vm-kernel: $*" >&2; exit 77; }

[[ $# -eq 1 ]] || { echo "usage: $0 CACHE_DIR" >&2; exit 2; }
mkdir -p "$1"
cache=$(cd "$1" && pwd)

# tls.ko has no symbol dependencies on 6.1 (strparser is built in), but installing TLS_TX/TLS_RX
# allocates the AEAD ("gcm(aes)", "ccm(aes)", "rfc7539(chacha20,poly1305)") and the crypto API
# reaches the templates only through request_module(), i.e. a usermode /sbin/modprobe. Busybox's
# modprobe with the modules.dep/alias written below does serve that, but loading the set at boot
# keeps it deterministic and shows a failure there. The x86 SIMD drivers are optional speedups:
# TCG's `-cpu max` emulates AES-NI/PCLMUL/AVX2, so they load; where not, the generic code serves.
wanted=(tls gcm ctr ghash-generic ccm chacha20poly1305 chacha_generic poly1305_generic
  aesni-intel ghash-clmulni-intel chacha-x86_64 poly1305-x86_64)

# Two test runs may fill the same cache at once (meson runs tests in parallel).
exec 9>"$cache/.lock"
flock 9

# The stamp names the layout and the module list: a cache made for other ones is rebuilt (from the
# kept .deb).
stamp="layout 2: ${wanted[*]}"
if [[ -f "$cache/.complete" && "$(cat "$cache/.complete")" == "$stamp" ]]; then
  exit 0
fi
rm -f "$cache/.complete"

deb=$(find "$cache" -maxdepth 1 -name 'linux-image-6.1.*-amd64_*.deb' -print -quit)
if [[ -z "$deb" ]]; then
  if ! command -v apt-get >/dev/null || ! command -v apt-cache >/dev/null; then
    die77 "no apt-get/apt-cache here: cannot fetch Debian's kernel package"
  fi
  # The metapackage pins the concrete image (linux-image-6.1.0-NN-amd64) of its candidate version.
  resolve() {
    { apt-cache show --no-all-versions linux-image-amd64 2>/dev/null || true; } |
      sed -n 's/^Depends:.*\(linux-image-6\.1\.[^ ,]*-amd64\).*/\1/p' | head -n1
  }
  # As root, apt would drop to its _apt user, which cannot write here, and warn about it.
  sandbox=()
  if [[ $(id -u) -eq 0 ]]; then sandbox=(-o APT::Sandbox::User=root); fi
  fetch() { (cd "$cache" && apt-get download -q "${sandbox[@]}" "$pkg"); }
  pkg=$(resolve)
  # A fresh machine may have no package lists yet (or stale ones naming a version the mirror has
  # dropped): refresh once when we are allowed to.
  if [[ -z "$pkg" ]] || ! fetch; then
    if [[ $(id -u) -eq 0 ]]; then
      echo "vm-kernel: refreshing apt's package lists" >&2
      apt-get update -qq || die77 "apt-get update failed (no network or no apt sources?)"
      pkg=$(resolve)
      [[ -n "$pkg" ]] ||
        die77 "apt knows no linux-image-amd64 -> linux-image-6.1.*-amd64 (not Debian 12?)"
      fetch || die77 "apt-get download $pkg failed (no access to the Debian archive?)"
    else
      [[ -n "$pkg" ]] ||
        die77 "apt knows no linux-image-amd64 (lists need apt-get update as root, or no apt sources)"
      die77 "apt-get download $pkg failed (no access to the Debian archive, or stale lists:" \
        "run apt-get update as root)"
    fi
  fi
  deb=$(find "$cache" -maxdepth 1 -name 'linux-image-6.1.*-amd64_*.deb' -print -quit)
  [[ -n "$deb" ]] || die77 "apt-get download left no linux-image-6.1.*-amd64 .deb in $cache"
fi

# The package holds ~400 MB of modules; extract it once to a scratch dir and keep only what we use.
scratch=$(mktemp -d "$cache/extract.XXXXXX")
trap 'rm -rf "$scratch"' EXIT
if ! dpkg-deb -x "$deb" "$scratch"; then
  rm -f "$deb"
  echo "vm-kernel: dpkg-deb -x $deb failed (corrupt download?); deleted it for the next run" >&2
  exit 1
fi
release=$(basename "$(find "$scratch/lib/modules" -mindepth 1 -maxdepth 1 -type d -print -quit)")
src="$scratch/lib/modules/$release"
if [[ ! -f "$scratch/boot/vmlinuz-$release" ]]; then
  echo "vm-kernel: no boot/vmlinuz-$release in $deb" >&2
  exit 1
fi

# Debian makes modules.dep in the package's postinst (depmod), so the .deb ships none: build it
# here. Debian 12 ships plain .ko; later kernels compress them (.ko.xz/.ko.zst), which busybox
# insmod cannot load, so decompress first and let depmod see the plain names.
find "$src/kernel" \( -name '*.ko.xz' -o -name '*.ko.zst' -o -name '*.ko.gz' \) -print0 |
  while IFS= read -r -d '' m; do
    case "$m" in
      *.xz) xz -dc "$m" >"${m%.xz}" ;;
      *.zst) zstd -qdc "$m" >"${m%.zst}" ;;
      *.gz) gzip -dc "$m" >"${m%.gz}" ;;
    esac
    rm -f "$m"
  done
if command -v depmod >/dev/null; then
  depmod -b "$scratch" "$release"
else
  busybox depmod -b "$scratch" "$release"
fi

# Resolve each wanted module and its modules.dep closure, dependencies first (modules.dep lists a
# module's dependencies so that loading them right to left works, as modprobe does).
declare -A dep_of=() path_of=() seen=()
while IFS= read -r line; do
  mod=${line%%:*}
  name=$(basename "$mod" .ko)
  dep_of[$name]=${line#*:}
  path_of[$name]=$mod
  # modprobe treats - and _ alike; so do we.
  path_of[${name//-/_}]=$mod
  dep_of[${name//-/_}]=${line#*:}
done <"$src/modules.dep"
order=()
visit() {
  local n=$1 d deps i
  [[ -n "${seen[$n]:-}" ]] && return
  seen[$n]=1
  read -r -a deps <<<"${dep_of[$n]}"
  for ((i = ${#deps[@]} - 1; i >= 0; i--)); do
    d=$(basename "${deps[i]}" .ko)
    visit "$d"
  done
  order+=("${path_of[$n]}")
}
for n in "${wanted[@]}"; do
  if [[ -z "${path_of[$n]:-}" ]]; then
    # Built into this kernel (modules.builtin) needs no loading; anything else is a real gap.
    grep -q "/${n//-/[-_]}\.ko$" "$src/modules.builtin" && continue
    echo "vm-kernel: module $n is neither in modules.dep nor built into $release" >&2
    exit 1
  fi
  visit "$n"
done

rm -rf "${cache:?}/lib" "$cache/vmlinuz" "$cache/modules.load" "$cache/kernel-release"
dst="$cache/lib/modules/$release"
mkdir -p "$dst"
for m in "${order[@]}"; do
  mkdir -p "$dst/$(dirname "$m")"
  cp "$src/$m" "$dst/$m"
done
cp "$src/modules.builtin" "$src/modules.order" "$dst/" 2>/dev/null || true
# modules.dep/alias for the subset, so that busybox modprobe inside the VM can serve the kernel's
# request_module() calls for these modules too.
if command -v depmod >/dev/null; then
  depmod -b "$cache" "$release"
else
  busybox depmod -b "$cache" "$release"
fi
cp "$scratch/boot/vmlinuz-$release" "$cache/vmlinuz"
# Under TCG the bzImage spends ~3 s of a ~6 s run decompressing itself (xz) in emulated code. The
# ELF vmlinux inside it carries a PVH entry note (CONFIG_PVH), which qemu boots directly from
# -kernel, so unpack it once here; run-in-vm.sh falls back to vmlinuz when there is none.
rm -f "$cache/vmlinux"
for fmt in xz zstd gzip; do
  case $fmt in
    xz) magic='\xfd7zXZ\x00' unpack=(xz -dc --single-stream) ;;
    zstd) magic='\x28\xb5\x2f\xfd' unpack=(zstd -qdc) ;;
    gzip) magic='\x1f\x8b\x08' unpack=(gzip -dc) ;;
  esac
  command -v "${unpack[0]}" >/dev/null || continue
  off=$({ LC_ALL=C grep -obUaP "$magic" "$cache/vmlinuz" || true; } | head -n1 | cut -d: -f1)
  [[ -n "$off" ]] || continue
  tail -c +$((off + 1)) "$cache/vmlinuz" | "${unpack[@]}" >"$scratch/vmlinux" 2>/dev/null || true
  # XEN_ELFNOTE_PHYS32_ENTRY (18) is what qemu looks for; without it qemu refuses the ELF.
  if [[ "$(head -c 4 "$scratch/vmlinux")" == $'\x7fELF' ]] &&
    LC_ALL=C readelf -n "$scratch/vmlinux" 2>/dev/null | grep -q 'Xen.*(0x00000012)'; then
    mv "$scratch/vmlinux" "$cache/vmlinux"
    break
  fi
done
printf '%s\n' "${order[@]}" >"$cache/modules.load"
echo "$release" >"$cache/kernel-release"
echo "$stamp" >"$cache/.complete"
echo "vm-kernel: $release ready in $cache (${#order[@]} modules:" \
  "$(printf '%s ' "${order[@]##*/}"))" >&2
