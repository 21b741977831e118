#!/usr/bin/env bash
# One idempotent set-up path for developers, README and CI.
# Installs what a fresh Debian 12 machine lacks: Debian packages (lab tools, DNS servers, LLVM 22
# for bpf-linker, podman/buildah/runc and musl/aarch64 C toolchains for the image), the pinned
# Rust toolchain with rust-src and the musl targets, and bpf-linker. On a ready machine it
# only checks and returns in seconds. Never lets rustup update itself.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
toolchain=$(sed -n 's/^channel *= *"\(.*\)"/\1/p' "$here/rust-toolchain.toml")
bpf_linker_version=0.13.0
export PATH="$HOME/.cargo/bin:/usr/sbin:/sbin:$PATH"

log() { printf '[setup] %s\n' "$*" >&2; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

# Debian packages: lab plumbing, DNS servers and clients, load tools, LLVM 22 for bpf-linker.
apt_packages=(
  iproute2 iptables nftables ethtool procps psmisc kmod socat
  dnsutils unbound dnsmasq-base dnsperf
  # tests/tests/accuracy.rs: a DNS client with a connected socket or a tiny receive buffer.
  python3
  bpftool
  # cargo xtask bench --profile: perf samples of the tracer's programs under load.
  linux-perf
  llvm-22-dev libpolly-22-dev libzstd-dev zlib1g-dev libxml2-dev
  build-essential pkg-config ca-certificates curl openssl xz-utils
  # The image (`cargo xtask image`, tests/tests/image.rs): buildah builds it, podman runs it with
  # runc (passed as `--runtime runc`: crun fails on hybrid cgroup hosts); musl-tools, the aarch64
  # cross compiler and its headers build the C parts of dependencies (ring) for static binaries.
  podman buildah runc musl-tools gcc-aarch64-linux-gnu libc6-dev-arm64-cross
)
missing=()
for p in "${apt_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing Debian packages: ${missing[*]}"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
  # The lab starts its own unbound; the packaged system service must not hold port 53.
  as_root systemctl disable --now unbound >/dev/null 2>&1 || true
fi

# Rust: the pinned toolchain (rust-toolchain.toml) with rust-src for -Z build-std=core.
rustup set auto-self-update disable >/dev/null 2>&1 || true
if ! rustup toolchain list | grep -q "^${toolchain}"; then
  log "installing Rust toolchain ${toolchain}"
  rustup toolchain install "$toolchain" --profile minimal \
    --component rust-src,clippy,rustfmt --no-self-update
fi
installed_components=$(rustup component list --toolchain "$toolchain" --installed)
for c in rust-src clippy rustfmt; do
  if ! grep -q "^$c" <<<"$installed_components"; then
    log "adding component $c"
    rustup component add --toolchain "$toolchain" "$c"
  fi
done

# Static (musl) targets for the image: amd64 and arm64 (Graviton).
musl_targets=(x86_64-unknown-linux-musl aarch64-unknown-linux-musl)
installed_targets=$(rustup target list --toolchain "$toolchain" --installed)
for t in "${musl_targets[@]}"; do
  if ! grep -qx "$t" <<<"$installed_targets"; then
    log "adding target $t"
    rustup target add --toolchain "$toolchain" "$t"
  fi
done

# bpf-linker, built against Debian's LLVM 22 (its default feature wants LLVM 23).
if ! bpf-linker --version 2>/dev/null | grep -q "$bpf_linker_version"; then
  log "building bpf-linker $bpf_linker_version against LLVM 22"
  PATH=/usr/lib/llvm-22/bin:$PATH LLVM_PREFIX=/usr/lib/llvm-22 \
    cargo "+$toolchain" install bpf-linker --version "$bpf_linker_version" --locked \
    --no-default-features --features llvm-22
fi

# kubectl ships with this machine kind (no Debian package); the API-server tests need it.
command -v kubectl >/dev/null 2>&1 || log "warning: kubectl not found: the Kubernetes tests will fail"

log "ready: $(rustc "+$toolchain" --version), $(bpf-linker --version)"

# kube-apiserver v1.20.2 and etcd for the Kubernetes-enrichment tests (xtask::apiserver), built
# offline from Debian's kubernetes source package; cached, so instant after the first run.
"$here/scripts/build-kube-apiserver.sh" >/dev/null
