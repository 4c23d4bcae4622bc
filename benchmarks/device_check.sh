#!/usr/bin/env bash
# The memory penalties' cost on the device at hand, jax and torch side by side.
#
# Runs `memory_step_cost.py --quick` and `kfac_cost.py --quick` on each
# backend, every run under a time limit, keeps each run's whole output
# (backend and device first), and ends with the ratios in one table, one
# column per backend. The ratios of one column are measured side by side in
# one process; compare columns only as measured on the same machine.
#
# Run from anywhere: `bash benchmarks/device_check.sh`.
# Environment: LIMIT (seconds per run, default 150), BACKENDS (default
# "jax torch"), OUT (where the logs go, default a temporary folder).
set -u
cd "$(dirname "$0")/.."
limit=${LIMIT:-150}
backends=${BACKENDS:-"jax torch"}
out=${OUT:-$(mktemp -d)}
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

# `label<TAB>ratio` for every ratio a benchmark prints; kfac_cost's step
# ratios are labelled with the batch size they were measured at.
ratios() {
  awk '
    /^# Keras backend/ { next }
    /^step at batch/ { batch = " (batch " $4 ")"; sub(/:/, "", batch) }
    /^Dense / { layer = " (" $2 " -> " $4 ")"; sub(/:/, "", layer) }
    / x epoch/ {
      split($0, part, ":"); n = split($0, word, " ")
      for (i = 1; i <= n; i++) if (word[i] == "x") value = word[i - 1]
      printf "%s / epoch\t%s\n", part[1], value; next
    }
    / \/ / && /: [0-9]/ {
      label = $0; sub(/: [0-9].*/, "", label); sub(/^ +/, "", label)
      value = $0; sub(/.*: /, "", value); sub(/ .*/, "", value)
      if (label ~ /step \/ diagonal step/ && batch != "") label = label batch
      if (label ~ /memory \/ diagonal memory/) label = label layer
      printf "%s\t%s\n", label, value
    }
  ' "$@"
}

for backend in $backends; do
  for script in memory_step_cost kfac_cost; do
    log="$out/$backend.$script.log"
    echo "=== KERAS_BACKEND=$backend python benchmarks/$script.py --quick" \
      "(limit ${limit} s)"
    KERAS_BACKEND=$backend timeout "$limit" \
      python "benchmarks/$script.py" --quick >"$log" 2>&1
    status=$?
    grep -v -i "warning\|^ *warnings.warn\|^ *attach(" "$log"
    if [ "$status" -ne 0 ]; then
      echo "($backend $script.py stopped with status $status;" \
        "124 is the time limit)"
    fi
  done
  cat "$out/$backend.memory_step_cost.log" "$out/$backend.kfac_cost.log" \
    | ratios >"$out/$backend.ratios"
done

echo
echo "=== ratios (logs in $out)"
for backend in $backends; do
  printf "%s: %s\n" "$backend" \
    "$(grep -h "^# Keras backend" "$out/$backend".*.log | head -1)"
done
python - "$out" $backends <<'PY'
import sys

out, backends = sys.argv[1], sys.argv[2:]
columns, labels = {}, []
for backend in backends:
    columns[backend] = {}
    with open(f"{out}/{backend}.ratios") as f:
        for line in f:
            label, value = line.rstrip("\n").split("\t")
            columns[backend][label] = value
            if label not in labels:
                labels.append(label)
width = max([len(label) for label in labels] + [5])
print(f"{'ratio':<{width}}  " + "  ".join(f"{b:>8}" for b in backends))
for label in labels:
    cells = "  ".join(f"{columns[b].get(label, '-'):>8}" for b in backends)
    print(f"{label:<{width}}  {cells}")
PY
