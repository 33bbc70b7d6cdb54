#!/usr/bin/env bash
# Root step, before the test suite and never while it runs: with user.max_user_namespaces=0,
# ch-checkns as the ordinary user must name that setting and its fix, and ch-run must say it
# can't make a user namespace (exit 31). The setting is restored on exit, however this ends.
# Usage: userns-off.sh DIST (the directory of the built programs).
set -euo pipefail
dist=${1:?usage: userns-off.sh DIST}
user=${CH_TEST_USER:-chtest}
old=$(sysctl -n user.max_user_namespaces)
# Where even root may not change it (a container or sandbox with /proc/sys read-only), say so and
# go on: the test suite checks the same diagnosis in a user namespace of its own.
if ! sysctl -qw user.max_user_namespaces="$old" 2>/dev/null; then
  echo "userns-off: skipped: user.max_user_namespaces can't be changed here, even as root"
  exit 0
fi
trap 'sysctl -qw user.max_user_namespaces="$old"' EXIT
as_user() {
  setpriv --reuid="$user" --regid="$user" --init-groups --reset-env \
    env HOME=/tmp USER="$user" PATH=/usr/local/bin:/usr/bin:/bin "$@" 2>&1
}

sysctl -qw user.max_user_namespaces=0
checkns_rc=0 run_rc=0
checkns=$(as_user "$dist/ch-checkns") || checkns_rc=$?
run=$(as_user "$dist/ch-run" / -- true) || run_rc=$?
sysctl -qw user.max_user_namespaces="$old"
trap - EXIT

printf 'userns-off: ch-checkns (exit %s):\n%s\nuserns-off: ch-run (exit %s):\n%s\n' "$checkns_rc" "$checkns" "$run_rc" "$run"
fail=
[[ $checkns_rc == 1 ]] || fail+=" ch-checkns-exit"
grep -q '^ch-checkns\[[0-9]*\]: user namespace with UID/GID maps: creating it failed with ENOSPC: user.max_user_namespaces is 0; fix: sudo sysctl -w user.max_user_namespaces=' <<<"$checkns" || fail+=" ch-checkns-message"
[[ $run_rc == 31 ]] || fail+=" ch-run-exit"
grep -q "^ch-run\[[0-9]*\]: error: can't create the container's user namespace (ch-checkns says what blocks it): No space left on device" <<<"$run" || fail+=" ch-run-message"
if [[ -n $fail ]]; then
  echo "userns-off: FAILED:$fail" >&2
  exit 1
fi
echo "userns-off: ok (user.max_user_namespaces back to $(sysctl -n user.max_user_namespaces))"
