#!/usr/bin/env bash
# Installs the .deb built by packaging/build.sh on this machine, checks that every
# part is where its user looks for it, and removes it again. Also checks the
# other packages as far as this machine can (RPM contents, formula and PKGBUILD
# syntax, the launchd plist). Needs root; run by `make test` (as root) in CI.
set -euo pipefail
cd "$(dirname "$0")/.."

passed=0
failed=0
check() {
    local what=$1
    shift
    if "$@" >/tmp/voicelink-check.out 2>&1; then
        passed=$((passed + 1))
        echo "ok: $what"
    else
        failed=$((failed + 1))
        echo "FAILED: $what"
        sed 's/^/    /' /tmp/voicelink-check.out
    fi
}

deb=$(ls dist/voicelink_*.deb)
tray_deb=$(ls dist/voicelink-tray_*.deb)
rpm=$(ls dist/voicelink-[0-9]*.rpm)
tray_rpm=$(ls dist/voicelink-tray-[0-9]*.rpm)

check "lintian finds no errors in the .deb" lintian --fail-on error "$deb"
check "the .deb installs" dpkg -i "$deb"
check "voiced --version" sh -c 'voiced --version | grep -q "^voiced "'
check "voicectl --help" sh -c 'voicectl --help | grep -q "Usage: voicectl"'
check "the user unit is where systemctl --user finds it" test -f /usr/lib/systemd/user/voiced.service
# As the user manager would load it (the --user manager needs a runtime folder).
check "systemd-analyze --user verify passes on the installed unit" \
    sh -c 'export XDG_RUNTIME_DIR=$(mktemp -d); out=$(systemd-analyze --user verify /usr/lib/systemd/user/voiced.service 2>&1); echo "$out"; [ -z "$out" ]'
check "voiced.service starts, serves, reloads and stops under a real user manager, sandboxed" \
    packaging/test-user-unit.sh
check "bash loads the completion, which asks the installed voicectl" \
    bash -c 'source /usr/share/bash-completion/completions/voicectl && complete -p voicectl >/dev/null &&
        COMP_WORDS=(voicectl di) COMP_CWORD=1 && _clap_complete_voicectl voicectl di voicectl &&
        [ "${COMPREPLY[*]}" = "dial" ]'
check "the zsh completion is in zsh's vendor folder" grep -q '#compdef voicectl' /usr/share/zsh/vendor-completions/_voicectl
check "the fish completion is in fish's vendor folder" grep -q 'complete .*--command voicectl' /usr/share/fish/vendor_completions.d/voicectl.fish
check "man finds voicectl(1)" sh -c 'man -w voicectl | grep -q voicectl.1'
check "man finds voiced(1)" sh -c 'man -w voiced | grep -q voiced.1'
check "man finds voiced.toml(5)" sh -c 'man -w 5 voiced.toml | grep -q voiced.toml.5'
check "every page voicectl(1) refers to is installed" sh -c '
    # The installed file itself: man-db may show a formatted copy cached from an
    # earlier install (packaged files carry a fixed, older timestamp).
    for page in $(man -P cat -l "$(man -w voicectl)" 2>/dev/null | grep -o "voicectl-[a-z-]*([0-9])" | sort -u); do
        name=${page%(*}; section=${page#*(}; section=${section%)}
        man -w "$section" "$name" >/dev/null || { echo "missing: $page"; exit 1; }
    done'
check "the .proto and the examples are in /usr/share/voicelink" \
    sh -c 'test -f /usr/share/voicelink/proto/voicelink/v1/voicelink.proto && test -f /usr/share/voicelink/examples/call_api.py && test -f /usr/share/voicelink/examples/stats_csv.py'
check "the .deb declares the libraries it links" sh -c "dpkg-deb -f '$deb' Depends | grep -q libc6"
check "lintian finds no errors in the tray's .deb" lintian --fail-on error "$tray_deb"
check "the tray's .deb installs next to voicelink" dpkg -i "$tray_deb"
check "voicelink-tray --help" sh -c 'voicelink-tray --help | grep -q "Usage: voicelink-tray"'
check "the desktop starts the tray at login (XDG autostart)" \
    grep -q '^Exec=voicelink-tray' /etc/xdg/autostart/voicelink-tray.desktop
check "the tray's .deb declares GLib" sh -c "dpkg-deb -f '$tray_deb' Depends | grep -q libglib2.0-0"
check "the tray's .deb is removed cleanly" dpkg -P voicelink-tray
check "the .deb is removed cleanly" dpkg -r voicelink
check "nothing is left behind" sh -c '! test -e /usr/bin/voiced && ! test -e /usr/bin/voicelink-tray && ! test -e /etc/xdg/autostart/voicelink-tray.desktop && ! test -e /usr/lib/systemd/user/voiced.service && ! dpkg -s voicelink 2>/dev/null | grep -q "Status: install ok"'

check "the .rpm holds the same files" sh -c "rpm -qlp '$rpm' | sort | tr '\n' ' ' | grep -q '/usr/bin/voicectl /usr/bin/voiced /usr/lib/systemd/user/voiced.service.*/usr/share/man/man1/voicectl-dial.1.*/usr/share/man/man1/voiced.1 /usr/share/man/man5/voiced.toml.5 /usr/share/voicelink/examples/call_api.py.*/usr/share/voicelink/proto/voicelink/v1/voicelink.proto'"
check "the tray's .rpm holds the tray and its autostart entry and needs voicelink" \
    sh -c "rpm -qlp '$tray_rpm' | grep -q /usr/bin/voicelink-tray && rpm -qlp '$tray_rpm' | grep -q /etc/xdg/autostart/voicelink-tray.desktop && rpm -qpR '$tray_rpm' | grep -q '^voicelink'"
check "the .rpm declares the libraries it links" sh -c "rpm -qpR '$rpm' | grep -q 'libc.so'"
check "the Homebrew formula is valid Ruby with the archive's checksum" \
    sh -c "ruby -c dist/voicelink.rb && grep -q \"sha256 \\\"\$(sha256sum dist/voicelink-*.tar.gz | cut -d' ' -f1)\\\"\" dist/voicelink.rb"
check "the PKGBUILD is valid bash and builds the daemon and the tray" \
    sh -c 'bash -n dist/PKGBUILD && grep -q "^package_voicelink-tray()" dist/PKGBUILD && grep -q "alsa-lib" dist/PKGBUILD && grep -q "cmake" dist/PKGBUILD'
check "the launchd plist is well-formed" python3 -c 'import plistlib,sys; p=plistlib.load(open(sys.argv[1],"rb")); assert p["RunAtLoad"] and "KeepAlive" in p' packaging/macos/org.voicelink.voiced.plist

echo "packaging: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
