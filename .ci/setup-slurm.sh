#!/usr/bin/env bash
# A single-node Slurm for the MPI tests: munged, slurmctld and slurmd as plain background daemons
# (no systemd, no cgroups: proctrack/linuxproc, task/none), this host as the only node at
# 127.0.0.1. Runs as root; rerunnable (stops the daemons an earlier run started, by their PID
# files). Exports CH_TEST_SLURM=1 through $CH_TEST_ENV_FILE once the node is idle.
set -euo pipefail

conf_dir=/etc/slurm
state=/var/lib/slurm
logs=/var/log/slurm
node=$(hostname -s)

# Whether process $1 runs (a zombie does not: here PID 1 reaps them late).
running() { [[ $(sed 's/.*) \(.\).*/\1/' "/proc/$1/stat" 2>/dev/null || echo Z) != Z ]]; }
# Stops the daemon whose PID is in file $1 (a PID file of ours), waiting until it is gone.
stop() {
  local pid
  pid=$(cat "$1" 2>/dev/null || true)
  if [[ -n $pid ]] && kill "$pid" 2>/dev/null; then
    for _ in $(seq 100); do
      running "$pid" || break
      sleep 0.1
    done
    if running "$pid"; then kill -9 "$pid" 2>/dev/null || true; fi
  fi
  rm -f "$1"
}
# Where systemd runs (not here, not in CI), the packages have started their own daemons.
if [[ -d /run/systemd/system ]]; then
  systemctl stop slurmd slurmctld munge 2>/dev/null || true
fi
stop /run/slurmd.pid
stop /run/slurmctld.pid
stop /run/munge/munged.pid

# munge: a key (the package usually made one), run as the munge user.
if [[ ! -s /etc/munge/munge.key ]]; then
  mungekey --create --keyfile=/etc/munge/munge.key
fi
chown munge:munge /etc/munge/munge.key
chmod 400 /etc/munge/munge.key
install -d -o munge -g munge -m 755 /run/munge
install -d -o munge -g munge -m 700 /var/log/munge /var/lib/munge
setpriv --reuid=munge --regid=munge --init-groups munged </dev/null >>/var/log/munge/munged.out 2>&1
munge -n | unmunge >/dev/null

# slurm.conf: one node with the CPUs slurmd finds, no accounting, no cgroups. (No cgroup.conf:
# CgroupPlugin=disabled does not exist in 22.05 and stops slurmd.)
cpus=$(slurmd -C | sed -n 's/.* CPUs=\([0-9]*\) .*/\1/p' | head -1)
install -d -m 755 "$conf_dir" "$logs"
rm -rf "$state/slurmctld" "$state/slurmd"
install -d -m 755 "$state/slurmctld" "$state/slurmd"
cat >"$conf_dir/slurm.conf" <<EOF
# Written by .ci/setup-slurm.sh (charliecloud tests): a single-node cluster.
ClusterName=chtest
SlurmctldHost=$node(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
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
StateSaveLocation=$state/slurmctld
SlurmdSpoolDir=$state/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=$logs/slurmctld.log
SlurmdLogFile=$logs/slurmd.log
NodeName=$node NodeAddr=127.0.0.1 CPUs=$cpus State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
chmod 644 "$conf_dir/slurm.conf"

start=$(date +%s%N)
slurmctld -i </dev/null >>"$logs/slurmctld.out" 2>&1
slurmd </dev/null >>"$logs/slurmd.out" 2>&1
for _ in $(seq 300); do
  [[ $(sinfo -h -N -n "$node" -o %t 2>/dev/null) == idle ]] && break
  sleep 0.1
done
if [[ $(sinfo -h -N -n "$node" -o %t 2>/dev/null) != idle ]]; then
  echo "setup-slurm: node $node is not idle after 30 s:" >&2
  sinfo -N -l >&2 || true
  tail -20 "$logs/slurmctld.log" "$logs/slurmd.log" >&2 || true
  exit 1
fi
echo "setup-slurm: node $node idle ($cpus CPUs) $(( ($(date +%s%N) - start) / 1000000 )) ms after start"

if [[ -n ${CH_TEST_ENV_FILE:-} ]]; then
  echo "CH_TEST_SLURM=1" >>"$CH_TEST_ENV_FILE"
fi
