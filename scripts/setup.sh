#!/usr/bin/env bash
# Installs what building and testing voicelink needs on Debian or Ubuntu: the
# system packages (apt), a Rust toolchain if there is none, and cargo-nextest when
# asked for the test tools. Safe to run again: it only installs what is missing.
#
#   scripts/setup.sh             build and run
#   scripts/setup.sh --test      also what the tests need
#   scripts/setup.sh --package   also what building and checking packages needs
#   scripts/setup.sh --fuzz      also cargo-fuzz
#   scripts/setup.sh --bench     also what the bench needs (make bench)
set -euo pipefail

want_test_tools=0
want_package_tools=0
want_fuzz_tools=0
want_bench_tools=0
case "${1:-}" in
    --test) want_test_tools=1 ;;
    --package) want_package_tools=1 ;;
    --fuzz) want_fuzz_tools=1 ;;
    --bench) want_bench_tools=1 ;;
esac

# Build: a C toolchain for crates with C parts, pkg-config to find libraries,
# cmake to build libopus (the opus crate compiles it), ALSA headers for cpal.
packages=(build-essential pkg-config cmake libasound2-dev ca-certificates curl git)
# Build, the tray (voicelink-tray): GLib (its main loop, and GIO's D-Bus for the
# notifications). tray-icon's StatusNotifierItem backend (ksni) is pure Rust D-Bus,
# so no GTK or libappindicator. Plain setup installs it because `make run` and
# `make test` build the whole workspace.
packages+=(libglib2.0-dev)
# Tests: iproute2 makes the network namespaces the end-to-end tests run in
# (nftables filters their traffic); a user-mode PulseAudio with a null sink gives
# the sound-card path real devices.
[ $want_test_tools = 1 ] && packages+=(iproute2 nftables pulseaudio pulseaudio-utils libasound2-plugins)
# Tests, the tray's desktop end-to-end test: a virtual X server (xvfb), a
# StatusNotifierItem host (xfce4-panel's Status Tray plugin, and xfconf, whose
# xfconfd gives the panel its settings), a notification daemon and its CLI (dunst,
# dunstctl), a private session bus and its tools (dbus: dbus-monitor, dbus-send),
# and screenshots (imagemagick's import).
[ $want_test_tools = 1 ] && packages+=(xvfb xfce4-panel xfconf dunst libnotify-bin dbus imagemagick)
# Tests: a Python venv (python3-venv) runs examples/stats_csv.py against a daemon.
[ $want_test_tools = 1 ] && packages+=(python3 python3-venv)
# Packages: lintian checks the .deb, rpm reads the .rpm, ruby checks the formula,
# man-db and systemd (systemd-analyze) check the installed files.
[ $want_package_tools = 1 ] && packages+=(lintian rpm ruby man-db systemd)
# Bench (--bench): iproute2 for the namespaces, espeak-ng synthesizes the speech
# material, sox resamples it (48 kHz for calls, 16 kHz for PESQ), and a Python
# venv (python3-venv; python3-dev and the C toolchain in case pip has to build
# PyPI's `pesq` from source) scores it.
[ $want_bench_tools = 1 ] && packages+=(iproute2 espeak-ng sox python3-venv python3-dev)

missing=()
for package in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
    sudo=""
    if [ "$(id -u)" -ne 0 ]; then
        command -v sudo >/dev/null || { echo "setup: need root or sudo to install: ${missing[*]}" >&2; exit 1; }
        sudo=sudo
    fi
    echo "setup: installing ${missing[*]}"
    $sudo apt-get update -qq
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

if ! command -v cargo >/dev/null; then
    [ -x "$HOME/.cargo/bin/cargo" ] || {
        echo "setup: installing the Rust toolchain with rustup"
        curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal --component clippy,rustfmt
    }
    echo "setup: add ~/.cargo/bin to your PATH (source \"\$HOME/.cargo/env\")"
fi

install_cargo_tool() { # crate, command to check
    if ! "${@:2}" >/dev/null 2>&1; then
        echo "setup: installing $1"
        cargo install "$1" --locked
    fi
}
if [ $want_test_tools = 1 ]; then
    install_cargo_tool cargo-nextest cargo nextest --version
fi
if [ $want_fuzz_tools = 1 ]; then
    install_cargo_tool cargo-fuzz cargo fuzz --version
fi
if [ $want_package_tools = 1 ]; then
    install_cargo_tool cargo-deb cargo deb --version
    install_cargo_tool cargo-generate-rpm cargo generate-rpm --version
fi
# The examples' Python: grpcio, grpcio-tools (stubs from our .proto) and
# grpcio-reflection (no .proto at all) in a venv under target/, for the tests that
# run examples/stats_csv.py and examples/call_api.py; h2 for the test that speaks
# HTTP/2 as grpcurl does; zeroconf for the peer advertised by another mDNS stack.
if [ $want_test_tools = 1 ]; then
    venv="$(dirname "$0")/../target/test-venv"
    if ! "$venv/bin/python" -c "import grpc, grpc_tools, grpc_reflection, h2, zeroconf" >/dev/null 2>&1; then
        echo "setup: making the tests' venv $venv (grpcio, grpcio-tools, grpcio-reflection, h2, zeroconf)"
        /usr/bin/python3 -m venv "$venv"
        "$venv/bin/pip" install --quiet grpcio grpcio-tools grpcio-reflection h2 zeroconf
    fi
fi
# The bench's Python: PESQ (ITU-T P.862.2 wideband, PyPI `pesq`) and numpy, in a
# venv under target/ so nothing is installed system-wide. The system python3
# (what python3-venv belongs to), not whichever python3 is first on PATH.
if [ $want_bench_tools = 1 ]; then
    venv="$(dirname "$0")/../target/bench-venv"
    if ! "$venv/bin/python" -c "import pesq, numpy" >/dev/null 2>&1; then
        echo "setup: making the bench venv $venv (pesq, numpy)"
        /usr/bin/python3 -m venv "$venv"
        "$venv/bin/pip" install --quiet --upgrade pip
        "$venv/bin/pip" install --quiet numpy pesq
    fi
fi
