"""Run the live classification loop from Python: any source `edgecnn live` takes, results to your own function.

    python examples/live_from_python.py efficientnet-lite0 --source 0            # USB camera
    python examples/live_from_python.py model.onnx --source clip.mp4 --max-frames 50
    python examples/live_from_python.py model.engine --source csi://0            # Jetson CSI camera + TensorRT

The loop (threaded capture, newest-frame-wins, preprocessing from the model's contract, latency statistics) is
`edgecnn.camera.loop.run_live`; here a CallbackSink hands each result to `on_result`.
"""

from __future__ import annotations

import argparse


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", help=".onnx, .engine, .pt or a pretrained name")
    ap.add_argument(
        "--source", default="0", help="0, /dev/video0, csi://0, rtsp://..., a video file or an image folder"
    )
    ap.add_argument("--max-frames", type=int, default=None)
    ap.add_argument("--threshold", type=float, default=0.0, help="below this top-1 probability: 'unknown'")
    args = ap.parse_args()

    from edgecnn.camera.capture import ThreadedCapture
    from edgecnn.camera.loop import LiveOptions, run_live
    from edgecnn.camera.sinks import CallbackSink
    from edgecnn.camera.sources import parse_source
    from edgecnn.zoo import open_model

    def on_result(result) -> bool:
        print(f"frame {result.index}: {result.label} ({result.score:.0%})", flush=True)
        return True  # return False to stop the loop

    with open_model(args.model) as runner:  # a file or a registered pretrained name
        capture = ThreadedCapture(parse_source(args.source), pace=False).start()
        summary = run_live(
            runner,
            capture,
            LiveOptions(max_frames=args.max_frames, threshold=args.threshold),
            [CallbackSink(on_result)],
        )
    inference = summary.stages.get("inference", {})
    print(
        f"{summary.frames} frames at {summary.fps:.1f} FPS, inference p50 {inference.get('p50', float('nan')):.2f} ms "
        f"({summary.end_reason})"
    )


if __name__ == "__main__":
    main()
