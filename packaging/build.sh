#!/usr/bin/env bash
# Builds every package into dist/: the .deb (cargo-deb), the .rpm
# (cargo-generate-rpm), the source archive, and the Homebrew formula and Arch
# PKGBUILD filled in for that archive. Run by `make package`.
set -euo pipefail
cd "$(dirname "$0")/.."

version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)
release=target/release
assets=packaging/generated
mkdir -p "$assets" dist

# Completions and manual pages come from the binaries' own definitions: voicectl(1)
# and a page per subcommand, voiced(1), and voiced.toml(5) from the table of keys.
"$release/voicectl" completions bash > "$assets/voicectl.bash"
"$release/voicectl" completions zsh > "$assets/_voicectl"
"$release/voicectl" completions fish > "$assets/voicectl.fish"
rm -rf "$assets/man" && mkdir -p "$assets/man"
"$release/voicectl" man --dir "$assets/man"
"$release/voiced" --print-man > "$assets/man/voiced.1"
"$release/voiced" --print-man voiced.toml > "$assets/man/voiced.toml.5"

cargo deb -p voicelink-daemon --no-build --output dist/
cargo deb -p voicelink-tray --no-build --output dist/
cargo generate-rpm -p daemon --output dist/
cargo generate-rpm -p tray --output dist/

# The source archive the formula and the PKGBUILD build from (what is committed).
archive="dist/voicelink-$version.tar.gz"
git archive --format=tar.gz --prefix="voicelink-$version/" -o "$archive" HEAD
sha=$(sha256sum "$archive" | cut -d' ' -f1)
for template in packaging/homebrew/voicelink.rb.in packaging/arch/PKGBUILD.in; do
    out="dist/$(basename "$template" .in)"
    sed -e "s/@VERSION@/$version/g" -e "s/@SHA256@/$sha/g" "$template" > "$out"
done
ls -l dist/
