#!/usr/bin/env bash
# Front-door benchmark: bamf-bridge against HAProxy, HAProxy with splicing, nginx
# ssl_preread and a direct connection, all on 127.0.0.1. See benches/README.md.
#
#   benches/frontdoor.sh                 full run (5 interleaved runs, ~6 min), release build
#   benches/frontdoor.sh --smoke         CI check (~10 s), debug build; fails if any target fails
#   benches/frontdoor.sh --record        append the report to benches/RESULTS.md
#   benches/frontdoor.sh --runs 3 --targets direct,bamf,nginx   any other harness option
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

smoke=0
bridge_given=0
for arg in "$@"; do
    case $arg in
    --smoke) smoke=1 ;;
    --bridge | --bridge=*) bridge_given=1 ;;
    esac
done

# The proxies to compare against, from Debian, installed only when missing.
missing=()
command -v haproxy >/dev/null 2>&1 || [[ -x /usr/sbin/haproxy ]] || missing+=(haproxy)
command -v nginx >/dev/null 2>&1 || [[ -x /usr/sbin/nginx ]] || missing+=(nginx)
[[ -e /usr/lib/nginx/modules/ngx_stream_module.so ]] || missing+=(libnginx-mod-stream)
if ((${#missing[@]} > 0)); then
    echo "frontdoor.sh: installing ${missing[*]}" >&2
    # Keep the packages' own services from starting (nginx would bind port 80).
    made_policy=0
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod +x /usr/sbin/policy-rc.d
        made_policy=1
    fi
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
    if ((made_policy)); then
        rm -f /usr/sbin/policy-rc.d
    fi
fi
export PATH="$PATH:/usr/sbin:/sbin"

if ((smoke)); then
    profile=dev
    profile_dir=debug
else
    profile=release
    profile_dir=release
fi
cargo build --profile "$profile" -p bamf-bridge -p bamf-benches --locked

target_dir="${CARGO_TARGET_DIR:-target}"
bridge=()
if ((!bridge_given)); then
    bridge=(--bridge "$target_dir/$profile_dir/bamf-bridge")
fi
exec "$target_dir/$profile_dir/frontdoor" "${bridge[@]}" "$@"
