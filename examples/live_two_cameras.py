"""Two cameras (or streams, or files) through one model from Python: batched inference, a recording per camera, a
browser view, and your own function for every result. What `edgecnn live -s A -s B --record out-{i}.mp4 --serve`
does, as a library.

    python examples/live_two_cameras.py efficientnet-lite0 0 1                         # two USB cameras
    python examples/live_two_cameras.py model.onnx rtsp://cam1/stream rtsp://cam2/stream --serve 127.0.0.1:8080
    python examples/live_two_cameras.py model.onnx a.mp4 b.mp4 --record out-{i}.mp4 --max-frames 100

Ctrl-C stops it cleanly: the recordings are finished and the server closed before it exits.
"""

from __future__ import annotations

import argparse


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", help=".onnx, .engine, .pt or a pretrained name")
    ap.add_argument("sources", nargs=2, help="two sources: 0, /dev/video0, csi://0, rtsp://..., a video file")
    ap.add_argument("--record", help="one video per camera; {i} becomes 0 or 1 (e.g. out-{i}.mp4)")
    ap.add_argument("--serve", help="HOST:PORT for the browser view (e.g. 127.0.0.1:8080)")
    ap.add_argument("--max-frames", type=int, default=None, help="stop after this many frames (both together)")
    args = ap.parse_args()

    from edgecnn.camera.loop import LiveOptions, run_live
    from edgecnn.camera.session import StopOnSignals, check_distinct, record_paths, recording_timeline, start_captures
    from edgecnn.camera.sinks import CallbackSink, PerSourceSink, VideoRecorder
    from edgecnn.camera.sources import parse_source
    from edgecnn.runtime import load

    specs = [parse_source(s) for s in args.sources]
    check_distinct(specs)  # the same camera twice cannot be opened

    def on_result(result) -> bool:
        print(f"[{result.source}] frame {result.index}: {result.label} ({result.score:.0%}, batch {result.batch})")
        return True  # return False to stop the loop

    sinks = [CallbackSink(on_result)]
    recorders = []
    if args.record:
        recorders = [VideoRecorder(path, fps=30.0) for path in record_paths(args.record, len(specs))]
        sinks.append(PerSourceSink(recorders))
    server = None
    if args.serve:
        from edgecnn.camera.serve import LiveServer

        server = LiveServer(args.serve, [spec.display for spec in specs])  # binds now: a busy port fails here
        sinks.append(server)

    with load(args.model) as runner:
        captures = start_captures(specs, pace=True)  # a camera that is down is retried; the other runs meanwhile
        for recorder, capture in zip(recorders, captures):
            recorder.fps, recorder.timeline = recording_timeline(capture, None)
        if server is not None:
            server.start()
            print(f"open {server.url} in a browser")
        with StopOnSignals(protect=lambda: bool(recorders)) as signals:
            summary = run_live(runner, captures, LiveOptions(max_frames=args.max_frames), sinks, stop=signals.stop)
    for s in summary.sources:
        print(f"[{s['index']}] {s['source']}: {s['frames']} frames at {s['fps']:.1f} FPS, {s['dropped']} dropped")
    print(f"{summary.frames} frames in batches of {summary.batch['mean']:.2f} on average ({summary.end_reason})")


if __name__ == "__main__":
    main()
