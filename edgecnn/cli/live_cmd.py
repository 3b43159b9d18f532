"""`edgecnn live`: real-time classification from a camera, stream, video file or image folder."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from edgecnn.cli.common import (
    add_command,
    backend_option,
    console,
    discard_stdout,
    force_option,
    json_option,
    threads_option,
    warn,
)

SOURCE_HELP = (
    "Camera index (0), /dev/videoN, csi://N[?capture=WxH&flip=M], gst:<pipeline>, rtsp://..., http(s)://... "
    "(MJPEG), a video file or an image folder."
)


def register(app: typer.Typer) -> None:
    add_command(
        app,
        "live",
        live,
        help="Classify frames from cameras or streams in real time (window, JSON, recording, browser, network video).",
    )


def live(
    model: str = typer.Argument("efficientnet-lite0", help="Model file (.onnx, .engine, .pt) or pretrained name."),
    source: Optional[List[str]] = typer.Option(
        None,
        "--source",
        "-s",
        envvar="EDGECNN_SOURCE",
        help=SOURCE_HELP + " Repeat for several sources: their frames run through the model as one batch.",
    ),
    width: Optional[int] = typer.Option(None, "--width", help="Capture width (cameras; output width for csi://)."),
    height: Optional[int] = typer.Option(None, "--height", help="Capture height (cameras; output height for csi://)."),
    fps: Optional[float] = typer.Option(
        None,
        "--fps",
        help="Capture rate of a camera (0.01-1000); for an image folder, the pace. "
        "A video file keeps its own rate (--fps is ignored, with a warning).",
    ),
    headless: bool = typer.Option(False, "--headless", help="No window (servers, SSH, services)."),
    json_out: bool = json_option("One JSON line per frame on stdout, then a summary line."),
    every: int = typer.Option(
        1,
        "--every",
        min=1,
        help="With --json, write every N-th frame (of each source) only (ignored, with a warning, without --json).",
    ),
    record: Optional[Path] = typer.Option(
        None,
        "--record",
        help="Write the annotated video here (.mp4/.avi/.mkv); an existing file needs --force. Several sources: "
        "one file each, {i} in the name is the source's index (out-{i}.mp4).",
    ),
    force: bool = force_option("Replace an existing --record file (only once the new recording is complete)."),
    serve: Optional[str] = typer.Option(
        None,
        "--serve",
        help="Show the run in a browser: HOST:PORT (or PORT: 127.0.0.1 only; 0.0.0.0:PORT for every interface). "
        "Serves / (page), /stream/<i>.mjpg, /stats.json, /metrics.",
    ),
    serve_token: Optional[str] = typer.Option(
        None,
        "--serve-token",
        envvar="EDGECNN_SERVE_TOKEN",
        help="Require this token for --serve (header 'Authorization: Bearer TOKEN' or ?token=TOKEN).",
    ),
    output: Optional[List[str]] = typer.Option(
        None,
        "--output",
        help="Stream the annotated video: udp://HOST:PORT (MPEG-TS), rtp://HOST:PORT (H.264), rtsp://HOST:PORT/PATH "
        "(serves RTSP). One per --source, in order. `edgecnn doctor` says which this machine can do.",
    ),
    top_k: int = typer.Option(3, "--top-k", min=1, help="Classes shown per frame."),
    threshold: float = typer.Option(
        0.0, "--threshold", min=0.0, max=1.0, help="Below this top-1 probability show 'unknown'."
    ),
    smoothing: float = typer.Option(
        0.0, "--smoothing", min=0.0, max=0.99, help="EMA factor over probabilities (0 = off, 0.8 = steady)."
    ),
    max_frames: Optional[int] = typer.Option(
        None, "--max-frames", min=1, help="Stop after N processed frames (all sources together)."
    ),
    loop: bool = typer.Option(False, "--loop", help="Restart a video file or folder at its end."),
    no_pace: bool = typer.Option(
        False, "--no-pace", help="Process every frame of a file as fast as possible (no drops)."
    ),
    reconnect_attempts: int = typer.Option(
        5, "--reconnect-attempts", min=0, help="Reopen a lost camera/stream this many times."
    ),
    backend: Optional[str] = backend_option(),
    threads: Optional[int] = threads_option(
        "ONNX Runtime CPU threads; cores-1 leaves a core for capture (most efficient pipeline)."
    ),
):
    """Run the live loop until the sources end, --max-frames, q/Esc, or Ctrl-C / SIGTERM (which still finalise the
    recordings, close the server and print the summary, then exit 130 after Ctrl-C, 0 after SIGTERM: a service
    stopped; with --record a second Ctrl-C is ignored until the videos are finished)."""
    import json
    import signal
    import sys

    from rich.markup import escape

    from edgecnn.camera.capture import ReconnectPolicy
    from edgecnn.camera.loop import LiveOptions, run_live
    from edgecnn.camera.session import StopOnSignals, check_distinct, record_paths, recording_timeline, start_captures
    from edgecnn.camera.sinks import CallbackSink, JsonLinesSink, PerSourceSink, VideoRecorder, WindowSink
    from edgecnn.camera.sources import parse_source
    from edgecnn.errors import EdgeCNNError, SourceError, UserInputError
    from edgecnn.jsonout import strict_json
    from edgecnn.zoo import open_model as load  # a file or a registered pretrained name

    specs = [parse_source(s, width=width, height=height, fps=fps) for s in (source or ["0"])]
    check_distinct(specs)
    several = len(specs) > 1
    for spec in specs:
        _warn_fps_ignored(spec, fps)
    if every != 1 and not json_out:
        warn(f"--every {every} only thins the --json lines: without --json it is ignored")
    if serve_token is not None and serve is None:
        warn("--serve-token without --serve does nothing")
    if output and len(output) != len(specs):
        raise UserInputError(
            f"--output: give one per --source ({len(specs)} source(s), {len(output)} output(s)), in the same order"
        )
    options = LiveOptions(top_k=top_k, threshold=threshold, smoothing=smoothing, max_frames=max_frames)
    sinks = []
    if not headless:  # fails fast (no display) before loading anything
        sinks.append(WindowSink(f"edgecnn live: {specs[0].display}" if not several else "edgecnn live", several))
    recorders = []
    if record is not None:  # checked now (folder, under a file, unwritable, existing without --force), not at frame 1
        inputs = [str(spec.target) for spec in specs if spec.kind == "file"]
        paths = record_paths(record, len(specs))
        if len(set(paths)) != len(paths):
            raise UserInputError(f"--record {record}: the sources' file names must differ")
        recorders = [VideoRecorder(p, fps=fps or 30.0, inputs=inputs + [model], overwrite=force) for p in paths]
        sinks.append(PerSourceSink(recorders))
    opened = []  # sinks holding a socket or thread: closed here if the run never starts
    try:
        server = None
        if serve is not None:  # binds now: a port in use is said before the model loads
            from edgecnn.camera.serve import LiveServer

            server = LiveServer(serve, [spec.display for spec in specs], token=serve_token)
            opened.append(server)
            sinks.append(server)
        outputs = []
        if output:
            from edgecnn.camera.netout import NetworkOutput

            for i, url in enumerate(output):
                out = NetworkOutput(url, fps=fps or 30.0, source=i)
                opened.append(out)
                outputs.append(out)
            sinks.extend(outputs)
        json_sink = None
        if json_out:
            json_sink = JsonLinesSink(sys.stdout, every=every)
            sinks.append(json_sink)
        elif headless and server is None:  # nothing else shows progress: a status line on stderr every few seconds
            sinks.append(CallbackSink(_status_printer(console, several)))

        def on_event(index: int, kind: str, message: str) -> None:
            prefix = f"[{index}] " if several else ""
            if kind in ("lost", "retry", "gave_up", "unreachable"):
                warn(prefix + message)
            else:
                console.print(escape(prefix + message), style="cyan")

        load_options = {"threads": threads} if threads else {}
        runner = load(model, backend=backend, **load_options)
        signals = StopOnSignals(
            protect=lambda: bool(recorders), on_note=_note_on_stderr, ignore_after=True
        )  # the process ends right after: a late Ctrl-C must not turn a finished run into exit 130
        try:
            captures = start_captures(
                specs,
                pace=not no_pace,
                loop=loop,
                reconnect=ReconnectPolicy(attempts=reconnect_attempts),
                on_event=on_event,
            )
            for recorder, capture in zip(recorders, captures):
                recorder.fps, recorder.timeline = recording_timeline(capture, fps)
            for out, capture in zip(outputs, captures):
                out.fps = capture.fps or out.fps
            if server is not None:
                server.start()
            _print_start(runner, specs, captures, headless)
            if server is not None:
                console.print(
                    f"serving {server.url}" + (" (token required)" if serve_token else ""), style="cyan", markup=False
                )
            opened = []  # from here on run_live closes every sink
            sink_error = None
            with signals:
                try:
                    summary = run_live(runner, captures, options, sinks, stop=signals.stop)
                except EdgeCNNError as exc:  # a recording that could not be completed: still report the rest
                    summary = getattr(exc, "summary", None)
                    if summary is None:
                        raise
                    sink_error = exc
        finally:
            runner.close()
    finally:
        for sink in opened:
            sink.close()

    recorded = [_recording_dict(r.path, r) for r in recorders if r.frames]
    skipped = summary.skipped_unreadable
    unreadable = f"{skipped} unreadable image file(s) skipped" if skipped else ""
    interrupted = signals.signalled == signal.SIGINT and sink_error is None  # Ctrl-C: exit 130 whatever else
    failure = sink_error
    if interrupted:
        pass
    elif failure is None and summary.lost:
        if not several:
            failure = SourceError(summary.error or f"Lost {specs[0].display}")
        else:
            names = "; ".join(f"[{s['index']}] {s['source']}: {s['error']}" for s in summary.lost)
            failure = SourceError(f"Lost {len(summary.lost)} of {len(specs)} sources for good: {names}")
    elif failure is None and summary.frames == 0 and summary.end_reason == "end_of_source":
        detail = "end of source" + (f"; {unreadable}" if unreadable else "")
        failure = SourceError(f"No frames from {summary.source} ({detail})")
    if json_out and json_sink.stop_reason is None:
        out = summary.to_dict()
        if recorded:
            if not several:
                out["recording"] = recorded[0]
            out["recordings"] = recorded
        if outputs:
            out["outputs"] = [_output_dict(o) for o in outputs]
        if failure is not None:  # the summary line carries the error object (cli_command writes it, last line)
            failure.json_result = out
        else:
            try:
                sys.stdout.write(json.dumps(strict_json(out), allow_nan=False) + "\n")
                sys.stdout.flush()
            except BrokenPipeError:
                json_sink.stop_reason = "output_closed"
    if json_sink is not None and json_sink.stop_reason is not None:
        discard_stdout()  # `| head -1` went away: no "Exception ignored ... BrokenPipeError" when Python exits
    _print_summary(summary, recorded, several)
    for o in outputs:
        if o.error:
            warn(f"--output {o.display} stopped: {o.error}")
    if interrupted:  # stopped by Ctrl-C, everything finalised and the summary given: the shell hears 130
        raise typer.Exit(130)
    if failure is not None:
        raise failure
    if unreadable:
        warn(f"{unreadable} in {summary.source}")


def _print_start(runner, specs, captures, headless: bool) -> None:
    from rich.markup import escape

    def describe(spec, capture) -> str:
        pace_note = "paced" if capture.pace and not spec.live else "live" if spec.live else "unpaced"
        # a live source's rate is nominal (FFmpeg says 25 for any MJPEG stream): the summary gives the measured one
        rate = f", {capture.fps:g} fps" if capture.fps and not spec.live else ""
        return f"{spec.display} [{pace_note}{rate}]"

    head = f"[bold]live[/] {escape(runner.path.name)} ({runner.backend}, {runner.contract.precision}) on "
    if len(specs) == 1:
        console.print(head + escape(describe(specs[0], captures[0])) + ("" if headless else "  (q/Esc quits)"))
        return
    console.print(head + f"{len(specs)} sources, batched" + ("" if headless else "  (q/Esc quits)"))
    for i, (spec, capture) in enumerate(zip(specs, captures)):
        console.print(f"  [{i}] " + describe(spec, capture), markup=False)


def _output_dict(o) -> dict:
    return {"url": o.display, "backend": o.backend, "frames": o.frames, "dropped": o.dropped, "error": o.error}


def _warn_fps_ignored(spec, fps) -> None:
    """--fps on a video file: said once, then ignored (the video plays, and is recorded, at its own rate)."""
    if spec.kind == "file" and fps is not None:
        warn(
            f"--fps {fps:g} is ignored for a video file: it keeps its own frame rate (--fps is for cameras and "
            "image folders)"
        )


def _note_on_stderr(text: str) -> None:
    """One line on stderr from a signal handler: os.write, since the handler may run while the main thread is inside
    a buffered write to sys.stderr (a reentrant call would fail)."""
    import os

    try:
        os.write(2, f"note: {text}\n".encode())
    except OSError:
        pass


def _status_printer(console, several: bool = False, period_s: float = 5.0):
    """A result callback that prints one status line every `period_s` seconds (headless runs without --json)."""
    import time

    state = {"next": time.monotonic() + period_s}

    def on_result(result) -> bool:
        now = time.monotonic()
        if now >= state["next"]:
            state["next"] = now + period_s
            console.print(
                (f"[{result.source}] " if several else "")
                + f"frame {result.index}: {result.label} {result.score:.0%}  {result.fps:.1f} FPS  "
                f"age {result.frame_age * 1e3:.0f} ms  drops {result.dropped}",
                markup=False,
            )
        return True

    return on_result


def _recording_dict(path: Path, recorder) -> dict:
    """What the recording holds: its frames and rate, and how dropped frames were made up for."""
    return {
        "path": str(path),
        "frames": recorder.frames,
        "fps": recorder.video_fps,
        "timeline": recorder.timeline,
        "repeated": recorder.repeated,
        "left_out": recorder.left_out,
    }


def _print_summary(summary, recorded: list[dict], several: bool = False) -> None:
    from rich.table import Table

    table = Table(title=None, show_edge=False, header_style="bold")
    for col in ("stage", "p50 ms", "p99 ms", "mean ms", "max ms"):
        table.add_column(col, justify="right" if col != "stage" else "left")
    for name, s in summary.stages.items():
        if s["count"]:
            table.add_row(name, *(f"{s[k]:.2f}" for k in ("p50", "p99", "mean", "max")))
    console.print(
        f"[bold]{summary.frames}[/] frames in {summary.elapsed_s:.1f} s = [bold]{summary.fps:.1f} FPS[/]; "
        f"{summary.dropped} dropped, {summary.reconnects} reconnects; ended: {summary.end_reason.replace('_', ' ')}"
    )
    if summary.batch.get("count") and several:
        table.add_row("batch (frames)", "", "", f"{summary.batch['mean']:.2f}", str(summary.batch["max"]))
    if table.row_count:  # no frame processed: no empty table
        console.print(table)
    if several:
        per = Table(title=None, show_edge=False, header_style="bold")
        for col in ("#", "source", "frames", "FPS", "dropped", "reconnects", "ended"):
            per.add_column(col, justify="left" if col in ("source", "ended") else "right")
        for s in summary.sources:
            ended = s["end_reason"].replace("_", " ") + (f": {s['error']}" if s["error"] else "")
            per.add_row(
                str(s["index"]),
                s["source"],
                str(s["frames"]),
                f"{s['fps']:.1f}",
                str(s["dropped"]),
                str(s["reconnects"]),
                ended,
            )
        console.print(per)
    for s in summary.sources:
        if s["truncated"]:
            warn(
                (f"[{s['index']}] " if several else "")
                + f"the video ended after {s['frames_per_pass']} of the {s['frames_expected']} frames its header "
                "declares: the file may be cut short or damaged"
            )
    for rec in recorded:
        notes = [f"{rec['frames']} frames at {rec['fps']:g} fps"]
        if rec["repeated"]:
            notes.append(f"{rec['repeated']} of them repeat the previous frame where frames were dropped or late")
        if rec["left_out"]:
            notes.append(f"{rec['left_out']} processed frames left out: they came faster than the video's rate")
        console.print(f"recording: {rec['path']} ({'; '.join(notes)})", markup=False)
