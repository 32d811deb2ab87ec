#!/usr/bin/env bash
# The paired routing study from one command, resumable: every trial of scenario.yaml runs
# into run/ (committed as it grows: its sealed trial files are what a rerun on another clone
# resumes from; no models are kept), then fedll's report and its paired comparison with the
# equal-parameter static U-Net (`fedll report --compare`), then analyse.py's verdict tables
# and plots, with the command and the revisions that produced them (provenance.txt).
#
#   studies/routing-paired/run.sh                       # all 10 seeds (hours on 2 cores)
#   studies/routing-paired/run.sh --set 'seeds=[0,1,2,3,4]'   # a first stage; the run grows
#
# Extra arguments go to `fedll run`.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
# RUN_DIR, SCENARIO and OUT (where the verdict goes) default to this folder's; the test of
# this script (tests/studies) points them elsewhere
run_dir=${RUN_DIR:-$here/run}
out=${OUT:-$here}
fedll=${FEDLL:-$root/.venv/bin/fedll}
python=$(dirname "$fedll")/python
if [[ ! -x "$fedll" ]]; then
  echo "run.sh: $fedll not found: install fedll first (README, Quick start) or set FEDLL" >&2
  exit 2
fi
cd "$root"

revision() {
  echo "$(git rev-parse HEAD)$(git diff --quiet HEAD -- fedll strategies sites studies/routing-paired/scenario.yaml || echo '+uncommitted')"
}
mkdir -p "$run_dir"
# which revision ran which invocation: a resumed run's trials may come from several
echo "$(date -u +%Y-%m-%dT%H:%M:%SZ) started at $(revision): $*" >> "$run_dir/invocations.txt"
start=$(date +%s)
"$fedll" run "${SCENARIO:-$here/scenario.yaml}" --out "$run_dir" "$@"
seconds=$(($(date +%s) - start))
echo "$(date -u +%Y-%m-%dT%H:%M:%SZ) finished in ${seconds} s" >> "$run_dir/invocations.txt"

"$fedll" report "$run_dir" --compare static-equal-params
mkdir -p "$out"
"$python" "$here/analyse.py" "$run_dir" "$out"

{
  echo "command:  studies/routing-paired/run.sh $*"
  echo "revision: $(revision) (this analysis)"
  echo "date:     $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "machine:  $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
  echo "versions: $("$python" -c 'import importlib.metadata as m; print(", ".join(f"{p} {m.version(p)}" for p in ("fedll", "torch", "flwr", "ray")))')"
  echo "wall:     ${seconds} s for this invocation (trials finished by an earlier one are kept, not rerun)"
  echo "invocations of the run (the revision that ran its trials):"
  sed 's/^/  /' "$run_dir/invocations.txt"
} > "$out/provenance.txt"
echo "wrote $out"
