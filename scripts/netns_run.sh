#!/usr/bin/env bash
# Run a command inside a private network namespace with only loopback up, so that DDS traffic
# from tests, demos and benchmarks never leaves this machine. ROS discovery is limited to
# localhost and the domain id is random unless ROS_DOMAIN_ID is already set.
set -euo pipefail
if [ $# -eq 0 ]; then
    echo "usage: $0 COMMAND [ARGS...]" >&2
    exit 2
fi
domain=${ROS_DOMAIN_ID:-$(( (RANDOM % 200) + 1 ))}
flags=-n
if [ "$(id -u)" -ne 0 ]; then
    flags=-rn
fi
exec unshare "$flags" env ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST ROS_DOMAIN_ID="$domain" \
    sh -c 'ip link set lo up && exec "$@"' netns_run "$@"
