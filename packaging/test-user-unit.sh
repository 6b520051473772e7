#!/usr/bin/env bash
# Runs the installed voiced.service under a real systemd user manager, as a
# throwaway user, and checks that it starts (READY=1), serves voicectl, reloads,
# stops cleanly, and that its sandbox is really in place (user namespace, seccomp,
# no new privileges, a read-only root). Needs root and the installed .deb; run by
# packaging/test-install.sh.
#
# On a host booted with systemd the user manager is user@UID.service. In a
# container whose PID 1 is something else (CI here), the manager is started by
# hand with what PID 1 would have prepared: its cgroups, /run/systemd/system, and
# /run as a mount point of its own. Either way it runs in a network namespace of
# its own, so nothing reaches the host's network, and voiced's discovery is off.
set -euo pipefail

user=voicelink-unit-test
netns=voicelink-unit-test
unit=voiced.service

created_dirs=()
manager_pid=
cleanup() {
    set +e
    if [ -n "$manager_pid" ]; then
        kill "$manager_pid" 2>/dev/null
        wait "$manager_pid" 2>/dev/null
    elif [ -n "${uid:-}" ]; then
        systemctl stop "user@$uid.service" 2>/dev/null
    fi
    # Deepest first: cgroups and folders this script made.
    for ((i = ${#created_dirs[@]} - 1; i >= 0; i--)); do
        dir=${created_dirs[i]}
        if [[ $dir == /sys/fs/cgroup/* ]]; then
            find "$dir" -depth -type d -exec rmdir {} + 2>/dev/null
        else
            rm -rf "$dir"
        fi
    done
    ip netns del "$netns" 2>/dev/null
    id "$user" >/dev/null 2>&1 && userdel --remove "$user" 2>/dev/null
    rm -rf "/run/user/${uid:-none}"
}
trap cleanup EXIT

make_dir() {
    # mkdir -p, remembering the topmost folder it created.
    local dir=$1 top=$1
    [ -d "$dir" ] && return
    while [ ! -d "$(dirname "$top")" ]; do top=$(dirname "$top"); done
    mkdir -p "$dir"
    created_dirs+=("$top")
}

id "$user" >/dev/null 2>&1 && userdel --remove "$user"
useradd --create-home --user-group --shell /bin/bash "$user"
uid=$(id -u "$user")
gid=$(id -g "$user")
home=$(getent passwd "$user" | cut -d: -f6)
runtime=/run/user/$uid
install -d -m 0700 -o "$user" -g "$user" "$runtime"
as_user() { runuser -u "$user" -- env XDG_RUNTIME_DIR="$runtime" HOME="$home" "$@"; }

# No discovery (nothing on the host's network) and no sound card needed.
install -d -o "$user" -g "$user" "$home/.config" "$home/.config/voicelink"
cat >"$home/.config/voicelink/voiced.toml" <<'EOF'
name = "unit-test"
[discovery]
enabled = false
[audio]
input = "silence"
output = "null"
EOF
chown "$user:$user" "$home/.config/voicelink/voiced.toml"

ip netns add "$netns"
ip -n "$netns" link set lo up

if [ "$(ps -p 1 -o comm=)" = systemd ]; then
    systemctl start "user@$uid.service"
else
    make_dir /run/systemd/system
    # What PID 1 creates for namespaced units (systemd 252 and 254+ respectively).
    make_dir /run/systemd/unit-root
    make_dir /run/systemd/mount-rootfs
    chmod 0700 /run/systemd/unit-root
    chmod 0555 /run/systemd/mount-rootfs
    # The manager's cgroup in every hierarchy systemd uses, delegated to the user.
    cgroups=()
    for hierarchy in /sys/fs/cgroup/systemd /sys/fs/cgroup/unified /sys/fs/cgroup; do
        if [ -e "$hierarchy/cgroup.procs" ]; then
            dir=$hierarchy/user.slice/user-$uid.slice/user@$uid.service
            make_dir "$dir"
            chown -R "$user:$user" "$dir"
            cgroups+=("$dir/cgroup.procs")
        fi
    done
    setsid nsenter --net="/run/netns/$netns" bash -c '
        for procs in "${@:4}"; do echo $$ > "$procs"; done
        exec unshare --mount --propagation private sh -c "mount --rbind /run /run && exec setpriv --reuid=$1 --regid=$2 --init-groups env -i HOME=$3 USER='"$user"' LOGNAME='"$user"' PATH=/usr/local/bin:/usr/bin:/bin XDG_RUNTIME_DIR=/run/user/$1 /lib/systemd/systemd --user"
    ' manager "$uid" "$gid" "$home" "${cgroups[@]}" >/tmp/voicelink-user-manager.log 2>&1 &
    manager_pid=$!
fi

# The manager's private bus socket appears once it has started.
for _ in $(seq 300); do
    [ -S "$runtime/systemd/private" ] && break
    kill -0 "${manager_pid:-$$}" 2>/dev/null || break
    sleep 0.1
done
if ! as_user systemctl --user is-system-running --wait >/dev/null; then
    echo "the user manager did not start:"
    cat /tmp/voicelink-user-manager.log 2>/dev/null
    exit 1
fi

fail() {
    echo "$*"
    as_user systemctl --user status "$unit" --no-pager 2>&1 | sed 's/^/    /'
    exit 1
}

# Type=notify: start returns once voiced has sent READY=1.
as_user systemctl --user start "$unit" || fail "systemctl --user start $unit failed"
as_user systemctl --user is-active --quiet "$unit" || fail "$unit is not active after start"
as_user voicectl status | grep -q "unit-test" || fail "voicectl status does not reach the unit's voiced"
# The config folder is writable inside the sandbox: a live key changes at once.
as_user voicectl config set name unit-test-renamed >/dev/null || fail "voicectl config set cannot write the config"
grep -q 'name = "unit-test-renamed"' "$home/.config/voicelink/voiced.toml" || fail "the config file was not edited"
as_user voicectl status | grep -q "unit-test-renamed" || fail "the new name was not applied"

pid=$(as_user systemctl --user show -p MainPID --value "$unit")
# The sandbox: a user namespace that maps only the user, seccomp, no new privileges,
# a read-only root (ProtectSystem=strict), a private /tmp.
read -r inside outside count <"/proc/$pid/uid_map"
[ "$inside $outside $count" = "$uid $uid 1" ] || fail "no user namespace (uid_map: $inside $outside $count)"
grep -q '^NoNewPrivs:[[:space:]]*1' "/proc/$pid/status" || fail "NoNewPrivileges is not in effect"
grep -q '^Seccomp:[[:space:]]*2' "/proc/$pid/status" || fail "the system call filter is not in effect"
awk '$5 == "/" { print $6 }' "/proc/$pid/mountinfo" | grep -q '^ro' || fail "the root is not read-only"
[ "$(stat -c %i /tmp)" != "$(nsenter -t "$pid" -m stat -c %i /tmp)" ] || fail "/tmp is not private"

as_user systemctl --user reload "$unit" || fail "systemctl --user reload $unit failed"
as_user systemctl --user is-active --quiet "$unit" || fail "$unit is not active after a reload"
as_user systemctl --user stop "$unit"
result=$(as_user systemctl --user show -p Result --value "$unit")
[ "$result" = success ] || fail "$unit stopped with result $result"
echo "voiced.service ran under a systemd $(systemctl --version | head -n1 | cut -d' ' -f2) user manager: started, served, reloaded, stopped cleanly, sandboxed"
