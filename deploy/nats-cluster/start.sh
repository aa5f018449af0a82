#!/bin/sh
# Starts one node of compose.cluster.yaml's NATS cluster: nats.conf beside deploy/nats-auth.conf, whose password
# placeholders auth.sed turns into references to environment variables ("<gateway-password>" becomes
# $TOKENRELAY_NATS_GATEWAY_PASSWORD), so nats-server takes each password from its environment and none is written
# to a file. The arguments go to nats-server (the node's --server_name).
set -eu
run=/tmp/tokenrelay-nats
mkdir -p "$run"
cp /etc/nats/cluster/nats.conf "$run/nats.conf"
sed -f /etc/nats/cluster/auth.sed /etc/nats/nats-auth.conf > "$run/auth.conf"
# A placeholder left as it is would be a password anyone can read in the repository: refuse to start.
if grep -q 'password: *"<' "$run/auth.conf"; then
    echo "start.sh: deploy/nats-auth.conf has a password placeholder auth.sed does not replace" >&2
    exit 1
fi
exec nats-server --config "$run/nats.conf" "$@"
