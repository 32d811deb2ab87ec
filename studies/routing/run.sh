#!/usr/bin/env bash
# The routing study from one command: every trial of scenarios/routing-study.yaml (resumable:
# rerun to finish an interrupted run), then its results, tables, plots and the comparison
# with the equal-parameter static U-Net copied into this folder, with the command and the
# revision that produced them (provenance.txt).
#
#   studies/routing/run.sh                 # ~1 hour on 2 cores
#   studies/routing/run.sh --local         # extra arguments go to `fedll run`
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
run_dir=${RUN_DIR:-$root/runs/routing-study}
fedll=${FEDLL:-$root/.venv/bin/fedll}
python=$(dirname "$fedll")/python
if [[ ! -x "$fedll" ]]; then
  echo "run.sh: $fedll not found: install fedll first (README, Quick start) or set FEDLL" >&2
  exit 2
fi
cd "$root"

revision() {
  echo "$(git rev-parse HEAD)$(git diff --quiet HEAD -- fedll strategies sites scenarios || echo '+uncommitted')"
}
mkdir -p "$run_dir"
# which revision ran which invocation: a resumed run's trials may come from several
echo "$(date -u +%Y-%m-%dT%H:%M:%SZ) started at $(revision)" >> "$run_dir/invocations.txt"
start=$(date +%s)
"$fedll" run scenarios/routing-study.yaml --out "$run_dir" "$@"
seconds=$(($(date +%s) - start))
echo "$(date -u +%Y-%m-%dT%H:%M:%SZ) finished in ${seconds} s" >> "$run_dir/invocations.txt"

cp "$run_dir/scenario.yaml" "$run_dir/results.csv" "$here/"
gzip -9 -n -c "$run_dir/attention.csv" > "$here/attention.csv.gz"
rm -rf "$here/tables" "$here/plots"
mkdir -p "$here/tables" "$here/plots"
# the forgetting tables; attention_tv.csv (2 MB) is rebuilt from attention.csv.gz by
# `fedll report studies/routing`, as are the 42 per-configuration attention plots, of which
# the stream with small batches is kept here (one per Dy-CNN)
cp "$run_dir"/tables/forgetting.* "$run_dir/tables/trials.csv" "$here/tables/"
cp "$run_dir"/plots/curves_* "$run_dir"/plots/dice_matrix_* "$here/plots/"
cp "$run_dir"/plots/attention_*_alternating-rounds_2_fedavg_1_finetune.png "$here/plots/"
"$python" "$here/analyse.py" "$here"

{
  echo "command:  studies/routing/run.sh $*"
  echo "runs:     fedll run scenarios/routing-study.yaml --out $(realpath --relative-to="$root" "$run_dir") $*"
  echo "revision: $(revision) (this copy and analysis)"
  echo "date:     $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "machine:  $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
  echo "versions: $("$python" -c 'import importlib.metadata as m; print(", ".join(f"{p} {m.version(p)}" for p in ("fedll", "torch", "flwr", "ray")))')"
  echo "wall:     ${seconds} s for this invocation (trials finished by an earlier one are kept, not rerun)"
  echo "invocations of the run (the revision that ran its trials):"
  sed 's/^/  /' "$run_dir/invocations.txt"
} > "$here/provenance.txt"
echo "wrote $here"
