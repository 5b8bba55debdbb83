#!/bin/bash
# Separate a catalogue with a Slurm job array: task I of N separates share I of N of the songs
# (stemsplit batch --shard), each song exactly once across the array, resumable. docs/scale-out.md.
#
#   stemsplit models download ts-musdb18hq                  # once, into a cache every node sees
#   sbatch examples/slurm-array.sh /shared/music /shared/stems --model ts-musdb18hq
#
# Arguments: the music folder, the stems folder (both on a file system every node mounts), then any
# other `stemsplit batch` options. Resize the array freely (--array=0-15): the claims under
# STEMS/.stemsplit/ keep overlapping shares from separating a song twice.
#SBATCH --job-name=stemsplit
#SBATCH --array=0-7
#SBATCH --gres=gpu:1
#SBATCH --cpus-per-task=8
#SBATCH --mem=32G
#SBATCH --time=12:00:00
#SBATCH --requeue
#SBATCH --output=stemsplit-%A_%a.log
set -euo pipefail

music=${1:?usage: sbatch slurm-array.sh MUSIC STEMS [stemsplit batch options]}
stems=${2:?usage: sbatch slurm-array.sh MUSIC STEMS [stemsplit batch options]}
shift 2
# One report per task: appends from several hosts to one file on NFS are not atomic.
reports=${STEMSPLIT_REPORTS:-stemsplit-reports}
# Nodes without internet: export STEMSPLIT_CACHE=/shared/cache STEMSPLIT_OFFLINE=1 before sbatch.

# Slurm numbers tasks from --array's first index (0 here); shares are counted from 1.
share=$((SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN + 1))
stemsplit batch "$music" -o "$stems" \
    --shard "$share/$SLURM_ARRAY_TASK_COUNT" \
    --report "$reports/${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}.jsonl" \
    "$@"
