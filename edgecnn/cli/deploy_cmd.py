"""`edgecnn deploy bundle|install|triton|deepstream`: from a model file to devices and serving engines."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from edgecnn.cli.common import (
    add_command,
    article,
    console,
    error,
    error_object,
    force_option,
    json_option,
    print_json,
    progress_bar,
    warn,
)
from edgecnn.platform import DEFAULT_L4T

DRY_RUN_SHA256 = "SHA256-OF-THE-BUNDLE"  # in --dry-run host commands: the real run's archive sha256 goes there


def register(app: typer.Typer) -> None:
    group = typer.Typer(
        name="deploy",
        help="Bundle a model for Jetson devices, install bundles, write Triton and DeepStream configs.",
        no_args_is_help=True,
    )
    for name, fn in (("bundle", bundle), ("install", install), ("triton", triton), ("deepstream", deepstream)):
        add_command(group, name, fn)
    app.add_typer(group, name="deploy")


def _prepared_int8(model, out, calib, val, max_drop, int8_model, calib_cache):
    """(FP32 ONNX, Q/DQ INT8 ONNX, calibration table) made from MODEL beside --out (edgecnn.trt.onestep)."""
    from edgecnn.errors import UserInputError
    from edgecnn.trt.onestep import OneStepOptions, intermediates, prepare_models

    if int8_model is not None or calib_cache is not None:
        raise UserInputError("--calib makes the INT8 model and its calibration table: drop --int8-model/--calib-cache")
    with console.status("preparing the models", spinner="dots") as status:
        _steps, fp32, int8 = prepare_models(
            model,
            Path(out),
            OneStepOptions(calib=calib, val=val, max_drop=max_drop),
            lambda step, msg: status.update(f"{step}: {msg}"),
        )
    return str(fp32), int8, intermediates(Path(out))["calib"]


def bundle(
    model: str = typer.Argument(
        ..., help="An .onnx model (FP32, or Q/DQ INT8), a .pt checkpoint or a pretrained name."
    ),
    out: Path = typer.Option(..., "--out", "-o", help="The bundle to write (.tar.gz)."),
    device: Optional[str] = typer.Option(
        None, "--device", help="build-engine preset for the target (orin-nano, agx-orin, ...)."
    ),
    precision: str = typer.Option(
        "fp16", "--precision", help="Engine precision on the device: fp32, fp16, int8 or best."
    ),
    calib_cache: Optional[Path] = typer.Option(
        None, "--calib-cache", help="TensorRT calibration cache (edgecnn quantize --cache)."
    ),
    int8_model: Optional[Path] = typer.Option(
        None, "--int8-model", help="Q/DQ INT8 ONNX of the same model (edgecnn quantize)."
    ),
    source: str = typer.Option(
        "0", "--source", "-s", help="`edgecnn live` source on the device (0, /dev/video0, csi://0, rtsp://...)."
    ),
    sink: List[str] = typer.Option(
        ["json"],
        "--sink",
        help="display, headless, json (JSON lines: the journal under systemd) or record:PATH; repeatable.",
    ),
    name: Optional[str] = typer.Option(
        None, "--name", help="App name (folder, systemd unit, image); default from MODEL."
    ),
    l4t: str = typer.Option(
        DEFAULT_L4T,
        "--l4t",
        help="Jetson Linux release of the target: picks the l4t-jetpack base image and the cuda-python pin.",
    ),
    base_image: Optional[str] = typer.Option(None, "--base-image", help="Override the Dockerfile's base image."),
    user: str = typer.Option(
        "root", "--user", help="User the bundled systemd unit runs as (install sets the real one)."
    ),
    host: Optional[str] = typer.Option(
        None, "--host", help="user@device: copy the bundle there over ssh and install it."
    ),
    prefix: Optional[str] = typer.Option(
        None, "--prefix", help="With --host: install folder on the device (default /opt/edgecnn)."
    ),
    service: bool = typer.Option(False, "--service", help="With --host: install and enable the systemd service."),
    dry_run: bool = typer.Option(
        False,
        "--dry-run",
        help="With --host: check and show the bundle and the ssh/scp commands; write and run nothing.",
    ),
    calib: Optional[Path] = typer.Option(
        None,
        "--calib",
        help="Calibration images: MODEL is exported (a .pt or name) and quantized first, the Q/DQ INT8 ONNX and "
        "calibration table bundled (intermediates kept beside --out and reused when unchanged).",
    ),
    val: Optional[Path] = typer.Option(None, "--val", help="With --calib: labelled images to measure the INT8 drop."),
    max_drop: Optional[float] = typer.Option(None, "--max-drop", help="With --val: top-1 points INT8 may lose."),
    force: bool = force_option("Replace an existing --out (and its .sha256)."),
    json_out: bool = json_option("Print the report as JSON only, on stdout."),
):
    """A self-contained, checksummed bundle: ONNX, calibration, contract, start script, systemd unit, Dockerfile.

    An existing --out is replaced only with --force; --dry-run never writes or replaces it."""
    import shlex

    from edgecnn.deploy.bundle import DEFAULT_PREFIX, BundleOptions, create_bundle, push_bundle, ssh_commands
    from edgecnn.errors import EdgeCNNError, UserInputError

    host_only = [
        flag
        for flag, given in (("--prefix", prefix is not None), ("--service", service), ("--dry-run", dry_run))
        if given
    ]
    if host_only and not host:
        raise UserInputError(
            f"{', '.join(host_only)} only apply with --host user@device (installing on this machine "
            "is `edgecnn deploy install BUNDLE`)"
        )
    if calib is not None:  # the one-step path of build-engine: export -> quantize, then bundle both models
        from edgecnn.deploy.bundle import bundle_name

        name = bundle_name(model, name)  # named after MODEL, not after the intermediate
        model, int8_model, calib_cache = _prepared_int8(model, out, calib, val, max_drop, int8_model, calib_cache)
    elif val is not None or max_drop is not None:
        raise UserInputError("--val/--max-drop go with --calib")
    options = BundleOptions(
        precision=precision,
        device=device,
        calib_cache=calib_cache,
        int8_model=int8_model,
        source=source,
        sinks=tuple(sink),
        name=name,
        l4t=l4t,
        base_image=base_image,
        user=user,
        force=force,
    )
    with progress_bar("bundling", disable=json_out) as update:
        report = create_bundle(model, out, options, progress=update, dry_run=dry_run)
    result = report.to_dict()
    if host:
        # a dry run shows where the real run's sha256 goes: its own archive is new, so no hash known now would match
        sha256 = report.sha256 or DRY_RUN_SHA256
        commands = ssh_commands(out, host, report.name, sha256, prefix=prefix or DEFAULT_PREFIX, service=service)
        result["host_commands"] = [shlex.join(c) for c in commands]  # quoted: pasting a line runs it as shown
        if not dry_run:
            if not json_out:
                console.print(f"copying to {host} and installing ...")
            try:
                push_bundle(commands)
            except EdgeCNNError as exc:  # an unreachable host, a failed install there: the bundle here stays
                kept = (
                    f"the bundle is kept: {report.out} (and its .sha256)" if report.written else "nothing was written"
                )
                exc.args = (f"{exc}; {kept}; copy and install it by hand, or retry with --host",)
                raise
    if json_out:
        print_json(result)
        return
    for w in report.warnings:
        warn(w)
    size = f"{report.size_bytes / 1e6:.1f} MB, {len(report.files)} files + lib/edgecnn"
    if report.written:
        head = (
            f"wrote {report.out} ({size})\n"
            f"  sha256 {report.sha256} (also in {report.out}.sha256: copy both, install checks it)"
        )
    else:
        head = (
            f"checked the bundle for {report.out} ({size}); --dry-run: nothing written (the real run's archive "
            f"gets its own sha256: {DRY_RUN_SHA256} stands for it below)"
        )
    console.print(
        f"[green]✓[/] {head}\n"
        f"  on the device: builds {article(report.precision)} engine from {report.build_onnx} at first start; "
        f"ONNX Runtime fallback: {report.run_onnx}"
    )
    if host and dry_run:
        console.print("commands (--dry-run):")
        for line in result["host_commands"]:
            console.print(f"  {line}", markup=False, soft_wrap=True)  # one line each, never wrapped
    elif host:
        console.print(f"[green]✓[/] installed on {host}")


def install(
    bundle: Optional[Path] = typer.Argument(None, help="A bundle from `edgecnn deploy bundle`."),
    prefix: Path = typer.Option(Path("/opt/edgecnn"), "--prefix", help="Install under PREFIX/<name>."),
    rollback: Optional[str] = typer.Option(
        None, "--rollback", metavar="NAME", help="Point PREFIX/NAME back at its previous release (no BUNDLE)."
    ),
    sha256: Optional[str] = typer.Option(
        None, "--sha256", help="Expected sha256 of the bundle file (default: BUNDLE.sha256 beside it, if any)."
    ),
    service: bool = typer.Option(False, "--service", help="Install and enable the systemd service."),
    no_build: bool = typer.Option(
        False, "--no-build", help="Do not build the TensorRT engine now (start.sh builds it on first start)."
    ),
    require_sha256: bool = typer.Option(
        False,
        "--require-sha256",
        help="Refuse a bundle whose archive checksum is unknown (no --sha256 and no BUNDLE.sha256 beside it).",
    ),
    json_out: bool = json_option("Print the report as JSON only, on stdout."),
):
    """Verify (SHA256SUMS; a tampered bundle is refused), extract safely, build the engine, optionally the service.

    Each install is a release folder, PREFIX/.NAME.releases/ID; PREFIX/NAME is a symlink switched to it by one atomic
    rename, so a crash at any instant leaves the old app or the new one. Over an existing install, any failure (bad
    bundle, start.sh --prepare, service) leaves it exactly as it was. The previous release is kept (built engines are
    carried over, files you added stay in it); `--rollback NAME` switches back to it.

    --service where it cannot be installed (systemd not running, not root) installs and reports the app, says what
    the service would need, and exits 3: the service that was asked for is not there.
    """
    from edgecnn.deploy.install import install_bundle
    from edgecnn.errors import ArtifactError, MissingDependencyError, UserInputError

    if (bundle is None) == (rollback is None):
        raise UserInputError("give a BUNDLE to install, or --rollback NAME (not both)")
    if rollback is not None:
        _rollback(rollback, prefix, service, json_out)
        return

    side = bundle.with_name(bundle.name + ".sha256")
    if sha256 is None and bundle.is_file() and not side.is_file():
        # Without the archive's own checksum only the SHA256SUMS inside it are checked, which a replaced bundle
        # brings along: accidental damage is caught, substitution is not.
        if require_sha256:
            raise ArtifactError(
                f"{bundle} has no {side.name} beside it and no --sha256 was given: --require-sha256 refuses an archive "
                f"it cannot check; copy {side.name} from where the bundle was made, or pass --sha256 DIGEST"
            )
        warn(
            f"NO ARCHIVE CHECKSUM: {side.name} is not beside {bundle.name} and no --sha256 was given, so this bundle's "
            "origin is NOT verified (its inner SHA256SUMS only catch damage, not a replaced bundle); copy the .sha256 "
            "with it, pass --sha256, or --require-sha256 to refuse such bundles"
        )
    with progress_bar("installing", total=3, disable=json_out) as update:
        report = install_bundle(
            bundle, prefix, expected_sha256=sha256, service=service, build_engine=not no_build, progress=update
        )
    svc = report.service
    # Not an exception from install_bundle: the app itself is installed (and stays), only the service is missing.
    service_missing = f"service not installed: {svc.get('reason')}" if service and not svc.get("installed") else None
    if json_out:
        code = MissingDependencyError.exit_code
        failure = error_object(service_missing, code, "MissingDependencyError") if service_missing else {}
        print_json({**report.to_dict(), **failure})
    else:
        _print_install(report)
    if service_missing:
        error(f"{service_missing} (the app is installed in {report.app_dir})")
        raise typer.Exit(MissingDependencyError.exit_code)


def _rollback(name: str, prefix: Path, service: bool, json_out: bool) -> None:
    from edgecnn.deploy.install import rollback

    report = rollback(name, prefix, service=service)
    if json_out:
        print_json(report.to_dict())
    else:
        console.print(
            f"[green]✓[/] {report.app_dir} now runs release {Path(report.release).name} "
            f"(was {Path(report.replaced).name}, kept: roll back again to return to it)",
        )


def _print_install(report) -> None:
    checked = "archive sha256 checked, " if report.archive_checked else ""
    console.print(
        f"[green]✓[/] installed {report.name} in {report.app_dir} ({checked}{report.files_verified} files verified)\n"
        f"  runtime: {report.runtime} ({report.model}): {report.engine_note}"
    )
    if report.replaced_previous:
        from rich.markup import escape

        kept = f"kept as release {report.previous_kept}" if report.previous_kept else "it could not be kept"
        warn(
            escape(
                f"replaced the previous install at {report.app_dir} ({kept}; `edgecnn deploy install --rollback "
                f"{report.name}` switches back): its built engines were carried over, user files in it are not"
            )
        )
        extra = report.previous_extra_files
        if extra:
            more = f" and {len(extra) - 5} more" if len(extra) > 5 else ""
            console.print(f"  not carried over: {', '.join(extra[:5])}{more}", markup=False)
    svc = report.service
    if svc:
        if svc.get("installed"):
            console.print(f"[green]✓[/] {svc['unit']} installed and enabled (runs as {svc['user']})")
        else:
            from rich.markup import escape

            console.print(f"[red]✗[/] {escape(svc['unit'])} not installed (reason below); installing it takes:")
            console.print(f"  write {svc['unit']}", markup=False)
            for cmd in svc["commands"]:
                console.print(f"  {cmd}", markup=False)


def triton(
    model: str = typer.Argument(
        ..., help="An edgecnn .onnx or .engine (with its .json manifest), or a pretrained name."
    ),
    repo: Path = typer.Option(..., "--repo", help="The Triton model repository folder."),
    name: Optional[str] = typer.Option(None, "--name", help="Model name in the repository (default: from MODEL)."),
    max_batch: Optional[int] = typer.Option(
        None, "--max-batch", help="max_batch_size (default 8 for a dynamic-batch model; 0 for a fixed batch)."
    ),
    instances: int = typer.Option(1, "--instances", help="Model instances (instance_group count)."),
    dynamic_batching: bool = typer.Option(False, "--dynamic-batching", help="Let Triton batch concurrent requests."),
    cpu: bool = typer.Option(False, "--cpu", help="KIND_CPU instances (ONNX only; default KIND_GPU)."),
    force: bool = force_option("Replace an existing model folder of that name."),
    json_out: bool = json_option("Print the report as JSON only, on stdout."),
):
    """A Triton model repository entry: config.pbtxt, labels (label_filename) and the model under version 1."""
    from edgecnn.deploy.triton import TritonOptions, write_repository

    options = TritonOptions(
        name=name,
        max_batch=max_batch,
        instances=instances,
        dynamic_batching=dynamic_batching,
        kind="cpu" if cpu else "gpu",
        force=force,
    )
    report = write_repository(model, repo, options)
    if json_out:
        print_json(report.to_dict())
        return
    for note in report.notes:
        warn(note)
    console.print(
        f"[green]✓[/] wrote {report.model_dir} ({report.platform}, max_batch_size {report.max_batch_size})\n"
        f"  serve: tritonserver --model-repository {repo}"
    )


def deepstream(
    model: str = typer.Argument(..., help="An edgecnn .onnx (or .engine), or a pretrained name."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for nvinfer_config.txt, labels and the model."),
    precision: Optional[str] = typer.Option(
        None, "--precision", help="network-mode: fp32, fp16 or int8 (default fp16; int8 for a Q/DQ model)."
    ),
    batch_size: int = typer.Option(1, "--batch-size", help="nvinfer batch-size."),
    calib_cache: Optional[Path] = typer.Option(
        None, "--calib-cache", help="int8-calib-file (TensorRT calibration cache)."
    ),
    classifier_threshold: float = typer.Option(
        0.2, "--classifier-threshold", help="Minimum probability to attach a label."
    ),
    approximate_std: bool = typer.Option(
        False, "--approximate-std", help="Accept one scale factor for per-channel std."
    ),
    force: bool = force_option(
        "Replace an earlier config in --out as a whole (with the engine DeepStream cached for it)."
    ),
    json_out: bool = json_option("Print the report as JSON only, on stdout."),
):
    """A DeepStream nvinfer classifier config whose scale, offsets and color format come from the model's contract.

    --out must be new, empty or hold this very config; --force replaces an earlier config there as a whole.
    A folder holding files edgecnn did not write is never written into.
    """
    from edgecnn.deploy.deepstream import DeepStreamOptions, write_deepstream

    options = DeepStreamOptions(
        precision=precision,
        batch_size=batch_size,
        calib_cache=calib_cache,
        classifier_threshold=classifier_threshold,
        approximate_std=approximate_std,
        force=force,
    )
    report = write_deepstream(model, out, options)
    if json_out:
        print_json(report.to_dict())
        return
    for w in report.warnings:
        warn(w)
    console.print(
        f"[green]✓[/] wrote {Path(report.out) / 'nvinfer_config.txt'}: net-scale-factor {report.net_scale_factor:.6g}, "
        f"offsets {';'.join(f'{o:g}' for o in report.offsets)}, model-color-format {report.model_color_format}"
    )
    if report.replaced:
        console.print(
            f"  replaced the earlier config in {report.out} (and any engine DeepStream had cached)", markup=False
        )
