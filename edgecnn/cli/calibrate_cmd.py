"""`edgecnn calibrate capture`: record INT8 calibration frames from the deployment camera or stream."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from edgecnn.cli.common import (
    Interrupted,
    add_command,
    console,
    force_option,
    json_option,
    print_json,
    progress_bar,
    warn,
)


def register(app: typer.Typer) -> None:
    group = typer.Typer(
        name="calibrate",
        help="Calibration data for INT8 quantization (capture frames from the deployment camera).",
        no_args_is_help=True,
    )
    add_command(group, "capture", capture)
    app.add_typer(group, name="calibrate")


def capture(
    source: str = typer.Option(
        ...,
        "--source",
        "-s",
        help="Same sources as `edgecnn live`: 0, /dev/videoN, csi://N, gst:..., rtsp://, http(s)://, "
        "a video or a folder.",
    ),
    out: Path = typer.Option(..., "--out", "-o", help="New folder for the JPEG frames, e.g. calibration/NAME."),
    count: int = typer.Option(200, "--count", "-n", min=1, help="Frames to save."),
    every_ms: float = typer.Option(
        500.0, "--every-ms", min=0.0, help="At least this many ms between saved frames (source time)."
    ),
    width: Optional[int] = typer.Option(None, "--width", help="Capture width (cameras)."),
    height: Optional[int] = typer.Option(None, "--height", help="Capture height (cameras)."),
    fps: Optional[float] = typer.Option(
        None,
        "--fps",
        help="Capture rate (cameras); for an image folder, its rate for --every-ms. "
        "A video file keeps its own (--fps is ignored, with a warning).",
    ),
    force: bool = force_option("Add frames to a folder that already holds files (nothing is overwritten)."),
    quality: int = typer.Option(95, "--quality", min=50, max=100, help="JPEG quality."),
    reconnect_attempts: int = typer.Option(
        5,
        "--reconnect-attempts",
        min=0,
        help="Reopen a lost camera/stream this many times (then exit 6, keeping the frames saved).",
    ),
    json_out: bool = json_option("Print the summary as JSON only, on stdout."),
):
    """Save --count frames, --every-ms apart, as calibration/NAME/frame_NNNNN.jpg (each file written atomically).
    A video file is read frame by frame on its own timeline (fast); a camera or stream in real time. Ctrl-C (or
    SIGTERM) keeps the frames saved so far and exits 130; a camera or stream lost for good (after
    --reconnect-attempts) keeps them too and exits 6."""
    import signal
    import threading

    from edgecnn.camera.capture import ReconnectPolicy, ThreadedCapture
    from edgecnn.camera.record import capture_frames, output_folder
    from edgecnn.camera.sources import parse_source
    from edgecnn.errors import SourceError, UserInputError

    spec = parse_source(source, width=width, height=height, fps=fps)
    if spec.kind == "file" and fps is not None:  # --every-ms is measured on the video's own timeline
        warn(
            f"--fps {fps:g} is ignored for a video file: --every-ms is measured on its own timeline (--fps is for "
            "cameras and image folders)"
        )
    if spec.kind in ("file", "folder") and (
        Path(spec.target).resolve() == out.resolve() or out.resolve().is_relative_to(Path(spec.target).resolve())
    ):
        raise UserInputError(
            "--out must not be --source or a folder inside it: frames are never written into the "
            "input folder (where they would also look like one more class)"
        )

    def on_event(kind: str, message: str) -> None:
        warn(message) if kind in ("lost", "retry", "gave_up") else console.print(message, style="cyan", markup=False)

    # A failed capture (source that cannot be opened, nothing decodable) leaves no empty --out folder behind.
    with output_folder(out, force=force) as first:
        stop = threading.Event()
        received = []  # the signal that stopped the capture, named in the exit message

        def on_signal(signum, _frame):
            received.append(signal.Signals(signum).name)
            stop.set()

        previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            cap = ThreadedCapture(
                spec, pace=False, reconnect=ReconnectPolicy(attempts=reconnect_attempts), on_event=on_event
            ).start(cancel=stop)  # Ctrl-C while a stream opens: 130
            if spec.kind == "folder" and not cap.fps and every_ms:
                # a folder has no timeline (read at full speed, 500 ms apart kept 1 image of 20): take every image
                console.print(
                    "an image folder has no frame rate: every image is taken (--every-ms applies with --fps)",
                    style="cyan",
                    markup=False,
                )
                every_ms = 0.0
            with progress_bar(f"capturing {count} frames", total=count, disable=json_out) as update:
                report = capture_frames(
                    cap,
                    out,
                    count,
                    every_ms=every_ms,
                    start_number=first,
                    jpeg_quality=quality,
                    progress=lambda done, total: update(done, total),
                    stop=stop,
                )
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

        d = report.to_dict()
        skipped = report.skipped_unreadable
        unreadable = f"{skipped} unreadable image file(s) skipped" if skipped else ""
        failure = None
        if report.end_reason == "stopped":
            # Interrupted before --count: the frames saved so far stay (each file is complete), but the exit is not 0,
            # like every interrupted command (cli_command's Ctrl-C -> 130), so `capture && quantize` does not go on.
            failure = Interrupted(_interrupted_message(received[0], len(report.saved), out))
        elif report.end_reason.startswith(LOST) and report.saved:
            # Lost for good before --count: like an interruption, the frames stay but the exit is not 0 (6, as
            # `live` exits for the same loss), so `capture && quantize` does not go on with a part of the set.
            failure = SourceError(
                f"{report.end_reason[len(LOST) :].strip()}; kept the {len(report.saved)} of {count} "
                f"frame(s) saved so far in {out}"
            )
        elif not report.saved:
            detail = f"{report.end_reason}; {unreadable}" if unreadable else report.end_reason
            failure = SourceError(f"No frames captured from {report.source} ({detail})")
        if json_out:
            if failure is None:
                print_json(d)
            else:  # one JSON document: the summary with the error object in it (cli_command prints it)
                failure.json_result = d
        elif report.saved:
            size = f"{d['size'][0]}x{d['size'][1]}" if d["size"] else "-"
            console.print(
                f"saved {d['saved']}/{count} frames ({size}) from {d['source']} to {out} in {d['elapsed_s']:.1f} s; "
                f"brightness min/mean/max {d['brightness'].get('min', '-')}/{d['brightness'].get('mean', '-')}/"
                f"{d['brightness'].get('max', '-')}",
                markup=False,
            )
        if failure is not None:
            raise failure  # inside output_folder: a folder this run created and left empty is removed
    if unreadable:
        warn(f"{unreadable} in {report.source}")
    if report.ended_early:
        warn(f"only {len(report.saved)} of {count} frames ({report.end_reason})")
    if len(report.saved) < 100:
        warn("fewer than 100 calibration images: INT8 ranges may be unreliable (aim for 200-500 varied frames)")


LOST = "source lost:"  # capture_frames' end_reason for a live source lost for good


def _interrupted_message(signal_name: str, saved: int, out: Path) -> str:
    """One line saying what an interrupted capture left behind, and where."""
    how = "interrupted (Ctrl-C)" if signal_name == "SIGINT" else f"terminated ({signal_name})"
    if not saved:
        return f"{how} before any frame was saved: nothing was written to {out}"
    return f"{how}: kept the {saved} frame(s) saved so far in {out}"
