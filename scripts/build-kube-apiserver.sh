#!/usr/bin/env bash
# Builds the kube-apiserver used by the Kubernetes-enrichment tests (xtask::apiserver), offline,
# from Debian 12's `kubernetes` source package (1.20.2 with vendor/) and Debian's Go 1.19, and
# installs etcd-server. No registry ships a kube-apiserver binary that this project can reach.
#
# Idempotent: the binary is cached at $HOME/.cache/tracer/kube-apiserver-v1.20.2 (override the
# directory with TRACER_CACHE_DIR); when it is there, the script only checks etcd and returns.
# A cold build takes a few minutes. The last line on stdout is the binary's path.
#
# Leaves the system's apt configuration alone: the deb-src list, package lists and caches used to
# fetch the source live in a temporary directory.
set -euo pipefail

version=v1.20.2
cache_dir=${TRACER_CACHE_DIR:-$HOME/.cache/tracer}
bin="$cache_dir/kube-apiserver-$version"
go_root=/usr/lib/go-1.19
reflect2_src=/usr/share/gocode/src/github.com/modern-go/reflect2

log() { printf '[kube-apiserver] %s\n' "$*" >&2; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

apt_install_missing() {
  local missing=() p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    log "installing Debian packages: ${missing[*]}"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q >&2
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
      "${missing[@]}" >&2
    return 0
  fi
  return 1
}

# etcd: the tests start their own on random ports; the packaged service must not run.
if apt_install_missing etcd-server; then
  as_root systemctl disable --now etcd >/dev/null 2>&1 || true
fi

if [ -x "$bin" ] && "$bin" --version 2>/dev/null | grep -q "Kubernetes $version"; then
  log "cached: $bin"
  echo "$bin"
  exit 0
fi

started=$(date +%s)
apt_install_missing golang-1.19-go rsync golang-github-modern-go-reflect2-dev dpkg-dev make \
  ca-certificates || true
[ -d "$reflect2_src" ] || { log "missing $reflect2_src (golang-github-modern-go-reflect2-dev)"; exit 1; }

work=$(mktemp -d "${TMPDIR:-/tmp}/kube-apiserver-build.XXXXXX")
trap 'rm -rf "$work"' EXIT

# The source package, through a private deb-src list (system sources, lists and caches untouched).
mkdir -p "$work/apt/lists/partial" "$work/apt/cache/archives/partial" "$work/src"
echo "deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm main" \
  >"$work/apt/sources.list"
apt_opts=(
  -q
  -o "Dir::Etc::SourceList=$work/apt/sources.list"
  -o "Dir::Etc::SourceParts=/dev/null"
  -o "Dir::State::Lists=$work/apt/lists"
  -o "Dir::Cache=$work/apt/cache"
  -o "APT::Sandbox::User=$(id -un)"
)
log "fetching Debian's kubernetes source package"
apt-get "${apt_opts[@]}" update >&2
(cd "$work/src" && apt-get "${apt_opts[@]}" source --download-only kubernetes >&2)
dsc=$(ls "$work"/src/kubernetes_*.dsc)
dpkg-source -x "$dsc" "$work/kubernetes" >&2

case "$(basename "$dsc")" in
  *1.20.2*) ;;
  *) log "Debian's kubernetes source is $(basename "$dsc"), not 1.20.2"; exit 1 ;;
esac
cd "$work/kubernetes"

# Vendored modern-go/reflect2 1.0.1 crashes under Go 1.19 (SIGSEGV in mapiternext); Debian's
# copy has the fix.
rm -rf vendor/github.com/modern-go/reflect2
mkdir -p vendor/github.com/modern-go/reflect2
cp -a "$reflect2_src"/. vendor/github.com/modern-go/reflect2/

log "building kube-apiserver $version with $("$go_root/bin/go" version) (takes minutes)"
env PATH="$go_root/bin:$PATH" GOROOT="$go_root" GO111MODULE=off GOPROXY=off GOFLAGS= \
  CGO_ENABLED=0 GOCACHE="$work/gocache" \
  KUBE_GIT_VERSION="$version" KUBE_GIT_MAJOR=1 KUBE_GIT_MINOR=20 KUBE_GIT_TREE_STATE=clean \
  make WHAT=cmd/kube-apiserver >&2

out=$(find _output -type f -name kube-apiserver -perm -u+x | head -n1)
[ -n "$out" ] || { log "build produced no kube-apiserver binary"; exit 1; }
mkdir -p "$cache_dir"
install -m 0755 "$out" "$bin.tmp.$$"
mv -f "$bin.tmp.$$" "$bin"
"$bin" --version >&2
log "built in $(($(date +%s) - started)) s: $bin"
echo "$bin"
