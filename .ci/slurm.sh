#!/usr/bin/env bash
# A throwaway single-node Slurm cluster on 127.0.0.1 for tests/test_slurm.py (and for trying
# docs/slurm/pcamlab-array.sbatch by hand): Debian's Slurm (slurm-wlm 22.05) with munge, run as root.
#
#   .ci/slurm.sh install   apt-get install slurm-wlm and munge when missing (root; best effort)
#   .ci/slurm.sh start     write DIR/slurm.conf, start munged, slurmctld -D and slurmd -D in the background
#                          (their pids in DIR/pids), wait until sinfo shows the node idle, write DIR/env
#   .ci/slurm.sh stop      stop the daemons whose pids are in DIR/pids (nothing else)
#   .ci/slurm.sh status    exit 0 when the cluster of DIR answers and its node is idle or busy
#   source .ci/slurm.sh    (what .ci/run does) install, start, export SLURM_CONF and PCAMLAB_SLURM_DIR, and
#                          stop the daemons when the calling shell exits (trap EXIT); a cluster that cannot
#                          start is a message, not an exit: the Slurm test then fails under CI=true
#
# DIR is $PCAMLAB_SLURM_DIR (default /tmp/pcamlab-slurm). Clients find the cluster through
# `source DIR/env` (SLURM_CONF=DIR/slurm.conf; the munge socket is named in it), so the machine's own
# /etc/slurm and /run/munge are never touched. Nothing here is a production setup: no accounting
# database (sacct needs slurmdbd; finished jobs are logged to DIR/jobcomp.log instead), no cgroups
# (ProctrackType=proctrack/linuxproc, TaskPlugin=task/none, so it runs inside a container), root only.
DIR=${PCAMLAB_SLURM_DIR:-/tmp/pcamlab-slurm}
CTLD_PORT=${PCAMLAB_SLURM_CTLD_PORT:-6817}
SLURMD_PORT=${PCAMLAB_SLURM_SLURMD_PORT:-6818}
START_TIMEOUT=${PCAMLAB_SLURM_START_TIMEOUT:-60}

pcamlab_slurm_say() { echo "slurm.sh: $*" >&2; }

pcamlab_slurm_sbin() {  # the daemon binaries live in /usr/sbin on Debian
    local name=$1
    command -v "$name" 2>/dev/null || { [ -x "/usr/sbin/$name" ] && echo "/usr/sbin/$name"; } || return 1
}

pcamlab_slurm_install() {
    if pcamlab_slurm_sbin slurmctld >/dev/null && pcamlab_slurm_sbin slurmd >/dev/null && pcamlab_slurm_sbin munged >/dev/null && command -v sbatch >/dev/null; then
        return 0
    fi
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
        pcamlab_slurm_say "slurm-wlm/munge are not installed and cannot be (needs root and apt-get)"
        return 1
    fi
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        slurm-wlm munge) >/tmp/pcamlab-ci-slurm.log 2>&1 \
        || { pcamlab_slurm_say "apt-get install slurm-wlm munge failed (see /tmp/pcamlab-ci-slurm.log)"; return 1; }
}

pcamlab_slurm_status() {
    [ -f "$DIR/env" ] || return 1
    # shellcheck disable=SC1091
    ( source "$DIR/env" && timeout 10 sinfo -h -N -o "%T" 2>/dev/null | grep -q -E "^(idle|mixed|allocated)" )
}

pcamlab_slurm_stop() {
    [ -f "$DIR/pids" ] || return 0
    local pid
    # slurmd first (it kills its job steps), then the controller, then munge
    for pid in $(tac "$DIR/pids"); do
        kill "$pid" 2>/dev/null || true
    done
    for _ in $(seq 50); do
        local alive=0
        for pid in $(cat "$DIR/pids"); do kill -0 "$pid" 2>/dev/null && alive=1; done
        [ $alive = 0 ] && break
        sleep 0.2
    done
    for pid in $(cat "$DIR/pids"); do kill -9 "$pid" 2>/dev/null || true; done
    rm -f "$DIR/pids" "$DIR/env"
}

pcamlab_slurm_start() {
    if pcamlab_slurm_status; then
        pcamlab_slurm_say "already running (DIR=$DIR)"
        return 0
    fi
    [ "$(id -u)" = 0 ] || { pcamlab_slurm_say "must run as root (munged -f, slurmd and jobs of any user)"; return 1; }
    local munged slurmctld slurmd
    munged=$(pcamlab_slurm_sbin munged) && slurmctld=$(pcamlab_slurm_sbin slurmctld) && slurmd=$(pcamlab_slurm_sbin slurmd) \
        || { pcamlab_slurm_say "slurm-wlm and munge are not installed (.ci/slurm.sh install)"; return 1; }
    [ -r /etc/munge/munge.key ] || { pcamlab_slurm_say "no /etc/munge/munge.key (the munge package makes one)"; return 1; }
    pcamlab_slurm_stop
    rm -rf "$DIR"
    mkdir -p "$DIR"/{munge,state,spool}
    chmod 0755 "$DIR" "$DIR/munge"
    local cpus memory
    cpus=$(nproc)
    memory=$(awk '/^MemTotal:/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)  # MB, below what slurmd measures
    cat >"$DIR/slurm.conf" <<EOF
# written by .ci/slurm.sh: one node on 127.0.0.1, no cgroups, no accounting database
ClusterName=pcamlab
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$DIR/munge/munge.socket.2
CredType=cred/munge
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/slurmctld.log
SlurmdLogFile=$DIR/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
ReturnToService=2
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$DIR/jobcomp.log
SchedulerParameters=sched_interval=1
KillWait=5
MinJobAge=300
InactiveLimit=0
SlurmctldTimeout=30
SlurmdTimeout=30
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$memory State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF
    "$munged" -f --socket="$DIR/munge/munge.socket.2" --pid-file="$DIR/munge/munged.pid" \
        --log-file="$DIR/munge/munged.log" --seed-file="$DIR/munge/munged.seed" --foreground \
        >"$DIR/munged.out" 2>&1 &
    echo $! >>"$DIR/pids"
    for _ in $(seq 50); do [ -S "$DIR/munge/munge.socket.2" ] && break; sleep 0.1; done
    [ -S "$DIR/munge/munge.socket.2" ] || { pcamlab_slurm_say "munged did not start: $(tail -3 "$DIR/munged.out" "$DIR/munge/munged.log" 2>/dev/null)"; pcamlab_slurm_stop; return 1; }
    SLURM_CONF="$DIR/slurm.conf" "$slurmctld" -D -i -f "$DIR/slurm.conf" >"$DIR/slurmctld.out" 2>&1 &
    echo $! >>"$DIR/pids"
    SLURM_CONF="$DIR/slurm.conf" "$slurmd" -D -N localhost -f "$DIR/slurm.conf" >"$DIR/slurmd.out" 2>&1 &
    echo $! >>"$DIR/pids"
    cat >"$DIR/env" <<EOF
export SLURM_CONF=$DIR/slurm.conf
export PCAMLAB_SLURM_DIR=$DIR
EOF
    local waited=0
    until pcamlab_slurm_status; do
        if [ $waited -ge $((START_TIMEOUT * 5)) ]; then
            pcamlab_slurm_say "the node did not become idle within ${START_TIMEOUT} s; last log lines:"
            tail -n 5 "$DIR/slurmctld.log" "$DIR/slurmd.log" >&2 2>/dev/null || true
            pcamlab_slurm_stop
            return 1
        fi
        sleep 0.2
        waited=$((waited + 1))
    done
    pcamlab_slurm_say "cluster up: $(source "$DIR/env" && sinfo -h -o '%P %a %D %T %c CPUs')"
}

if [ "${BASH_SOURCE[0]}" != "$0" ]; then  # sourced (.ci/run): set up for the tests, never exit the caller
    if pcamlab_slurm_install && pcamlab_slurm_start; then
        export SLURM_CONF="$DIR/slurm.conf" PCAMLAB_SLURM_DIR="$DIR"
        trap pcamlab_slurm_stop EXIT
    else
        pcamlab_slurm_say "no Slurm cluster: tests/test_slurm.py fails under CI=true, skips elsewhere"
    fi
    return 0
fi

set -euo pipefail
case "${1:-}" in
    install) pcamlab_slurm_install ;;
    start) pcamlab_slurm_start ;;
    stop) pcamlab_slurm_stop ;;
    status) pcamlab_slurm_status ;;
    *) echo "usage: $0 install|start|stop|status (or: source $0)" >&2; exit 2 ;;
esac
