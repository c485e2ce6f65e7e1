#!/usr/bin/env bash
# `make test-slurm`: the SLURM path on a real SLURM, one node on localhost.
#
# As root on a Debian machine with no systemd: installs Debian's slurmctld, slurmd,
# slurm-client and munge if missing, writes a minimal slurm.conf into a temporary folder
# (proctrack/linuxproc and task/none: no cgroups), starts munged, slurmctld and slurmd
# directly, and submits through `python -m voice2face.slurm` (the script `make slurm`
# submits, CPU variant) a 2-task DDP training job of the `voice` method on a tiny synthetic
# world. It checks that both ranks ran, sends SIGUSR1 to the job step once the first
# checkpoint exists (voice2face/requeue.py saves last.ckpt and requeues the job), and checks that
# the job came back (SLURM's restart count, a second start in its log), resumed from that
# checkpoint and finished at the configured step. The daemons are stopped on every exit.
# Every wait is bounded; any failure exits non-zero after printing the logs.
#
# Knobs: SLURM_TEST_DIR (work folder, default a new temp dir; kept on failure),
# SLURM_TEST_PORT (slurmctld port; slurmd uses the next one), SLURM_TEST_STEPS.
set -euo pipefail
cd "$(dirname "$0")/../.."
REPO=$PWD
PY=$REPO/.venv/bin/python
WORK=${SLURM_TEST_DIR:-$(mktemp -d /tmp/v2f-slurm-test.XXXXXX)}
PORT=${SLURM_TEST_PORT:-16817}
STEPS=${SLURM_TEST_STEPS:-80}        # training batches of the job
EVERY=10                             # checkpoint every EVERY batches
NAME=slurm-test                      # run.name: the run folder is $WORK/runs/$NAME
RUN=$WORK/runs/$NAME
START=$(date +%s)
PIDS=()

say() { echo "test-slurm [$(( $(date +%s) - START ))s]: $*"; }

dump() {
    for f in "$WORK"/slurm/*.out "$WORK"/log/slurmctld.log "$WORK"/log/slurmd.log; do
        [ -f "$f" ] && { echo "----- tail of $f"; tail -n 40 "$f"; }
    done
    return 0
}

fail() {  # the logs, then the reason: a CI that keeps only the end of the output shows it
    dump >&2
    echo "test-slurm: work folder kept: $WORK" >&2
    echo "test-slurm: FAIL: $*" >&2
    exit 1
}

stop_daemons() {
    local status=$?
    trap - EXIT INT TERM
    if [ -n "${JOB:-}" ] && [ ${#PIDS[@]} -gt 0 ]; then  # no job steps left behind slurmd
        scancel "$JOB" 2>/dev/null || true
        for _ in $(seq 60); do
            squeue -h -j "$JOB" -o %t 2>/dev/null | grep -q . || break
            sleep 1
        done
    fi
    for (( i=${#PIDS[@]}-1; i>=0; i-- )); do  # slurmd, then slurmctld
        kill "${PIDS[i]}" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "${PIDS[i]}" 2>/dev/null || break; sleep 0.2; done
        kill -9 "${PIDS[i]}" 2>/dev/null || true
    done
    if [ -n "${MUNGE_PID:-}" ]; then
        kill "$(cat /run/munge/munged.pid 2>/dev/null || echo "$MUNGE_PID")" 2>/dev/null || true
    fi
    [ ${#PIDS[@]} -eq 0 ] || echo "test-slurm: daemons stopped"
    if [ "$status" -eq 0 ] && [ -z "${SLURM_TEST_DIR:-}" ]; then rm -rf "$WORK"; fi
    exit "$status"
}
trap stop_daemons EXIT
trap 'exit 130' INT TERM

# wait_for SECONDS WHAT COMMAND...: run COMMAND every second until it succeeds
wait_for() {
    local limit=$1 what=$2; shift 2
    local deadline=$(( $(date +%s) + limit ))
    until "$@" >/dev/null 2>&1; do
        [ "$(date +%s)" -lt "$deadline" ] || fail "timed out after ${limit}s waiting for $what"
        sleep 1
    done
}

[ "$(id -u)" -eq 0 ] || fail "needs root (installs packages, runs the SLURM daemons)"
[ -x "$PY" ] || fail "$PY missing: run 'make install' first"

# ---- packages --------------------------------------------------------------------------
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null \
        || ! command -v sbatch >/dev/null || ! command -v munged >/dev/null; then
    say "installing slurmctld slurmd slurm-client munge (apt)"
    export DEBIAN_FRONTEND=noninteractive
    timeout 600 apt-get update -qq || fail "apt-get update"
    timeout 600 apt-get install -y -qq --no-install-recommends \
        slurmctld slurmd slurm-client munge >/dev/null || fail "apt-get install"
fi
# ---- configuration ---------------------------------------------------------------------
mkdir -p "$WORK"/{etc,state,spool,log,slurm,runs} /run/munge
NODE=$(hostname -s)
CPUS=$(nproc)
[ "$CPUS" -ge 2 ] || fail "needs 2 CPUs for a 2-task job; this machine has $CPUS"
export SLURM_CONF=$WORK/etc/slurm.conf
cat > "$SLURM_CONF" <<EOF
# one node on localhost for make test-slurm (tests/slurm/run.sh); no cgroups, no accounting
ClusterName=v2ftest
SlurmctldHost=$NODE(127.0.0.1)
SlurmctldPort=$PORT
SlurmdPort=$(( PORT + 1 ))
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
ReturnToService=2
JobRequeue=1
KillWait=10
InactiveLimit=0
MinJobAge=600
StateSaveLocation=$WORK/state
SlurmdSpoolDir=$WORK/spool
SlurmctldPidFile=$WORK/slurmctld.pid
SlurmdPidFile=$WORK/slurmd.pid
SlurmctldLogFile=$WORK/log/slurmctld.log
SlurmdLogFile=$WORK/log/slurmd.log
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$CPUS State=UNKNOWN
PartitionName=test Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
VERSION=$(sinfo --version | awk '{print $2}')
say "SLURM $VERSION (Debian package $(dpkg-query -W -f '${Version}' slurmctld 2>/dev/null || echo '?'))"
case "$VERSION" in 22.05.*) ;; *) say "note: tested with 22.05 (Debian 12); this is $VERSION";; esac

# ---- daemons ---------------------------------------------------------------------------
chown munge:munge /run/munge
if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    say "munged already running"
else
    [ -f /etc/munge/munge.key ] || fail "/etc/munge/munge.key missing (the munge package makes it)"
    runuser -u munge -- munged --force --foreground >"$WORK"/log/munged.log 2>&1 &
    MUNGE_PID=$!
    wait_for 20 "munged" sh -c 'munge -n | unmunge'
    say "munged started"
fi
if ss -ltn 2>/dev/null | grep -q ":$PORT "; then
    fail "port $PORT is in use (another slurmctld?); set SLURM_TEST_PORT"
fi
slurmctld -D -i -f "$SLURM_CONF" >>"$WORK"/log/slurmctld.log 2>&1 &
PIDS+=($!)
wait_for 30 "slurmctld" scontrol ping
slurmd -D -f "$SLURM_CONF" >>"$WORK"/log/slurmd.log 2>&1 &
PIDS+=($!)
node_idle() { sinfo -h -n "$NODE" -o %t | grep -qx idle; }
wait_for 60 "node $NODE idle in sinfo" node_idle
say "slurmctld and slurmd up; $(sinfo -h -o '%P %D %t %c cpus')"

# ---- the job ---------------------------------------------------------------------------
say "tiny world"
"$REPO"/.venv/bin/voice2face synth --preset tiny --out "$WORK"/world >"$WORK"/log/synth.log 2>&1 \
    || { cat "$WORK"/log/synth.log; fail "voice2face synth"; }

# the voice embedder needs no pretrained nets; small batches, a checkpoint every EVERY
# batches; W&B offline as by default
"$PY" -m voice2face.slurm voice --nodes 1 --gpus 0 --tasks 2 --name "$NAME" \
    --job-name v2f-slurm-test --dir "$WORK"/slurm -- \
    data.root="$WORK"/world run.root="$WORK"/runs trainer.max_steps="$STEPS" \
    run.checkpoint_every=$EVERY trainer.val_check_interval=$(( STEPS / 2 )) \
    data.batch_size=8 data.num_workers=0 data.crop_seconds=0.5 trainer.log_every_n_steps=5 \
    profile=cpu >"$WORK"/log/submit.log 2>&1 || { cat "$WORK"/log/submit.log; fail "submit"; }
cat "$WORK"/log/submit.log
JOB=$(sed -n 's/.*submitted job \([0-9]*\).*/\1/p' "$WORK"/log/submit.log)
[ -n "$JOB" ] || fail "no job id in the submit output"
LOG=$WORK/slurm/$NAME-$JOB.out
job_field() { scontrol show job "$JOB" | tr ' ' '\n' | sed -n "s/^$1=//p" | head -n1; }

job_running() { [ "$(job_field JobState)" = RUNNING ]; }
wait_for 120 "job $JOB to run" job_running
say "job $JOB running"

# both ranks: Lightning prints one "Initializing distributed: GLOBAL_RANK: r" per process
both_ranks() { grep -q "GLOBAL_RANK: 0, MEMBER: 1/2" "$LOG" && grep -q "GLOBAL_RANK: 1, MEMBER: 2/2" "$LOG"; }
wait_for 240 "both ranks to start (GLOBAL_RANK 0 and 1 in $LOG)" both_ranks
say "both ranks started: $(grep -c 'GLOBAL_RANK' "$LOG") rank lines"

wait_for 300 "the first checkpoint ($RUN/checkpoints/last.ckpt)" test -f "$RUN"/checkpoints/last.ckpt
state=$(job_field JobState)
[ "$state" = RUNNING ] || fail "job $JOB is $state before the requeue signal: raise SLURM_TEST_STEPS"
say "first checkpoint written; sending SIGUSR1 to the job's steps (scancel --signal=USR1 $JOB)"
scancel --signal=USR1 "$JOB"
requeue_saved() { grep -q "voice2face: signal 10 received; saving $RUN/checkpoints/last.ckpt at step" "$LOG"; }
wait_for 120 "the requeue checkpoint (its line in $LOG)" requeue_saved
SAVED=$(sed -n "s|.*voice2face: signal 10 received; saving $RUN/checkpoints/last.ckpt at step \([0-9]*\).*|\1|p" "$LOG" | head -n1)
say "requeue checkpoint saved at step $SAVED of $STEPS"
[ "$SAVED" -lt "$STEPS" ] || fail "the signal came after training ended: raise SLURM_TEST_STEPS"
restarted() { [ "$(job_field Restarts)" -ge 1 ]; }
wait_for 300 "job $JOB to be requeued (Restarts >= 1)" restarted
say "job requeued: $(job_field JobState), reason $(job_field Reason), restarts $(job_field Restarts)"
# SLURM holds a requeued job for about two minutes (its EligibleTime); skip the wait, but
# only once the node is idle again and a second has passed: slurmd refuses to launch a job
# whose credential it revoked in the same second ("Job credential revoked", the job fails)
pending() { [ "$(job_field JobState)" = PENDING ]; }
wait_for 120 "job $JOB to be pending again" pending
wait_for 120 "node $NODE idle after the requeue" node_idle
sleep 2
say "job $JOB pending again (eligible $(job_field EligibleTime)); releasing it now"
scontrol update JobId="$JOB" StartTime=now || say "note: could not move its start time"
second_start() { grep -q "job $JOB start 2 " "$LOG"; }
wait_for 400 "the requeued job to start again" second_start
say "job $JOB started again"

job_done() { case "$(job_field JobState)" in COMPLETED|FAILED|CANCELLED|TIMEOUT|NODE_FAIL|OUT_OF_MEMORY) true;; *) false;; esac; }
wait_for 600 "job $JOB to finish" job_done
state=$(job_field JobState)
say "job $JOB $state, exit code $(job_field ExitCode), restarts $(job_field Restarts)"

# ---- checks ----------------------------------------------------------------------------
[ "$state" = COMPLETED ] || fail "job $JOB ended $state"
grep -q "voice2face: SLURM job $JOB requeued" "$LOG" || fail "no 'requeued' line in $LOG"
grep -q "Restoring states from the checkpoint path at $RUN/checkpoints/last.ckpt" "$LOG" \
    || fail "the requeued run did not restore $RUN/checkpoints/last.ckpt"
[ "$(grep -c 'GLOBAL_RANK: 1, MEMBER: 2/2' "$LOG")" -ge 2 ] || fail "rank 1 did not start again"
[ -f "$RUN"/checkpoints/final.ckpt ] || fail "no final checkpoint"
"$PY" - "$RUN" "$STEPS" "$SAVED" <<'EOF' || fail "resume checks"
import csv, sys
from pathlib import Path
import torch
run, steps, hpc = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
final = torch.load(run / "checkpoints/final.ckpt", map_location="cpu", weights_only=False)
assert final["global_step"] == steps, f"final step {final['global_step']}, expected {steps}"
# one CSV version per start: the second starts where the requeue checkpoint left off
versions = sorted((run / "csv").glob("version_*/metrics.csv"))
assert len(versions) == 2, f"expected 2 starts' metrics, found {versions}"
first = [int(r["step"]) for r in csv.DictReader(versions[1].open()) if r.get("step")]
assert first and min(first) >= hpc, f"the second start logged step {min(first)} < {hpc}: restarted from zero"
print(f"test-slurm: final step {final['global_step']}; second start logged steps {min(first)}..{max(first)} "
      f"after the requeue checkpoint at {hpc}")
EOF
say "PASS: 2 ranks, requeued on SIGUSR1 (restarts $(job_field Restarts)), resumed from step $SAVED, finished at $STEPS"
