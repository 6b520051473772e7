#!/bin/sh
# Installs and starts voiced as a launchd agent of the current user (macOS).
#   packaging/macos/install-launch-agent.sh [BINDIR]     (default: /usr/local/bin)
# Stop and remove it with:
#   launchctl bootout gui/$(id -u)/org.voicelink.voiced
#   rm ~/Library/LaunchAgents/org.voicelink.voiced.plist
set -eu
bindir=${1:-/usr/local/bin}
logdir="$HOME/Library/Logs/voicelink"
agent="$HOME/Library/LaunchAgents/org.voicelink.voiced.plist"
[ -x "$bindir/voiced" ] || { echo "no voiced in $bindir; pass the folder it is in" >&2; exit 1; }
mkdir -p "$logdir" "$(dirname "$agent")"
sed -e "s|@BINDIR@|$bindir|g" -e "s|@LOGDIR@|$logdir|g" "$(dirname "$0")/org.voicelink.voiced.plist" > "$agent"
launchctl bootout "gui/$(id -u)/org.voicelink.voiced" 2>/dev/null || true
launchctl bootstrap "gui/$(id -u)" "$agent"
echo "voiced runs at login; logs: $logdir/voiced.log"
