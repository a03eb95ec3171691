#!/bin/bash
# tools/build-kernel.sh VARIANT      VARIANT = container | iommufd-container | arm64
#
# Builds the small monolithic guest kernel that tools/vfio-harness boots for the
# legs Debian's stock kernel cannot serve: Debian builds without CONFIG_IOMMUFD,
# CONFIG_VFIO_DEVICE_CDEV and CONFIG_VFIO_NOIOMMU, so /dev/iommu, the VFIO cdevs
# (/dev/vfio/devices/vfioN) and no-IOMMU groups never exist there.
#
#   container          legacy container API served by vfio_iommu_type1
#   iommufd-container  legacy container API served by iommufd (IOMMUFD_VFIO_CONTAINER)
# Both also have iommufd + cdev + no-IOMMU mode, virtio-9p/overlay for the harness
# root, and the native nvme/e1000e drivers.
#   arm64              cross-built (aarch64-linux-gnu-gcc) arm64 kernel for QEMU's
#                      virt machine with SMMUv3, vfio-pci and vfio-platform
#                      (tools/kernel/arm64.config alone); built in its own copy of
#                      the source tree (src/arm64/) so it never clobbers the x86
#                      objects, and under its own lock; the file printed is an
#                      arm64 Image instead of a bzImage.
#
# Source: Debian's linux-source-6.12 tarball (/usr/src), unpacked once.  Config:
# `make tinyconfig` + tools/kernel/base.config + tools/kernel/VARIANT.config,
# applied twice around olddefconfig (some menus only become visible after the
# first pass), then every requested option is checked in the final .config.
#
# Output is cached under ${XDG_CACHE_HOME:-$HOME/.cache}/vfio-toolkit/kernels/
# keyed by a hash of the config fragments, the source tarball and the compiler,
# so a developer builds once; the one bzImage path is printed on stdout (all
# progress goes to stderr).  Both variants share one source tree, so switching
# variant only recompiles what the differing options touch.
#
# Env knobs:
#   VFIO_KERNEL_SRC_TARBALL  source tarball (default: /usr/src/linux-source-6.12.tar.xz)
#   VFIO_KERNEL_CACHE        cache dir (default: ${XDG_CACHE_HOME:-$HOME/.cache}/vfio-toolkit/kernels)
#   VFIO_KERNEL_JOBS         make -j (default: nproc)
#   VFIO_KERNEL_FORCE=1      rebuild even if cached
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
variant=${1:-}
case "$variant" in
    container|iommufd-container) ;;
    arm64) ;;
    *) echo "usage: $0 container|iommufd-container|arm64" >&2; exit 2 ;;
esac

tarball=${VFIO_KERNEL_SRC_TARBALL:-/usr/src/linux-source-6.12.tar.xz}
cache=${VFIO_KERNEL_CACHE:-${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/vfio-toolkit/kernels}
jobs=${VFIO_KERNEL_JOBS:-$(nproc)}
frags=("$here/kernel/base.config" "$here/kernel/$variant.config")
# per-architecture: make's ARCH and CROSS_COMPILE, the image target and file
karch=x86_64 cross="" target=bzImage image=arch/x86/boot/bzImage lockname=.lock treesub=""
if [ "$variant" = arm64 ]; then
    frags=("$here/kernel/arm64.config")
    karch=arm64 cross=aarch64-linux-gnu- target=Image image=arch/arm64/boot/Image lockname=.lock-arm64 treesub=arm64/
    command -v ${cross}gcc >/dev/null || { echo "build-kernel: ${cross}gcc missing (apt-get install gcc-aarch64-linux-gnu, or run tools/setup.sh)" >&2; exit 1; }
fi
log() { echo "build-kernel: $*" >&2; }

[ -r "$tarball" ] || { log "kernel source $tarball not found (apt-get install linux-source-6.12, or run tools/setup.sh)"; exit 1; }
for f in "${frags[@]}"; do [ -r "$f" ] || { log "config fragment $f missing"; exit 1; }; done

# The tarball is identified by name, size and mtime (hashing 150 MB each call would
# cost seconds); a new Debian source package changes all three.
src_id=$(stat -c '%n %s %Y' "$tarball")
# sed, not head: head exits early, gcc gets SIGPIPE and pipefail would make the key racy
cc_id=$(${cross}gcc --version 2>/dev/null | sed -n 1p)
key=$( { printf '%s\n%s\n%s\n' "$variant" "$src_id" "$cc_id"; cat "${frags[@]}"; } | sha256sum | cut -c1-16)
out=$cache/$variant-$key
if [ -s "$out/$target" ] && [ "${VFIO_KERNEL_FORCE:-0}" != 1 ]; then
    log "cached: $out/$target"
    echo "$out/$target"
    exit 0
fi

mkdir -p "$cache"
# One build at a time per cache: the variants share one tree and one .config.
exec 9> "$cache/$lockname"
flock 9
# Another invocation may have finished the same build while we waited.
if [ -s "$out/$target" ] && [ "${VFIO_KERNEL_FORCE:-0}" != 1 ]; then
    log "cached: $out/$target"; echo "$out/$target"; exit 0
fi

# ---- source tree (unpacked once per tarball) --------------------------------
srcroot=$cache/src/$treesub
srcroot=${srcroot%/}
tree=$srcroot/$(basename "$tarball" .tar.xz)
if [ "$(cat "$tree/.vfio-source-id" 2>/dev/null)" != "$src_id" ]; then
    log "unpacking $tarball into $srcroot"
    rm -rf "$tree"; mkdir -p "$srcroot"
    t0=$SECONDS
    tar -xf "$tarball" -C "$srcroot"
    [ -d "$tree" ] || { log "$tarball did not contain $(basename "$tree")/"; exit 1; }
    printf '%s' "$src_id" > "$tree/.vfio-source-id"
    log "unpacked in $((SECONDS - t0)) s"
fi

# ---- config -------------------------------------------------------------------
# Fragment lines: CONFIG_X=y | CONFIG_X=value | "# CONFIG_X is not set"; comments ignored.
apply_fragments() {
    local args=() line sym val
    while IFS= read -r line; do
        if [[ $line =~ ^CONFIG_([A-Za-z0-9_]+)=(.*)$ ]]; then
            sym=${BASH_REMATCH[1]} val=${BASH_REMATCH[2]}
            case "$val" in
                y) args+=(--enable "$sym") ;;
                m) args+=(--module "$sym") ;;
                \"*\") args+=(--set-str "$sym" "${val:1:${#val}-2}") ;;
                *) args+=(--set-val "$sym" "$val") ;;
            esac
        elif [[ $line =~ ^#\ CONFIG_([A-Za-z0-9_]+)\ is\ not\ set$ ]]; then
            args+=(--disable "${BASH_REMATCH[1]}")
        fi
    done < <(cat "${frags[@]}")
    (cd "$tree" && scripts/config "${args[@]}")
}
cd "$tree"
mk=(make ARCH="$karch" ${cross:+CROSS_COMPILE="$cross"})
"${mk[@]}" tinyconfig >/dev/null
apply_fragments; "${mk[@]}" olddefconfig >/dev/null
apply_fragments; "${mk[@]}" olddefconfig >/dev/null

# Every option a fragment asks for must have survived olddefconfig: a symbol whose
# dependency is missing is silently dropped by Kconfig, and the guest would then
# just lack a device node with no hint why.
missing=()
while IFS= read -r line; do
    if [[ $line =~ ^(CONFIG_[A-Za-z0-9_]+)=(.*)$ ]]; then
        grep -qxF "$line" .config || missing+=("$line")
    elif [[ $line =~ ^#\ (CONFIG_[A-Za-z0-9_]+)\ is\ not\ set$ ]]; then
        ! grep -q "^${BASH_REMATCH[1]}=" .config || missing+=("$line")
    fi
done < <(cat "${frags[@]}")
if [ ${#missing[@]} -ne 0 ]; then
    log "these fragment options did not survive olddefconfig (missing dependency?):"
    printf '  %s\n' "${missing[@]}" >&2
    exit 1
fi

# ---- build ----------------------------------------------------------------------
log "building $variant kernel (make -j$jobs $target) in $tree; log in $cache/$variant-$key.log"
t0=$SECONDS
if ! "${mk[@]}" -j"$jobs" "$target" > "$cache/$variant-$key.log" 2>&1; then
    tail -n 40 "$cache/$variant-$key.log" >&2
    log "build failed; full log: $cache/$variant-$key.log"
    exit 1
fi
log "built in $((SECONDS - t0)) s"
tmpout=$(mktemp -d "$cache/.out.XXXXXX")
cp "$image" "$tmpout/$target"
cp .config "$tmpout/config"
mv "$cache/$variant-$key.log" "$tmpout/build.log"
rm -rf "$out"; mv "$tmpout" "$out"
echo "$out/$target"
