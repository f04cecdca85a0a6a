#!/usr/bin/env bash
# Installs Impasto into a virtual environment beside this script (idempotent: run it again to update).
#
#   ./install.sh                 the engine and the `impasto` command in .venv
#   ./install.sh --test [ARGS]   the same plus test tools, then the whole test suite (ARGS go to pytest)
#   ./install.sh --torch SPEC    another PyTorch, e.g. --torch "torch torchvision" for the newest
#
# PyTorch is pinned to torch==2.14.1 / torchvision==0.29.1 by default: the pair CI and the
# development machines use. Newer releases work; pass --torch (or set IMPASTO_TORCH) to choose them,
# for example a CUDA build from PyTorch's own package index via PIP_EXTRA_INDEX_URL.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="${IMPASTO_VENV:-$here/.venv}"
torch_spec="${IMPASTO_TORCH:-torch==2.14.1 torchvision==0.29.1}"
run_tests=0
pytest_args=()

usage() { sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; }

while [ $# -gt 0 ]; do
  case "$1" in
    --test) run_tests=1; shift; pytest_args=("$@"); break ;;
    --torch) torch_spec="${2:?--torch needs a pip requirement, e.g. 'torch torchvision'}"; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "install.sh: unknown option '$1'" >&2; usage >&2; exit 2 ;;
  esac
  shift
done

say() { printf '\033[1m==> %s\033[0m\n' "$*"; }

python="${PYTHON:-python3}"
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
  echo "install.sh: Impasto needs Python 3.10 or newer as '$python' (set PYTHON=/path/to/python3)" >&2
  exit 1
fi

if [ ! -x "$venv/bin/python" ]; then
  say "Creating the virtual environment $venv"
  "$python" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip --disable-pip-version-check)

say "Installing PyTorch ($torch_spec)"
# shellcheck disable=SC2086 # the spec is a list of requirements
"${pip[@]}" install --quiet $torch_spec

say "Installing Impasto"
extras=""
[ "$run_tests" = 1 ] && extras="[dev]"
"${pip[@]}" install --quiet --editable "$here$extras"

say "Generating the gRPC stubs from protos/"
"$venv/bin/python" -m grpc_tools.protoc -I "$here/protos" --python_out="$here/server" \
  --grpc_python_out="$here/server" --pyi_out="$here/server" "$here/protos/impasto/v1/impasto.proto"

say "Checking the engine loads its VGG19 weights"
"$venv/bin/impasto" info --local

if [ "$run_tests" = 1 ]; then
  say "Running the tests"
  cd "$here"
  exec "$venv/bin/python" -m pytest "${pytest_args[@]}"
fi

cat <<EOF

Impasto is installed. Try it:
  $venv/bin/impasto stylize photo.jpg --style painting.jpg -o result.png
Or start the server that GIMP and \`impasto --server\` talk to:
  $venv/bin/impasto-server --styles-dir DIR_OF_PAINTINGS
EOF
