#!/usr/bin/env bash
# Training throughput on a lent GPU machine (JAX backend; TensorFlow is not there).
# Needs .whl/ (keras 3.15.1, namex, optree for cp312) and .devdata/beauty (ptum tokenize of
# Beauty.txt, --format sequence-lines) carried beside the checkout. Writes $OUT/<config>/history.json.
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD KERAS_BACKEND=jax
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 -c "import jax; print('jax', jax.__version__, jax.devices())"
EPOCHS=${EPOCHS:-4}
for cfg in beauty user-embeddings; do
  start=$(date +%s)
  python3 -m ptum.cli pretrain --data .devdata/beauty --output /tmp/m-$cfg --config configs/$cfg.yaml \
    --set train.epochs=$EPOCHS --set train.patience=100 2>&1 | grep -E "epoch|error|Error|written" | tail -12
  echo "$cfg wall $(( $(date +%s) - start ))s"
  mkdir -p "$OUT/$cfg" && cp /tmp/m-$cfg/history.json /tmp/m-$cfg/metadata.json "$OUT/$cfg/" 2>/dev/null
done
