#!/usr/bin/env bash
# The CUDA paths that CPU runs never take, on tiny recipes, in at most about five minutes on one GPU; then one JSON
# line: which checks passed, and the GDAS step time against the child's in both spaces.
#   bash benchmarks/gpu_check.sh            # from the repository root, after pip install -e ".[dev]"
# Checks: fp16 autocast with its gradient scaler (search and training), bf16, channels-last, GDAS's fused
# straight-through paths under cuDNN batch norm (a GDAS search on the GPU), run.compile in training, the data
# resident on the GPU (every search and training here keeps its batches there), export of a GPU-trained network,
# and torchrun with NCCL on every GPU present (2 or more).
set -uo pipefail
cd "$(dirname "$0")/.."
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
declare -A result
tiny_search=(--config configs/quickstart.yaml search.epochs=1 data.synthetic.train=256 data.batch_size=32 model.C=8
             model.layers=5 run.device=cuda run.tensorboard=false)
tiny_nb201=(--config configs/search/gdas-nb201-cifar10.yaml data.name=synthetic data.root=x data.synthetic.train=256
            data.batch_size=32 model.C=8 model.layers=1 search.epochs=1 run.device=cuda run.tensorboard=false)
tiny_train=(--config configs/eval/quick.yaml --genotype GDAS_V1 train.epochs=1 data.synthetic.train=256 model.C=8
            model.layers=5 run.device=cuda run.tensorboard=false)
check() {  # name, command...
  local name=$1; shift
  if timeout 120 "$@" > "$out/$name.log" 2>&1; then result[$name]=pass; else result[$name]="fail: $(tail -1 "$out/$name.log" | tr -d '"\\' | cut -c1-200)"; fi
}
check search_fp16 python -m nas search "${tiny_search[@]}" run.amp=fp16 run.dir="$out/s16"
check search_bf16_channels_last python -m nas search "${tiny_search[@]}" run.amp=bf16 run.channels_last=true run.dir="$out/sbf"
check search_nb201_gdas_fused python -m nas search "${tiny_nb201[@]}" run.dir="$out/snb"
check search_budget_latency python -m nas search "${tiny_nb201[@]}" search.budget.metric=latency search.budget.target=1000 run.dir="$out/slat"
check train_fp16_compile python -m nas evaluate "${tiny_train[@]}" run.amp=fp16 run.compile=true run.dir="$out/t16"
check export_gpu_trained python -m nas export "$out/t16" --format exported
gpus=$(python -c "import torch; print(torch.cuda.device_count())")
if [ "$gpus" -ge 2 ]; then
  check torchrun_nccl python -m torch.distributed.run --nproc_per_node="$gpus" search.py "${tiny_search[@]}" run.dir="$out/ddp"
else
  result[torchrun_nccl]="skipped: $gpus GPU"
fi
step() {  # space -> the JSON of benchmarks/search_step.py on the GPU (short)
  timeout 150 python benchmarks/search_step.py --space "$1" --device cuda --steps 5 --rounds 1 --formats nhwc 2>/dev/null | tail -1
}
darts=$(step darts); nb201=$(step nb201)
python - "$darts" "$nb201" <<'PY' "${!result[@]}" -- "${result[@]}"
import json, sys
args = sys.argv[1:]
darts, nb201, rest = args[0], args[1], args[2:]
split = rest.index("--")
names, values = rest[:split], rest[split + 1:]
def ratio(text):
    try:
        return json.loads(text).get("gdas_over_child")
    except ValueError:
        return None
import torch
print(json.dumps({"device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
                  "torch": torch.__version__, "checks": dict(sorted(zip(names, values))),
                  "gdas_over_child": {"darts": ratio(darts), "nb201": ratio(nb201)}}))
PY
