#!/bin/bash
# tools/setup.sh -- idempotent set-up of a Debian 12 machine for this project.
#
# 1. Debian packages: QEMU + static busybox + cpio/xz/zstd (the test guest),
#    Debian's 6.12 kernel (the stock leg), linux-source-6.12 and a kernel
#    toolchain (the built legs), pciutils/pci.ids/libudev1 (host tools).
#    apt is skipped entirely when all of them are installed already, so a re-run
#    costs a second.  Otherwise: one `apt-get update`, then
#    `apt-get install --no-install-recommends`; INITRD=No because the harness
#    brings its own initramfs and Debian's would only cost time.
#    The arm64 leg (tools/vfio-harness --arch arm64) adds qemu-system-arm, the
#    aarch64 cross toolchain (tools/build-kernel.sh arm64) and dpkg's arm64
#    architecture, from which tools/arm64-rootfs downloads its guest packages.
# 2. `pip install -e '.[test]'` with the python3 on PATH (inside a venv if one
#    is active), skipped when this tree is already installed that way and
#    pyproject.toml has not changed since.
# Works without stdin and with CI=true.  Needs root (or sudo) only for apt.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
log() { echo "setup: $*" >&2; }
t0=$SECONDS

pkgs=(qemu-system-x86 busybox-static cpio xz-utils zstd linux-image-6.12.117+deb12-amd64
      linux-libc-dev linux-source-6.12 build-essential bc bison flex libelf-dev libssl-dev
      pciutils libudev1 pci.ids gcc)
# arm64 leg: QEMU's virt machine, the cross compiler for its kernel
pkgs+=(qemu-system-arm gcc-aarch64-linux-gnu binutils-aarch64-linux-gnu)
missing=()
for p in "${pkgs[@]}"; do
    [ "$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null)" = installed ] || missing+=("$p")
done
# tools/arm64-rootfs runs `apt-get download PKG:arm64`: apt needs the architecture
# and its package lists (an apt-get update after adding it).
have_arm64=1
dpkg --print-foreign-architectures | grep -x arm64 >/dev/null || have_arm64=0
if [ ${#missing[@]} -eq 0 ] && [ "$have_arm64" = 1 ]; then
    log "Debian packages: all ${#pkgs[@]} installed"
else
    sudo=()
    if [ "$(id -u)" != 0 ]; then
        command -v sudo >/dev/null || { log "need root to install: ${missing[*]}"; exit 1; }
        sudo=(sudo -n)
    fi
    if [ "$have_arm64" = 0 ]; then
        log "adding dpkg architecture arm64 (for tools/arm64-rootfs)"
        "${sudo[@]}" dpkg --add-architecture arm64
    fi
    export DEBIAN_FRONTEND=noninteractive INITRD=No
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q < /dev/null
    if [ ${#missing[@]} -ne 0 ]; then
        log "installing: ${missing[*]}"
        "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive INITRD=No \
            apt-get install -y -q --no-install-recommends "${missing[@]}" < /dev/null
    fi
fi

# ---- Python package -----------------------------------------------------------
py=$(command -v python3) || { log "no python3 on PATH"; exit 1; }
stampdir=$root/.harness
stamp=$stampdir/setup.stamp
want=$( { "$py" -c 'import sys; print(sys.executable, sys.prefix)'; cat "$root/pyproject.toml"; } | sha256sum | cut -c1-16)
installed_here() {
    # the import must resolve to this tree, and the test extras must be importable
    (cd / && "$py" -c 'import sys, pathlib, vfio, pytest, hypothesis
sys.exit(0 if pathlib.Path(vfio.__file__).resolve().is_relative_to(pathlib.Path(sys.argv[1]).resolve()) else 1)' "$root") >/dev/null 2>&1
}
if [ "$(cat "$stamp" 2>/dev/null)" = "$want" ] && installed_here; then
    log "python package: $root already installed editable for $py"
else
    pipflags=(--quiet --disable-pip-version-check --no-input)
    # Debian's own /usr/bin/python3 is "externally managed" (PEP 668); outside a venv
    # pip refuses to install into it unless told to.
    if "$py" -c 'import sys, sysconfig, os; sys.exit(0 if sys.prefix == sys.base_prefix and os.path.exists(os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED")) else 1)'; then
        log "warning: $py is Debian's externally managed python; installing with --break-system-packages (use a venv to avoid this)"
        pipflags+=(--break-system-packages)
    fi
    log "pip install -e '$root[test]' with $py"
    (cd "$root" && PIP_ROOT_USER_ACTION=ignore "$py" -m pip install "${pipflags[@]}" -e ".[test]" < /dev/null)
    mkdir -p "$stampdir"
    printf '%s\n' "$want" > "$stamp"
fi
log "done in $((SECONDS - t0)) s"
