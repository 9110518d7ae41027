#!/bin/sh
# socketfilter discovery|actions: HAProxy with /etc/socketfilter/<name>.cfg, as the haproxy user.
#
# The engine's socket is root:<docker group> 0660 on most hosts, and that group's id differs
# from host to host, so it is read from the mounted socket here: HAProxy then runs as the
# unprivileged haproxy user with that group (setpriv drops every capability with the switch),
# and nothing needs to know the host's group id in advance.
set -eu
name="${1:-discovery}"
cfg="/etc/socketfilter/$name.cfg"
sock="${DOCKER_SOCKET_PATH:-/var/run/docker.sock}"
[ -f "$cfg" ] || { echo "socketfilter: no such filter '$name' (discovery or actions)" >&2; exit 2; }
[ -S "$sock" ] || { echo "socketfilter: $sock is not a socket: mount the engine's socket there" >&2; exit 2; }
export DOCKER_SOCKET_PATH="$sock"  # the configs name it as ${DOCKER_SOCKET_PATH}
gid=$(stat -c %g "$sock")
echo "socketfilter: $name filter on :2375 -> $sock (group $gid)" >&2
if [ "$(id -u)" = 0 ]; then
    exec setpriv --reuid=haproxy --regid="$gid" --clear-groups --inh-caps=-all \
        haproxy -db -f "$cfg"
fi
exec haproxy -db -f "$cfg"
