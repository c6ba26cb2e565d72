#!/usr/bin/env bash
# Beauty next-item pre-training on a lent GPU machine, JAX backend, bf16 vs float32
# (issue 14: throughput and time to valid NDCG@10 0.0500). TensorFlow is not on that machine.
# Needs, carried beside the checkout: .whl/ (keras 3.15.1, namex, optree for cp312) and
# .devdata/beauty (`ptum tokenize --format sequence-lines` of Beauty.txt).
# Writes $OUT/<precision>/{history,metadata,test}.json; benchmarks/gpu_report.py turns them into
# benchmarks/results/gpu.{json,md}.
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD KERAS_BACKEND=jax PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c "import jax, keras; print('jax', jax.__version__, 'keras', keras.__version__, jax.devices())" | tee -a "$OUT/gpu.txt"
SECONDS_CAP=${SECONDS_CAP:-150}
for prec in ${PRECISIONS:-bf16 none}; do
  start=$(date +%s)
  timeout $((SECONDS_CAP + 90)) python3 -m ptum.cli pretrain --data .devdata/beauty --output /tmp/m-$prec \
    --config configs/beauty.yaml --set train.mixed_precision=$prec --set train.max_train_seconds=$SECONDS_CAP 2>&1 \
    | grep -E "^epoch|written|rror" | tail -40
  end=$(date +%s)
  mkdir -p "$OUT/$prec"
  echo "{\"pretrain_wall_seconds\": $((end - start))}" > "$OUT/$prec/wall.json"
  cp /tmp/m-$prec/history.json /tmp/m-$prec/metadata.json "$OUT/$prec/" 2>/dev/null
  timeout 120 python3 -m ptum.cli evaluate --model /tmp/m-$prec --data .devdata/beauty --split test \
    > "$OUT/$prec/test.json" 2>/dev/null; tail -c 400 "$OUT/$prec/test.json"
done
