#!/usr/bin/env bash
# Run the efficientnet-lite0 container on the Jetson: NVIDIA runtime (GPU, TensorRT), camera devices, engine cache volume.
# Extra arguments go to start.sh (and from there to `edgecnn live`).
set -euo pipefail
exec docker run --rm --runtime nvidia --network host \
  -v /tmp/argus_socket:/tmp/argus_socket \
  -v efficientnet-lite0-engines:/var/lib/edgecnn \
  -e EDGECNN_SOURCE \
  efficientnet-lite0 "$@"
