#!/usr/bin/env bash
# A single-node Slurm for the MPI tests: munged, slurmctld and slurmd as plain background daemons
# (no systemd, no cgroups: proctrack/linuxproc, task/none), this host as the only node at
# 127.0.0.1. Runs as root, and touches nothing of the host's own Slurm or munge: its config,
# key, sockets, state, logs and PID files all live in a private directory ($CH_CI_DIR/slurm),
# its daemons listen on ports of their own, and their PID files are listed in
# $CH_CI_DIR/pidfiles for .ci/run to stop them at the end. Exports CH_TEST_SLURM=1 and
# CH_TEST_SLURM_CONF (the tests' SLURM_CONF) through $CH_TEST_ENV_FILE once the node is idle.
set -euo pipefail

: "${CH_CI_DIR:?CH_CI_DIR: the private directory .ci/run made}"
dir=$CH_CI_DIR/slurm
node=$(hostname -s)
# Ports far from Slurm's defaults (6817, 6818), so that a site's own Slurm is never in the way.
ctld_port=${CH_CI_SLURMCTLD_PORT:-16817}
slurmd_port=${CH_CI_SLURMD_PORT:-16818}

install -d -m 755 "$dir" "$dir/state" "$dir/spool" "$dir/log"
install -d -o munge -g munge -m 755 "$dir/munge"
install -d -o munge -g munge -m 700 "$dir/munge/lib"

# munge, with a key of its own, as the munge user.
mungekey --create --keyfile="$dir/munge/munge.key"
chown munge:munge "$dir/munge/munge.key"
chmod 400 "$dir/munge/munge.key"
socket=$dir/munge/munge.socket
setpriv --reuid=munge --regid=munge --init-groups \
  munged --socket="$socket" --key-file="$dir/munge/munge.key" --pid-file="$dir/munge/munged.pid" \
  --log-file="$dir/munge/munged.log" --seed-file="$dir/munge/lib/munged.seed" </dev/null
echo "$dir/munge/munged.pid" >>"$CH_CI_DIR/pidfiles"
munge --socket="$socket" -n | unmunge --socket="$socket" >/dev/null

# slurm.conf: one node with the CPUs slurmd finds, no accounting, no cgroups. (No cgroup.conf:
# CgroupPlugin=disabled does not exist in 22.05 and stops slurmd.)
cpus=$(slurmd -C | sed -n 's/.* CPUs=\([0-9]*\) .*/\1/p' | head -1)
conf=$dir/slurm.conf
cat >"$conf" <<EOF
# Written by .ci/setup-slurm.sh (charliecloud tests): a private single-node cluster.
ClusterName=chtest
SlurmctldHost=$node(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$socket
CryptoType=crypto/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SwitchType=switch/none
ReturnToService=2
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
NodeName=$node NodeAddr=127.0.0.1 CPUs=$cpus State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
chmod 644 "$conf"
export SLURM_CONF=$conf

start=$(date +%s%N)
slurmctld -f "$conf" -i </dev/null >>"$dir/log/slurmctld.out" 2>&1
echo "$dir/slurmctld.pid" >>"$CH_CI_DIR/pidfiles"
slurmd -f "$conf" </dev/null >>"$dir/log/slurmd.out" 2>&1
echo "$dir/slurmd.pid" >>"$CH_CI_DIR/pidfiles"
for _ in $(seq 300); do
  [[ $(sinfo -h -N -n "$node" -o %t 2>/dev/null) == idle ]] && break
  sleep 0.1
done
if [[ $(sinfo -h -N -n "$node" -o %t 2>/dev/null) != idle ]]; then
  echo "setup-slurm: node $node is not idle after 30 s:" >&2
  sinfo -N -l >&2 || true
  tail -20 "$dir/log/slurmctld.log" "$dir/log/slurmd.log" >&2 || true
  exit 1
fi
echo "setup-slurm: node $node idle ($cpus CPUs) $(( ($(date +%s%N) - start) / 1000000 )) ms after start"

if [[ -n ${CH_TEST_ENV_FILE:-} ]]; then
  echo "CH_TEST_SLURM=1" >>"$CH_TEST_ENV_FILE"
  echo "CH_TEST_SLURM_CONF=$conf" >>"$CH_TEST_ENV_FILE"
fi
