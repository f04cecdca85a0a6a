#!/usr/bin/env bash
# Installs Impasto: the server and CLI in a virtual environment beside this script, and the GIMP 3
# plug-in into every GIMP 3.x plug-in folder found. Idempotent: run it again to update.
#
#   ./install.sh                       server, CLI and plug-in
#   ./install.sh --server-only         server and CLI only
#   ./install.sh --plugin-only         plug-in only (into --gimp-dir DIR, or GIMP's own folders)
#   ./install.sh --uninstall           remove the plug-in and the virtual environment
#   ./install.sh --test [ARGS]         install everything needed for the tests, then run them
#                                      (ARGS go to pytest; the GIMP tests need root)
# Options:
#   --gimp-dir DIR                     a GIMP config folder (holding plug-ins/) instead of the found ones
#   --gimp-python-version X.Y          the Python GIMP runs plug-ins with, when detection fails
#   --cpu                              PyTorch's CPU-only build, without the ~3 GB of NVIDIA libraries,
#                                      from PyTorch's own index; for machines without an NVIDIA GPU
#   --torch SPEC                       another PyTorch, e.g. "torch torchvision" for the newest
#   --with-styles                      also download the catalogue of public-domain paintings (internet)
#
# PyTorch is pinned to torch==2.14.1 / torchvision==0.29.1 by default: the pair CI uses. Newer works;
# pass --torch (or IMPASTO_TORCH), with PIP_EXTRA_INDEX_URL for a CUDA build of your choice. Which build:
# NVIDIA GPU: the default (PyPI's Linux wheels bundle CUDA). No NVIDIA GPU: --cpu (the same pinned pair,
# or the --torch SPEC, from https://download.pytorch.org/whl/cpu; their dependencies and the rest come
# from your usual index). Apple Silicon: the default (macOS wheels have no CUDA; MPS works).
# --cpu on a venv that holds a CUDA build replaces it and removes its NVIDIA libraries.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="${IMPASTO_VENV:-$here/.venv}"
torch_spec="${IMPASTO_TORCH:-torch==2.14.1 torchvision==0.29.1}"
cpu_index="https://download.pytorch.org/whl/cpu"
want_server=1 want_plugin=1 uninstall=0 run_tests=0 with_styles=0 cpu_only=0
gimp_dirs=() gimp_python_version="" pytest_args=()

usage() { awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"; }
say() { printf '\033[1m==> %s\033[0m\n' "$*"; }
die() { printf 'install.sh: %s\n' "$*" >&2; exit 1; }

while [ $# -gt 0 ]; do
  case "$1" in
    --server-only) want_plugin=0 ;;
    --plugin-only) want_server=0 ;;
    --uninstall) uninstall=1 ;;
    --with-styles) with_styles=1 ;;
    --cpu) cpu_only=1 ;;
    --gimp-dir) gimp_dirs+=("${2:?--gimp-dir needs a folder}"); shift ;;
    --gimp-python-version) gimp_python_version="${2:?--gimp-python-version needs X.Y, e.g. 3.13}"; shift ;;
    --torch) torch_spec="${2:?--torch needs a pip requirement, e.g. 'torch torchvision'}"; shift ;;
    --test) run_tests=1; shift; pytest_args=("$@"); break ;;
    -h|--help) usage; exit 0 ;;
    *) echo "install.sh: unknown option '$1'" >&2; usage >&2; exit 2 ;;
  esac
  shift
done

# GIMP 3.x user folders (3.0 and 3.2 keep separate ones): Linux, Flatpak, macOS.
find_gimp_dirs() {
  local found=()
  for base in "${XDG_CONFIG_HOME:-$HOME/.config}/GIMP" "$HOME/.var/app/org.gimp.GIMP/config/GIMP" \
              "$HOME/Library/Application Support/GIMP"; do
    for dir in "$base"/3.*; do [ -d "$dir" ] && found+=("$dir"); done
  done
  if [ ${#found[@]} -eq 0 ]; then
    for program in gimp-3.0 gimp-console-3.0 gimp; do
      if command -v "$program" >/dev/null 2>&1; then
        found+=("${XDG_CONFIG_HOME:-$HOME/.config}/GIMP/3.0")  # GIMP is here but has not run yet
        break
      fi
    done
  fi
  [ ${#found[@]} -eq 0 ] || printf '%s\n' "${found[@]}"
}

if [ ${#gimp_dirs[@]} -eq 0 ] && { [ "$want_plugin" = 1 ] || [ "$uninstall" = 1 ]; }; then
  mapfile -t gimp_dirs < <(find_gimp_dirs)
fi

if [ "$uninstall" = 1 ]; then
  for dir in "${gimp_dirs[@]}"; do
    [ -d "$dir/plug-ins/impasto" ] && rm -rf "$dir/plug-ins/impasto" && say "Removed the plug-in from $dir"
  done
  rm -rf "$venv" "$here/build/plugin" && say "Removed $venv"
  exit 0
fi

python="${PYTHON:-python3}"
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null ||
  die "Impasto needs Python 3.10 or newer as '$python' (set PYTHON=/path/to/python3)"
if [ ! -x "$venv/bin/python" ]; then
  say "Creating the virtual environment $venv"
  "$python" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip --disable-pip-version-check)

# With --cpu: the installed distributions of a CUDA build of PyTorch (torch and its companions, NVIDIA's
# libraries, triton); nothing when PyTorch is absent or a CPU-only build.
cuda_build_packages() {
  "$venv/bin/python" - <<'PY'
import importlib.metadata as metadata
try:
    requires = metadata.requires("torch") or []
except metadata.PackageNotFoundError:
    requires = []
if any(r.lower().startswith(("nvidia-", "cuda-", "triton")) for r in requires):
    names = {d.metadata["Name"] for d in metadata.distributions()}
    for name in sorted(names):
        key = name.lower().replace("_", "-")
        if key in ("torch", "torchvision", "torchaudio", "triton") or key.startswith(("nvidia-", "cuda-")):
            print(name)
PY
}

if [ "$want_server" = 1 ]; then
  if [ "$cpu_only" = 1 ]; then
    mapfile -t cuda_packages < <(cuda_build_packages)
    if [ ${#cuda_packages[@]} -gt 0 ]; then
      say "Removing the CUDA build of PyTorch and its NVIDIA libraries (${#cuda_packages[@]} packages)"
      "${pip[@]}" uninstall --quiet --yes "${cuda_packages[@]}"
    fi
    say "Installing PyTorch's CPU-only build ($torch_spec) from $cpu_index"
    # Only the torch packages come from that index (a CUDA index in PIP_EXTRA_INDEX_URL would outbid
    # it); the next command takes their dependencies from the usual index.
    # shellcheck disable=SC2086 # the spec is a list of requirements
    env -u PIP_EXTRA_INDEX_URL "${pip[@]}" install --quiet --no-deps --index-url "$cpu_index" $torch_spec
  fi
  say "Installing PyTorch ($torch_spec)"
  # shellcheck disable=SC2086 # the spec is a list of requirements
  "${pip[@]}" install --quiet $torch_spec
  if [ "$cpu_only" = 1 ] && [ -n "$(cuda_build_packages)" ]; then
    die "--cpu: the PyTorch installed is still a CUDA build; does pip.conf name a CUDA index?"
  fi
  say "Installing Impasto"
  extras=""
  [ "$run_tests" = 1 ] && extras="[dev]"
  "${pip[@]}" install --quiet --editable "$here$extras"
else
  "${pip[@]}" install --quiet grpcio-tools  # enough to build the plug-in's stubs
fi

say "Generating the gRPC stubs from protos/"
"$venv/bin/python" -m grpc_tools.protoc -I "$here/protos" --python_out="$here/server" \
  --grpc_python_out="$here/server" --pyi_out="$here/server" "$here/protos/impasto/v1/impasto.proto"

if [ "$want_server" = 1 ]; then
  say "Checking the engine loads its VGG19 weights"
  "$venv/bin/impasto" info --local
fi

if [ "$with_styles" = 1 ]; then
  say "Downloading the style catalogue"
  "$venv/bin/impasto-server" styles fetch || echo "   (some styles failed; run '$venv/bin/impasto-server styles fetch' again later)"
fi

gimp_python() {
  # The Python GIMP starts plug-ins with: the one with GIMP's introspection data.
  if [ -n "$gimp_python_version" ]; then echo "$gimp_python_version"; return; fi
  local probe='import gi, sys; gi.require_version("Gimp", "3.0"); print("%d.%d" % sys.version_info[:2])'
  if command -v flatpak >/dev/null 2>&1 && flatpak info org.gimp.GIMP >/dev/null 2>&1; then
    flatpak run --command=python3 org.gimp.GIMP -c "$probe" 2>/dev/null && return
  fi
  for candidate in /usr/bin/python3 python3; do
    "$candidate" -c "$probe" 2>/dev/null && return
  done
  return 1
}

if [ "$want_plugin" = 1 ]; then
  if [ ${#gimp_dirs[@]} -eq 0 ]; then
    say "GIMP 3 was not found, so the plug-in was not installed"
    echo "   Install GIMP 3, then run: ./install.sh --plugin-only   (or --gimp-dir DIR)"
  else
    version="$(gimp_python)" || die "could not find the Python GIMP 3 uses (one that can import gi's Gimp 3.0); \
give it with --gimp-python-version X.Y"
    case "$(uname -s)-$(uname -m)" in
      Linux-x86_64) platforms=(manylinux_2_17_x86_64 manylinux2014_x86_64) ;;
      Linux-aarch64) platforms=(manylinux_2_17_aarch64 manylinux2014_aarch64) ;;
      Darwin-*) platforms=(macosx_11_0_universal2 macosx_11_0_arm64 macosx_10_14_x86_64) ;;
      *) die "no grpcio wheels are known for $(uname -s)-$(uname -m); see README (Windows: the plug-in folder)" ;;
    esac
    stage="$here/build/plugin/impasto"
    say "Building the plug-in for GIMP's Python $version ($stage)"
    rm -rf "$stage" && mkdir -p "$stage/vendor/impasto/v1" "$here/build/wheels"
    # grpcio is compiled: its wheel must match GIMP's interpreter exactly. protobuf is vendored at the
    # venv's version, which is the version the stubs are generated for (protos/README.md).
    grpc_version="$("$venv/bin/python" -c 'import grpc_tools, importlib.metadata as m; print(m.version("grpcio-tools"))')"
    venv_version() { "$venv/bin/python" -c "import importlib.metadata as m; print(m.version('$1'))"; }
    protobuf_version="$(venv_version protobuf)"
    typing_version="$(venv_version typing-extensions)"  # grpcio's one pure-Python requirement
    platform_args=(); for p in "${platforms[@]}"; do platform_args+=(--platform "$p"); done
    cp="cp${version/./}"
    wheels="$here/build/wheels/$cp"
    "${pip[@]}" download --quiet --only-binary=:all: --no-deps --python-version "$version" --implementation cp \
      --abi "$cp" --abi abi3 --abi none "${platform_args[@]}" -d "$wheels" \
      "grpcio==$grpc_version" "protobuf==$protobuf_version" "typing-extensions==$typing_version" ||
      die "could not fetch grpcio $grpc_version / protobuf $protobuf_version wheels for Python $version"
    for wheel in "$wheels"/grpcio-"$grpc_version"-*.whl "$wheels"/protobuf-"$protobuf_version"-*.whl \
                 "$wheels"/typing_extensions-"$typing_version"-*.whl; do
      "$venv/bin/python" -m zipfile -e "$wheel" "$stage/vendor"
    done
    cp "$here/server/impasto/__init__.py" "$here/server/impasto/client.py" "$stage/vendor/impasto/"
    cp "$here/server/impasto/v1/__init__.py" "$here/server/impasto/v1/impasto_pb2.py" \
      "$here/server/impasto/v1/impasto_pb2_grpc.py" "$stage/vendor/impasto/v1/"
    install -m 755 "$here/plugin/impasto/impasto.py" "$stage/impasto.py"
    for dir in "${gimp_dirs[@]}"; do
      mkdir -p "$dir/plug-ins"
      rm -rf "$dir/plug-ins/impasto"
      cp -r "$stage" "$dir/plug-ins/impasto"
      say "Installed the plug-in into $dir/plug-ins/impasto"
    done
  fi
fi

if [ "$run_tests" = 1 ]; then
  say "Running the tests"
  cd "$here"
  exec "$venv/bin/python" -m pytest "${pytest_args[@]}"
fi

cat <<EOF

Done. Next:
  start the server:        $venv/bin/impasto-server
  add style presets:       $venv/bin/impasto-server styles fetch      (or: styles import FOLDER)
  in GIMP 3:               open an image, then Filters ▸ Artistic ▸ Impasto Style Transfer…
  without GIMP:            $venv/bin/impasto stylize photo.jpg --style painting.jpg -o result.png
EOF
