"""`edgecnn live`: real-time classification from a camera, stream, video file or image folder."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from edgecnn.cli.common import add_command, backend_option, console, force_option, json_option, threads_option, warn

SOURCE_HELP = (
    "Camera index (0), /dev/videoN, csi://N[?capture=WxH&flip=M], gst:<pipeline>, rtsp://..., http(s)://... "
    "(MJPEG), a video file or an image folder."
)


def register(app: typer.Typer) -> None:
    add_command(
        app,
        "live",
        live,
        help="Classify frames from a camera or stream in real time (overlay window, JSON, recording).",
    )


def live(
    model: str = typer.Argument("efficientnet-lite0", help="Model file (.onnx, .engine, .pt) or pretrained name."),
    source: str = typer.Option("0", "--source", "-s", envvar="EDGECNN_SOURCE", help=SOURCE_HELP),
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
        1, "--every", min=1, help="With --json, write every N-th frame only (ignored, with a warning, without --json)."
    ),
    record: Optional[Path] = typer.Option(
        None, "--record", help="Write the annotated video here (.mp4/.avi/.mkv); an existing file needs --force."
    ),
    force: bool = force_option("Replace an existing --record file (only once the new recording is complete)."),
    top_k: int = typer.Option(3, "--top-k", min=1, help="Classes shown per frame."),
    threshold: float = typer.Option(
        0.0, "--threshold", min=0.0, max=1.0, help="Below this top-1 probability show 'unknown'."
    ),
    smoothing: float = typer.Option(
        0.0, "--smoothing", min=0.0, max=0.99, help="EMA factor over probabilities (0 = off, 0.8 = steady)."
    ),
    max_frames: Optional[int] = typer.Option(None, "--max-frames", min=1, help="Stop after N processed frames."),
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
    """Run the live loop until the source ends, --max-frames, q/Esc, or Ctrl-C / SIGTERM (which still finalise the
    recording and print the summary; with --record a second Ctrl-C is ignored until the video is finished)."""
    import json
    import signal
    import sys
    import threading

    from rich.markup import escape

    from edgecnn.camera.capture import ReconnectPolicy, ThreadedCapture
    from edgecnn.camera.loop import LiveOptions, run_live
    from edgecnn.camera.sinks import CallbackSink, JsonLinesSink, VideoRecorder, WindowSink
    from edgecnn.camera.sources import parse_source
    from edgecnn.errors import EdgeCNNError, SourceError
    from edgecnn.jsonout import strict_json
    from edgecnn.runtime.base import load

    spec = parse_source(source, width=width, height=height, fps=fps)
    _warn_fps_ignored(spec, fps)
    if every != 1 and not json_out:
        warn(f"--every {every} only thins the --json lines: without --json it is ignored")
    options = LiveOptions(top_k=top_k, threshold=threshold, smoothing=smoothing, max_frames=max_frames)
    sinks = []
    if not headless:
        sinks.append(WindowSink(f"edgecnn live: {spec.display}"))  # fails fast (no display) before loading anything
    recorder = None
    if record is not None:  # checked now (folder, under a file, unwritable, existing without --force), not at frame 1
        inputs = [spec.target] if spec.kind == "file" else []
        recorder = VideoRecorder(record, fps=fps or 30.0, inputs=inputs + [model], overwrite=force)
        sinks.append(recorder)
    json_sink = None
    if json_out:
        json_sink = JsonLinesSink(sys.stdout, every=every, source=spec.display)
        sinks.append(json_sink)
    elif headless:  # nothing else shows progress: a status line on stderr every few seconds
        sinks.append(CallbackSink(_status_printer(console)))

    def on_event(kind: str, message: str) -> None:
        if kind in ("lost", "retry", "gave_up"):
            warn(message)
        else:
            console.print(escape(message), style="cyan")

    load_options = {"threads": threads} if threads else {}
    runner = load(model, backend=backend, **load_options)
    stop = threading.Event()
    previous = {}
    said_so = []  # a second Ctrl-C came while the recording was being finished, and the note was printed
    finished = threading.Event()  # run_live has returned: nothing is left to cut short

    def on_signal(signum, _frame):
        """First Ctrl-C / SIGTERM: stop the loop (it finishes the recording and prints the summary). A second Ctrl-C
        cuts the shutdown short (a stream slow to close: exit 130), except with --record: cutting it short could
        land in the middle of finishing the video and lose it, so it is ignored, and said so (the shutdown is
        bounded: the capture thread is given at most 10 s)."""
        if not stop.is_set():
            stop.set()
            return
        if signum != signal.SIGINT or finished.is_set():
            return
        if recorder is not None:
            if not said_so:
                said_so.append(signum)
                _note_on_stderr("finishing the recording, one moment (Ctrl-C is ignored until it is complete)")
            return
        raise KeyboardInterrupt

    try:
        capture = ThreadedCapture(
            spec, pace=not no_pace, loop=loop, reconnect=ReconnectPolicy(attempts=reconnect_attempts), on_event=on_event
        ).start()
        if recorder is not None:
            recorder.fps = (None if spec.kind == "file" else fps) or capture.fps or 30.0  # a video: its own rate
            # frames may be dropped (live source, paced file): place them on the source's own clock, so the video
            # plays at the right speed however many the loop drops (FFmpeg's 25 for any MJPEG stream is no clock)
            recorder.timeline = "frames" if capture.lossless else "clock" if spec.live else "source"
        pace_note = "paced" if capture.pace and not spec.live else "live" if spec.live else "unpaced"
        console.print(
            f"[bold]live[/] {escape(runner.path.name)} ({runner.backend}, {runner.contract.precision}) on "
            # a live source's rate is nominal (FFmpeg says 25 for any MJPEG stream): the summary gives the measured one
            + escape(f"{spec.display} [{pace_note}{f', {capture.fps:g} fps' if capture.fps and not spec.live else ''}]")
            + ("" if headless else "  (q/Esc quits)")
        )
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, on_signal)
        sink_error = None
        try:
            summary = run_live(runner, capture, options, sinks, stop=stop)
        except EdgeCNNError as exc:  # a recording that could not be completed: still report what was classified
            summary = getattr(exc, "summary", None)
            if summary is None:
                raise
            sink_error = exc
    finally:
        finished.set()
        for sig, handler in previous.items():
            # Stopped by a signal: the run is over, and one more Ctrl-C now (while the summary prints) must neither
            # kill the process by signal nor turn a finished run into exit 130: ignore any further ones until exit
            # (the command's process ends right after; in-process callers use camera.loop.run_live, not this).
            signal.signal(sig, signal.SIG_IGN if stop.is_set() else handler)
        runner.close()

    skipped = summary.skipped_unreadable
    unreadable = f"{skipped} unreadable image file(s) skipped" if skipped else ""
    failure = sink_error
    if failure is None and summary.end_reason == "source_lost":
        failure = SourceError(summary.error or f"Lost {spec.display}")
    elif failure is None and summary.frames == 0 and summary.end_reason == "end_of_source":
        detail = "end of source" + (f"; {unreadable}" if unreadable else "")
        failure = SourceError(f"No frames from {spec.display} ({detail})")
    if json_out and json_sink.stop_reason is None:
        out = summary.to_dict()
        if recorder is not None and recorder.frames:
            out["recording"] = _recording_dict(record, recorder)
        if failure is not None:  # the summary line carries the error object (cli_command writes it, last line)
            failure.json_result = out
        else:
            try:
                sys.stdout.write(json.dumps(strict_json(out), allow_nan=False) + "\n")
                sys.stdout.flush()
            except BrokenPipeError:
                json_sink.stop_reason = "output_closed"
    if json_sink is not None and json_sink.stop_reason is not None:
        _discard_stdout()  # `| head -1` went away: no "Exception ignored ... BrokenPipeError" when Python exits
    _print_summary(summary, _recording_dict(record, recorder) if recorder is not None and recorder.frames else None)
    if failure is not None:
        raise failure
    if unreadable:
        warn(f"{unreadable} in {spec.display}")


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


def _discard_stdout() -> None:
    """Point file descriptor 1 at /dev/null once its reader has gone, so buffered output has somewhere to go."""
    import os
    import sys

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, sys.stdout.fileno())
        finally:
            os.close(devnull)
    except (OSError, ValueError):  # not a real file (tests' captured stdout): nothing to redirect
        pass


def _status_printer(console, period_s: float = 5.0):
    """A result callback that prints one status line every `period_s` seconds (headless runs without --json)."""
    import time

    state = {"next": time.monotonic() + period_s}

    def on_result(result) -> bool:
        now = time.monotonic()
        if now >= state["next"]:
            state["next"] = now + period_s
            console.print(
                f"frame {result.index}: {result.label} {result.score:.0%}  {result.fps:.1f} FPS  "
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


def _print_summary(summary, recorded: dict | None) -> None:
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
    if table.row_count:  # no frame processed: no empty table
        console.print(table)
    if summary.truncated:
        warn(
            f"the video ended after {summary.frames_per_pass} of the {summary.frames_expected} frames its header "
            "declares: the file may be cut short or damaged"
        )
    if recorded is not None:
        notes = [f"{recorded['frames']} frames at {recorded['fps']:g} fps"]
        if recorded["repeated"]:
            notes.append(f"{recorded['repeated']} of them repeat the previous frame where frames were dropped or late")
        if recorded["left_out"]:
            notes.append(f"{recorded['left_out']} processed frames left out: they came faster than the video's rate")
        console.print(f"recording: {recorded['path']} ({'; '.join(notes)})", markup=False)
