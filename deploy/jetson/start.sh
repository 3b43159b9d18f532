#!/usr/bin/env bash
# efficientnet-lite0: start script written by edgecnn 0.1.0 (`edgecnn deploy bundle`).
#
# First start on a device builds a TensorRT engine for THIS device (engines do not travel between TensorRT
# versions or GPUs) into $EDGECNN_ENGINE_DIR, keyed by model hash + TensorRT version + precision + board, then runs
# `edgecnn live`. Without TensorRT (or if the build fails) it runs the ONNX model on ONNX Runtime instead.
#
#   ./start.sh                      run with the bundled source and sink
#   ./start.sh --prepare            only build/choose the model; prints "engine PATH" or "onnx PATH"
#   ./start.sh --max-frames 100     any further options go to `edgecnn live`
#
# Environment: EDGECNN_SOURCE overrides the bundled source (put camera credentials there, e.g. in
# /etc/default/efficientnet-lite0, not in the bundle); EDGECNN_BACKEND=onnxrt skips TensorRT;
# EDGECNN_PYTHON picks the interpreter; EDGECNN_ENGINE_DIR moves the engine cache.
set -euo pipefail

APP_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ENGINE_DIR="${EDGECNN_ENGINE_DIR:-$APP_DIR/engines}"
if [ -n "${EDGECNN_PYTHON:-}" ]; then
  PY="$EDGECNN_PYTHON"
elif [ -x "$APP_DIR/venv/bin/python" ]; then
  PY="$APP_DIR/venv/bin/python"
else
  PY="python3"
fi
# The edgecnn that made the bundle travels with it (lib/), so device and workstation agree on the contract.
export PYTHONPATH="$APP_DIR/lib${PYTHONPATH:+:$PYTHONPATH}"

BUNDLED_SOURCE=csi://0
SOURCE="${EDGECNN_SOURCE:-$BUNDLED_SOURCE}"
SINK_ARGS=(--headless --json)
PRECISION=fp16
MODEL_ID='<sha256 of the ONNX, 12 hex>'
BUILD_ONNX=model.onnx
RUN_ONNX=model.onnx
BUILD_ARGS=(--precision fp16 --device orin-nano)

log() { echo "[efficientnet-lite0] $*" >&2; }

# Which board/GPU this is (an SD card moved to another Jetson must not reuse the old board's engine).
hw_key() {
  { tr -d '\0' 2>/dev/null </proc/device-tree/model || nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null \
      || echo unknown; } | cksum | cut -d' ' -f1
}

PREPARE_ONLY=0
if [ "${1:-}" = "--prepare" ]; then
  PREPARE_ONLY=1
  shift
fi

MODEL=""
if [ "${EDGECNN_BACKEND:-auto}" != "onnxrt" ]; then
  TRT_VERSION="$("$PY" -c 'import tensorrt; print(tensorrt.__version__)' 2>/dev/null || true)"
  if [ -n "$TRT_VERSION" ]; then
    ENGINE="$ENGINE_DIR/$MODEL_ID-trt$TRT_VERSION-$PRECISION-hw$(hw_key).engine"
    if [ -s "$ENGINE" ]; then
      MODEL="$ENGINE"
    else
      log "building the TensorRT $TRT_VERSION engine for this device ($PRECISION); first start only, takes minutes"
      mkdir -p "$ENGINE_DIR"
      if "$PY" -m edgecnn build-engine "$APP_DIR/$BUILD_ONNX" --out "$ENGINE" "${BUILD_ARGS[@]}"; then
        MODEL="$ENGINE"
      else
        log "engine build failed: falling back to ONNX Runtime (run \`edgecnn doctor\` to see what is missing)"
      fi
    fi
  else
    log "TensorRT not found: running on ONNX Runtime. On Jetson it ships with JetPack (sudo apt install nvidia-jetpack)."
  fi
fi
if [ -z "$MODEL" ]; then
  MODEL="$APP_DIR/$RUN_ONNX"
  KIND=onnx
else
  KIND=engine
fi

if [ "$PREPARE_ONLY" = 1 ]; then
  echo "$KIND $MODEL"
  exit 0
fi
# The source goes through the environment, not the command line: `ps` shows every process's arguments to every
# user, and a camera URL may hold a password (a process's environment is readable by its owner and root only).
export EDGECNN_SOURCE="$SOURCE"
exec "$PY" -m edgecnn live "$MODEL" "${SINK_ARGS[@]}" "$@"
