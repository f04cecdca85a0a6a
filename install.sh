#!/usr/bin/env bash
# Installs Impasto: the server and CLI in a virtual environment beside this script, and the GIMP 3
# plug-in into every GIMP 3.x plug-in folder found. Idempotent: run it again to update.
#
#   ./install.sh                       server, CLI and plug-in; the plug-in starts the server itself
#   ./install.sh --server-only         server and CLI only
#   ./install.sh --plugin-only         plug-in only (into --gimp-dir DIR, or GIMP's own folders); it
#                                      starts this checkout's server if there is one
#   ./install.sh --package-plugin      dist/impasto-gimp-plugin-VERSION.zip: the plug-in folder, ready to
#                                      unzip into GIMP's plug-ins folder on any OS (Windows, macOS, Linux)
#   ./install.sh --uninstall           remove the plug-in and the virtual environment
#   ./install.sh --test [ARGS]         install everything needed for the tests, then run them
#                                      (ARGS go to pytest; the real-GIMP tests need root, which also
#                                      installs debootstrap to build their Debian roots, and nginx
#                                      and HAProxy for the proxy tests)
# Options:
#   --gimp-dir DIR                     a GIMP config folder (holding plug-ins/) instead of the found ones
#   --cpu                              PyTorch's CPU-only build, from PyTorch's own index (the default on
#                                      Linux without an NVIDIA driver)
#   --cuda                             PyTorch's default build, which bundles CUDA on Linux (the default
#                                      where an NVIDIA driver is present)
#   --torch SPEC                       another PyTorch, e.g. "torch torchvision" for the newest
#   --with-styles                      also download the catalogue of public-domain paintings (internet)
# Environment: IMPASTO_VENV (the virtual environment, default .venv here), IMPASTO_TORCH (as --torch),
# IMPASTO_OUT (the folder that receives build/ and dist/, default this one).
#
# PyTorch is pinned to torch==2.14.1 / torchvision==0.29.1 by default: the pair CI uses. Newer works;
# pass --torch (or IMPASTO_TORCH), with PIP_EXTRA_INDEX_URL for a CUDA build of your choice. Which build,
# without --cpu or --cuda: an NVIDIA driver present (nvidia-smi works, or /proc/driver/nvidia/version
# exists): the default (PyPI's Linux wheels bundle CUDA and ~3 GB of NVIDIA libraries). Linux without one:
# the CPU-only build (the same pinned pair, or the --torch SPEC, from https://download.pytorch.org/whl/cpu;
# their dependencies and the rest come from your usual index); where that index cannot be reached, the
# default build instead, saying so. macOS: the default (its wheels have no CUDA; MPS works). The CPU-only
# build on a venv that holds a CUDA build replaces it and removes its NVIDIA libraries.
#
# Where it installs the plug-in, it records the server to start in impasto-server.json beside plug-ins/:
# {"command": [".../.venv/bin/impasto-server"], "recorded_by": "install.sh"} (README: The GIMP plug-in).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="${IMPASTO_VENV:-$here/.venv}"
out_dir="${IMPASTO_OUT:-$here}"
case "$out_dir" in /*) ;; *) out_dir="$PWD/$out_dir" ;; esac  # the zip is written from inside build/
torch_spec="${IMPASTO_TORCH:-torch==2.14.1 torchvision==0.29.1}"
cpu_index="https://download.pytorch.org/whl/cpu"
# .venv's size with the pinned pair, Linux x86-64, Python 3.11 (README: Quick start).
default_build_size="5.5 GB" cpu_build_size="1.1 GB"
server_json="impasto-server.json"  # beside plug-ins/: the server the plug-in starts
want_server=1 want_plugin=1 uninstall=0 run_tests=0 with_styles=0 torch_build=auto package_plugin=0
gimp_dirs=() pytest_args=()

usage() { awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"; }
say() { printf '\033[1m==> %s\033[0m\n' "$*"; }
die() { printf 'install.sh: %s\n' "$*" >&2; exit 1; }

while [ $# -gt 0 ]; do
  case "$1" in
    --server-only) want_plugin=0 ;;
    --plugin-only) want_server=0 ;;
    --uninstall) uninstall=1 ;;
    --with-styles) with_styles=1 ;;
    --cpu) torch_build=cpu ;;
    --cuda) torch_build=default ;;
    --gimp-dir) gimp_dirs+=("${2:?--gimp-dir needs a folder}"); shift ;;
    --package-plugin) package_plugin=1 want_server=0 ;;
    # Accepted for old scripts: the plug-in is pure Python now, the same for every GIMP Python.
    --gimp-python-version) shift ;;
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
    # GIMP is here but has not run yet: its folder is named after its minor version (3.0, 3.2, …).
    local version
    for program in gimp gimp-console gimp-3.2 gimp-3.0 gimp-console-3.0; do
      if command -v "$program" >/dev/null 2>&1; then
        version="$("$program" --version 2>/dev/null | grep -o '3\.[0-9]*' | head -1)"
        found+=("${XDG_CONFIG_HOME:-$HOME/.config}/GIMP/${version:-3.0}")
        break
      fi
    done
  fi
  [ ${#found[@]} -eq 0 ] || printf '%s\n' "${found[@]}"
}

if [ ${#gimp_dirs[@]} -eq 0 ] && [ "$package_plugin" = 0 ] && { [ "$want_plugin" = 1 ] || [ "$uninstall" = 1 ]; }; then
  mapfile -t gimp_dirs < <(find_gimp_dirs)
fi

if [ "$uninstall" = 1 ]; then
  for dir in "${gimp_dirs[@]}"; do
    [ -d "$dir/plug-ins/impasto" ] && rm -rf "$dir/plug-ins/impasto" && say "Removed the plug-in from $dir"
    # Only the record this script wrote: one the user wrote names a server of their own.
    if grep -qs '"recorded_by": "install.sh"' "$dir/$server_json"; then rm -f "$dir/$server_json"; fi
  done
  rm -rf "$venv" "$out_dir/build/plugin" && say "Removed $venv"
  exit 0
fi

if [ "$run_tests" = 1 ]; then
  # The real-GIMP tests run GIMP in Debian roots (chroot), built on first use with debootstrap; the proxy
  # tests run deploy/'s configurations with nginx and HAProxy. All come from the system's packages.
  missing=()
  command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
  command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx-light)
  command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || missing+=(haproxy)
  # The plug-in in GIMP's Flatpak starts the server with flatpak-spawn, through Flatpak's session helper.
  [ -x /usr/libexec/flatpak-xdg-utils/flatpak-spawn ] || missing+=(flatpak-xdg-utils)
  [ -x /usr/libexec/flatpak-session-helper ] || missing+=(flatpak)
  command -v dbus-daemon >/dev/null 2>&1 || missing+=(dbus-daemon)
  if [ "$(id -u)" != 0 ]; then
    say "The real-GIMP tests will not run: GIMP runs in Debian roots with chroot, which needs root (sudo ./install.sh --test)"
    [ ${#missing[@]} -eq 0 ] || say "The proxy and Flatpak tests will not run without ${missing[*]} (as root, --test installs them)"
  elif [ ${#missing[@]} -gt 0 ]; then
    if command -v apt-get >/dev/null 2>&1; then
      say "Installing what the tests need from the system: ${missing[*]}"
      { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"; } ||
        say "Some tests may not run: ${missing[*]} could not be installed (pytest says so before the first test)"
    else
      say "Some tests will not run: ${missing[*]} missing and this system has no apt-get"
    fi
  fi
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

# Why the CPU-only index cannot be reached, or nothing: a few seconds at most, not pip's retries.
cpu_index_unreachable() {
  "$python" - "$cpu_index/torch/" <<'PY'
import sys
import urllib.error
import urllib.request

try:
    urllib.request.urlopen(urllib.request.Request(sys.argv[1], method="HEAD"), timeout=5).close()
except urllib.error.HTTPError:
    pass  # it answered; pip will say what it lacks
except (OSError, ValueError) as error:
    reason = getattr(error, "reason", error)
    print(getattr(reason, "strerror", None) or reason)
PY
}

nvidia_driver() {
  { command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; } || [ -e /proc/driver/nvidia/version ]
}

# The PyTorch build to install (cpu or default) and why, in words for the line that announces it;
# cpu_index_fallback=1 where the CPU-only build was wanted but its index cannot be reached.
cpu_index_fallback=0
choose_torch_build() {
  case "$torch_build" in
    cpu) why="--cpu" ;;
    default) why="--cuda" ;;
    *)
      if nvidia_driver; then torch_build=default why="an NVIDIA driver is present"
      elif [ "$(uname -s)" = Linux ]; then torch_build=cpu why="no NVIDIA driver found; --cuda for the default"
      else torch_build=default why="this system's wheels have no CUDA"
      fi ;;
  esac
  if [ "$torch_build" = cpu ]; then
    local unreachable
    unreachable="$(cpu_index_unreachable)"
    if [ -n "$unreachable" ]; then
      torch_build=default why="the CPU-only index cannot be reached" cpu_index_fallback=1
      local instead unused="about $default_build_size in all with NVIDIA libraries this machine will not use"
      case "$(installed_build)" in
        cpu) instead="keeps the CPU-only build already in $venv" ;;
        cuda) instead="keeps the default build already in $venv, $unused" ;;
        *) instead="installs PyTorch's default build from your usual index instead, $unused" ;;
      esac
      [ "$(installed_build)" = cpu ] ||
        instead+=" (the CPU-only build is about $cpu_build_size: run ./install.sh --cpu where that index can be reached)"
      say "PyTorch's CPU-only index $cpu_index cannot be reached ($unreachable), so this $instead."
    fi
  fi
}

# cpu or cuda: the PyTorch build in the venv; nothing without one.
installed_build() {
  "$venv/bin/python" -c 'import importlib.metadata as m; m.version("torch")' 2>/dev/null || return 0
  if [ -n "$(cuda_build_packages)" ]; then echo cuda; else echo cpu; fi
}

if [ "$want_server" = 1 ]; then
  choose_torch_build
  if [ "$torch_build" = default ] && [ "$cpu_index_fallback" = 0 ] && [ "$(uname -s)" = Linux ] &&
     [ "$(installed_build)" = cpu ]; then
    say "Removing the CPU-only build of PyTorch, for the default build ($why)"
    "${pip[@]}" uninstall --quiet --yes torch torchvision
  fi
  if [ "$torch_build" = cpu ]; then
    mapfile -t cuda_packages < <(cuda_build_packages)
    if [ ${#cuda_packages[@]} -gt 0 ]; then
      say "Removing the CUDA build of PyTorch and its NVIDIA libraries (${#cuda_packages[@]} packages)"
      "${pip[@]}" uninstall --quiet --yes "${cuda_packages[@]}"
    fi
    say "Installing PyTorch's CPU-only build ($torch_spec) from $cpu_index ($why)"
    # Only the torch packages come from that index (a CUDA index in PIP_EXTRA_INDEX_URL would outbid
    # it); the next command takes their dependencies from the usual index.
    # shellcheck disable=SC2086 # the spec is a list of requirements
    env -u PIP_EXTRA_INDEX_URL "${pip[@]}" install --quiet --no-deps --index-url "$cpu_index" $torch_spec
  fi
  if [ "$torch_build" = cpu ]; then
    say "Installing PyTorch's dependencies"
  else
    say "Installing PyTorch ($torch_spec, the default build: $why)"
  fi
  # shellcheck disable=SC2086 # the spec is a list of requirements
  "${pip[@]}" install --quiet $torch_spec
  if [ "$torch_build" = cpu ] && [ -n "$(cuda_build_packages)" ]; then
    die "the CPU-only build of PyTorch was installed from $cpu_index, but pip replaced it with a CUDA build; does pip.conf name a CUDA index? (--cuda keeps the default build)"
  fi
  say "Installing Impasto"
  extras=""
  [ "$run_tests" = 1 ] && extras="[dev]"
  "${pip[@]}" install --quiet --editable "$here$extras"
else
  "${pip[@]}" install --quiet grpcio-tools grpclib  # enough to build the plug-in and its stubs
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

build_plugin() {
  # The plug-in folder: the plug-in (impasto.py and its package impasto_gimp/), Impasto's network client
  # and that client's dependencies, all pure Python (grpclib for gRPC over HTTP/2, protobuf's Python
  # runtime), so the same folder runs in every GIMP 3 on every OS and Python version, Windows' MinGW
  # Python included.
  stage="$out_dir/build/plugin/impasto"
  local wheels="$out_dir/build/wheels/plugin"
  say "Building the plug-in ($stage)"
  rm -rf "$stage" "$wheels" &&
    mkdir -p "$stage/impasto_gimp" "$stage/vendor/impasto/v1" "$stage/vendor/impasto/protocol" "$wheels"
  # The newest releases that run on Python 3.10, the oldest a GIMP 3 ships; protobuf at the venv's own
  # version, the one the stubs are generated for (protos/README.md).
  local requirements
  requirements="grpclib h2 hpack hyperframe multidict typing-extensions protobuf==$(
    "$venv/bin/python" -c 'import importlib.metadata as m; print(m.version("protobuf"))')"
  # shellcheck disable=SC2086 # one requirement a line
  "${pip[@]}" download --quiet --only-binary=:all: --no-deps --implementation py --abi none     --platform any --python-version 3.10 -d "$wheels" $requirements ||
    die "could not fetch the plug-in's pure-Python wheels ($(echo $requirements))"
  for wheel in "$wheels"/*.whl; do
    "$venv/bin/python" -m zipfile -e "$wheel" "$stage/vendor"
  done
  # The client, and the launcher with which the plug-in starts the local server (standard library only).
  cp "$here/server/impasto/__init__.py" "$here/server/impasto/client.py" "$here/server/impasto/launcher.py" \
    "$stage/vendor/impasto/"
  cp "$here/server/impasto/protocol/"*.py "$stage/vendor/impasto/protocol/"
  cp "$here/server/impasto/v1/__init__.py" "$here/server/impasto/v1/impasto_pb2.py" "$stage/vendor/impasto/v1/"
  install -m 755 "$here/plugin/impasto/impasto.py" "$stage/impasto.py"
  install -m 644 "$here"/plugin/impasto/impasto_gimp/*.py "$stage/impasto_gimp/"
  install -m 644 "$here/plugin/impasto/help.html" "$stage/help.html"  # the dialog's Help
  local compiled
  compiled="$(find "$stage" -name '*.so' -o -name '*.pyd' -o -name '*.dylib' -o -name '*.dll')"
  [ -z "$compiled" ] || die "the plug-in folder must hold no compiled file, but has: $compiled"
}

if [ "$package_plugin" = 1 ]; then
  build_plugin
  version="$("$venv/bin/python" -c 'import runpy; print(runpy.run_path("'"$here"'/server/impasto/__init__.py")["__version__"])')"
  archive="$out_dir/dist/impasto-gimp-plugin-$version.zip"
  mkdir -p "$out_dir/dist" && rm -f "$archive"
  (cd "$out_dir/build/plugin" && "$venv/bin/python" -m zipfile -c "$archive" impasto)
  say "Wrote $archive: unzip it into GIMP's plug-ins folder (README: The GIMP plug-in), then restart GIMP"
  echo "   It names no server to start: install one on that machine and record it in $server_json beside"
  echo "   GIMP's plug-ins folder, or type a running server's address in the dialog's Server field (README)"
  exit 0
fi

server_program="$venv/bin/impasto-server"
# Records, for the plug-in in GIMP config folder $1, the server it starts; a record the user wrote stays.
record_server() {
  local record="$1/$server_json"
  if [ -e "$record" ] && ! grep -qs '"recorded_by": "install.sh"' "$record"; then
    say "Kept $record: it names a server of your own"
    return
  fi
  "$venv/bin/python" - "$record" "$server_program" <<'PY'
import json
import sys

record, program = sys.argv[1:]
with open(record, "w", encoding="utf-8") as file:
    json.dump({"command": [program], "recorded_by": "install.sh"}, file, indent=2)
    file.write("\n")
PY
}

# GIMP from Flathub runs its plug-ins in a sandbox, from which the plug-in starts the server (installed
# here, outside it) with flatpak-spawn --host; Flatpak allows that only to an app given this permission.
allow_flatpak_to_start_the_server() {
  [ -z "$flatpak_allowed" ] || return 0  # once, however many of its folders get the plug-in
  flatpak_allowed=1
  local allow=(flatpak override --user --talk-name=org.freedesktop.Flatpak org.gimp.GIMP)
  if command -v flatpak >/dev/null 2>&1 && "${allow[@]}"; then
    say "Allowed GIMP's Flatpak to start the Impasto server outside its sandbox (${allow[*]}; to take it back: flatpak override --user --no-talk-name=org.freedesktop.Flatpak org.gimp.GIMP)"
  else
    say "GIMP's Flatpak may not start the Impasto server until you run: ${allow[*]}"
  fi
}

plugin_dirs=()  # where the plug-in was installed
flatpak_allowed=""
if [ "$want_plugin" = 1 ]; then
  if [ ${#gimp_dirs[@]} -eq 0 ]; then
    say "GIMP 3 was not found, so the plug-in was not installed"
  else
    build_plugin
    for dir in "${gimp_dirs[@]}"; do
      mkdir -p "$dir/plug-ins"
      rm -rf "$dir/plug-ins/impasto"
      cp -r "$stage" "$dir/plug-ins/impasto"
      if [ -x "$server_program" ]; then
        record_server "$dir"
        case "$dir" in */.var/app/org.gimp.GIMP/*) allow_flatpak_to_start_the_server ;; esac
      fi
      say "Installed the plug-in into $dir/plug-ins/impasto"
      plugin_dirs+=("$dir")
    done
  fi
fi

if [ "$run_tests" = 1 ]; then
  say "Running the tests"
  cd "$here"
  exec "$venv/bin/python" -m pytest "${pytest_args[@]}"
fi

# What this run installed, and the next step that works.
echo
if [ "$want_server" = 1 ]; then echo "Installed: the server and the impasto command, in $venv"; fi
if [ ${#plugin_dirs[@]} -gt 0 ]; then echo "Installed: the plug-in, into ${plugin_dirs[*]}"; fi
echo "Next:"
if [ ${#plugin_dirs[@]} -gt 0 ] && [ -x "$server_program" ]; then
  echo "  in GIMP 3:        open an image, then Filters ▸ Artistic ▸ Impasto Style Transfer…; the plug-in"
  echo "                    starts the server ($server_program) itself, and it ends after 20 minutes unused"
elif [ ${#plugin_dirs[@]} -gt 0 ]; then
  echo "  the plug-in needs a server: install one here with ./install.sh (server and plug-in; the plug-in then"
  echo "  starts it), or type a running server's address in the dialog's Server field (README: The GIMP plug-in)"
elif [ "$want_plugin" = 1 ]; then
  echo "  for GIMP:         install GIMP 3, then ./install.sh --plugin-only   (or --gimp-dir DIR, or --package-plugin)"
fi
if [ "$want_server" = 1 ]; then
  if [ "$want_plugin" = 0 ]; then
    echo "  start the server: $server_program   (runs until stopped; --idle-exit MINUTES ends it when unused)"
  fi
  echo "  without GIMP:     $venv/bin/impasto stylize photo.jpg --style starry-night -o result.png"
  echo "  more presets:     $server_program styles fetch   (or: styles import FOLDER)"
fi
