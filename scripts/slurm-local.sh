#!/usr/bin/env bash
# A real single-node Slurm on this machine, for the tests and for trying launch.executor=slurm (as root).
#   bash scripts/slurm-local.sh start     # install slurm-wlm + munge if needed, write slurm.conf, start, wait for idle
#   bash scripts/slurm-local.sh stop      # stop the daemons this script started
#   bash scripts/slurm-local.sh status
# munged, slurmctld and slurmd run on this host; finished jobs are listed by `sacct -c` (jobcomp/filetxt:
# there is no slurmdbd). cgroup plugins are off (proctrack/linuxproc, task/none): they need a full system.
set -euo pipefail

conf=/etc/slurm/slurm.conf

need_root() {
  if [ "$(id -u)" != 0 ]; then echo "slurm-local: must run as root (it installs packages and starts daemons)" >&2; exit 2; fi
}

install() {
  if command -v slurmctld >/dev/null && command -v munged >/dev/null; then return; fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null
}

start_munge() {
  mkdir -p /etc/munge /var/log/munge /run/munge /var/lib/munge
  [ -f /etc/munge/munge.key ] || dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
  chown -R munge:munge /etc/munge /var/log/munge /run/munge /var/lib/munge
  chmod 400 /etc/munge/munge.key; chmod 700 /etc/munge
  if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    su -s /bin/sh munge -c /usr/sbin/munged
  fi
}

write_conf() {
  local host cpus mem
  host=$(hostname); cpus=$(nproc); mem=$(( $(free -m | awk '/Mem:/{print $2}') - 1024 ))
  mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm
  cat > "$conf" <<CONF
ClusterName=local
SlurmctldHost=$host
SlurmUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
ReturnToService=2
MinJobAge=600
KillWait=5
JobCompType=jobcomp/filetxt
JobCompLoc=/var/log/slurm/jobcomp.log
NodeName=$host CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF
}

running() { [ -f "/run/$1.pid" ] && kill -0 "$(cat "/run/$1.pid")" 2>/dev/null; }

case "${1:-}" in
  start)
    need_root; install; start_munge
    if running slurmctld && running slurmd && sinfo -h -o %T 2>/dev/null | grep -q idle; then
      echo "slurm-local: already running: $(sinfo -h -o '%N %T %c CPUs')"; exit 0
    fi
    write_conf
    running slurmctld || slurmctld
    running slurmd || slurmd
    for _ in $(seq 60); do
      state=$(sinfo -h -o %T 2>/dev/null | head -1 || true)
      case "$state" in idle|mixed|allocated) echo "slurm-local: up: $(sinfo -h -o '%N %T %c CPUs')"; exit 0 ;; esac
      sleep 1
    done
    echo "slurm-local: the node did not become idle; see /var/log/slurm/slurmctld.log and slurmd.log" >&2
    exit 1 ;;
  stop)
    for daemon in slurmd slurmctld; do
      if running "$daemon"; then kill "$(cat "/run/$daemon.pid")"; fi
    done
    echo "slurm-local: stopped" ;;
  status)
    if running slurmctld && running slurmd; then sinfo; else echo "slurm-local: not running"; exit 1; fi ;;
  *)
    echo "usage: bash scripts/slurm-local.sh start|stop|status" >&2; exit 2 ;;
esac
