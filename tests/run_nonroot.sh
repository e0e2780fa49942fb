#!/usr/bin/env bash
# Run the sandbox and results-integrity tests as an unprivileged user (run this as root).
#
# The sandbox has two modes: as root it leases a uid and sets up every layer; as any other
# user it tries an unprivileged user namespace (network, PID, IPC, mount: the private root and
# the disk cap) and falls back to what the OS allows. This script exercises the second mode:
#   1. creates the user $NR_USER (default accbench-nr) if missing;
#   2. copies the base interpreter (the one behind .venv) to $NR_PREFIX/python, because it may
#      live under a home directory the user cannot enter (pyenv under /root);
#   3. makes a venv $NR_PREFIX/venv from that copy whose site-packages point (through a .pth
#      file) at this checkout's .venv, so nothing is reinstalled;
#   4. runs the tests below as that user, and prints the sandbox's layers in that mode.
# Usage: sudo bash tests/run_nonroot.sh [pytest args]   (default: the sandbox + integrity tests)
set -euo pipefail
cd "$(dirname "$0")/.."
repo="$(pwd)"
NR_USER="${NR_USER:-accbench-nr}"
NR_PREFIX="${NR_PREFIX:-/opt/accbench-nonroot}"
[ "$(id -u)" = 0 ] || { echo "run this as root: it creates a user" >&2; exit 2; }
[ -x .venv/bin/python ] || { echo "no .venv here: run 'make setup' first" >&2; exit 2; }
id "$NR_USER" >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin "$NR_USER"
base="$(.venv/bin/python -c 'import sys; print(sys.base_prefix)')"
ver="$(.venv/bin/python -c 'import sys; print(f"python{sys.version_info[0]}.{sys.version_info[1]}")')"
site="$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
if [ ! -x "$NR_PREFIX/python/bin/$ver" ]; then
  mkdir -p "$NR_PREFIX/python"
  # the interpreter and its standard library, without the base site-packages
  (cd "$base" && tar --exclude="lib/$ver/site-packages/*" --exclude='__pycache__' -cf - bin lib include 2>/dev/null) \
    | tar -xf - -C "$NR_PREFIX/python"
  # its RUNPATH names the original prefix (unreadable to the user, and absent in the sandbox's
  # root): point it at the copy's own lib/ (same length or shorter, NUL-padded in place)
  .venv/bin/python - "$NR_PREFIX/python/bin/$ver" "$base/lib" <<'PY'
import sys
path, old = sys.argv[1], sys.argv[2].encode() + b"\0"
new = b"$ORIGIN/../lib"
data = open(path, "rb").read()
if old in data and len(new) < len(old):
    open(path, "wb").write(data.replace(old, new + b"\0" * (len(old) - len(new))))
PY
fi
if [ ! -x "$NR_PREFIX/venv/bin/python" ]; then
  "$NR_PREFIX/python/bin/$ver" -m venv --without-pip "$NR_PREFIX/venv"
fi
nr_site="$("$NR_PREFIX/venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
echo "import site; site.addsitedir('$site')" > "$nr_site/accbench-checkout.pth"
chmod -R a+rX "$NR_PREFIX"
work="$(mktemp -d /tmp/accbench-nonroot-XXXXXX)"
chown "$NR_USER" "$work"
run() { runuser -u "$NR_USER" -- env -i HOME="$work" PATH=/usr/bin:/bin TMPDIR="$work" \
          ACCBENCH_DATA_DIR="${ACCBENCH_DATA_DIR:-$(cd .. && pwd)/shared/data}" "$@"; }
echo "--- as $(run id -un) (uid $(run id -u)); interpreter $NR_PREFIX/venv/bin/python"
run "$NR_PREFIX/venv/bin/python" -c 'from accbench.suites.sandbox import describe_layers; print("sandbox layers:", describe_layers())'
tests=("$@")
[ ${#tests[@]} -gt 0 ] || tests=(tests/test_sandbox.py tests/test_sandbox_verdict.py tests/test_sandbox_isolation.py
                                tests/test_integrity.py)
set +e
run "$NR_PREFIX/venv/bin/python" -m pytest -q -p no:cacheprovider --rootdir "$repo" "${tests[@]}"
rc=$?
rm -rf "$work"
exit $rc
