"""``cxr-triage train``, ``cxr-triage evaluate`` and ``cxr-triage model info``: registered onto the main Typer app."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from model.folders import DEFAULT_IGNORED, DEFAULT_POSITIVE
from triage.console import app, console, load_settings


def _progress() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TimeRemainingColumn(), TextColumn("{task.fields[detail]}"), console=console)


DataOption = Annotated[list[Path], typer.Option("--data", help="Folder with NORMAL/ and positive class folders "
                                                              "(PNG, JPEG or DICOM); repeat to combine.")]


def _split_folders(values: list[str]) -> tuple[str, ...]:
    return tuple(part.strip() for value in values for part in value.split(",") if part.strip())


def _default_model() -> Path:
    """The checkpoint the workers would load (TRIAGE_MODEL, else the shipped one)."""
    from triage.wiring import worker_config
    from worker.served_model import checkpoint_path

    return checkpoint_path(worker_config(load_settings()))


def train_command(
    data: DataOption,
    out: Annotated[Path | None, typer.Option(help="Run folder: cache, logs, resumable state "
                                                      "(default var/train/<UTC time>). Rerun to resume.")] = None,
    output: Annotated[Path | None, typer.Option(help="Where to write the checkpoint (default OUT/model.safetensors)."
                                                   )] = None,
    stages: Annotated[str, typer.Option(help="Progressive resizing, SIZE:EPOCHS,…; the last size is the model's input "
                                             "size (a fraction trains part of an epoch).")] = "128:6,224:2",
    positive_folder: Annotated[list[str], typer.Option(help="Folders of the positive class (repeat or "
                                                             "comma-separate).")] = list(DEFAULT_POSITIVE),
    negative_folder: Annotated[list[str], typer.Option(help="Folders of the negative class.")] = ["NORMAL"],
    batch_size: int = 32,
    lr: Annotated[float, typer.Option(help="Peak learning rate (SGD); 0.01 and above were unstable from "
                                           "scratch.")] = 0.005,
    momentum: float = 0.9,
    weight_decay: float = 1e-4,
    warmup_epochs: float = 0.5,
    val_fraction: Annotated[float, typer.Option(help="Share of images (whole patients) held out.")] = 0.15,
    seed: int = 0,
    patience: Annotated[int, typer.Option(help="Early stop after this many epochs without a val AUC gain.")] = 3,
    target_sensitivity: Annotated[float, typer.Option(help="The threshold is chosen on validation data for this "
                                                           "sensitivity.")] = 0.95,
    balance: Annotated[str, typer.Option(help="'weights' (class-weighted loss), 'sampler' (class-balanced "
                                              "sampling) or 'sites' (balanced by site and class against shortcut "
                                              "learning).")] = "weights",
    equalize: Annotated[bool, typer.Option(help="Histogram-equalise every input (stored in the checkpoint, so "
                                                "serving does the same).")] = False,
    epoch_images: Annotated[int, typer.Option(help="Images drawn per epoch when sampling (0 = training set size)."
                                              )] = 0,
    pediatric_share: Annotated[float | None, typer.Option(help="With --balance sites: the share of draws from "
                                                               "pediatric sources (default: by site size).",
                                                          min=0.0, max=0.95)] = None,
    bf16: Annotated[bool, typer.Option(help="bf16 autocast where the CPU has native bf16 (it is chosen from the "
                                            "CPU's flags; never used without them).")] = True,
    augment: Annotated[bool, typer.Option(help="Rotation/scale/translation and brightness/contrast/gamma; "
                                               "never a horizontal flip.")] = True,
    init_weights: Annotated[Path | None, typer.Option(help="Initialise from a torchvision ResNet50 weights file "
                                                               "(.pth/.safetensors); the head is replaced.")] = None,
    teacher: Annotated[Path | None, typer.Option(help="A trained checkpoint (e.g. the shipped model) whose scores "
                                                      "the new model keeps on --distill-population images.")] = None,
    distill_weight: Annotated[float, typer.Option(help="Weight of the teacher's soft targets in the loss.")] = 1.0,
    distill_population: Annotated[str, typer.Option(help="Population whose images the teacher scores.")
                                  ] = "pediatric",
    ema_decay: Annotated[float, typer.Option(help="Validate and write an exponential moving average of the weights "
                                                  "with this decay per step (e.g. 0.998); 0 = off.",
                                             min=0.0, max=0.9999)] = 0.0,
    device: Annotated[str, typer.Option(help="torch device; empty = cuda when available.")] = "",
    max_minutes: Annotated[float | None, typer.Option(help="Stop before an epoch that would end after this.")
                           ] = None,
    min_auc: Annotated[float, typer.Option(help="Write no checkpoint when validation AUC is below this.")] = 0.9,
    version: Annotated[str, typer.Option(help="Model version string stored in the checkpoint.")] = "",
    bootstrap: Annotated[int, typer.Option(help="Bootstrap resamples for the intervals.")] = 1000,
    finish_only: Annotated[bool, typer.Option(help="Write the checkpoint from the run folder's best epoch so far "
                                                   "and stop (after interrupting a long run).")] = False,
    threads: Annotated[int, typer.Option(help="CPU threads (0 = torch's default). On a shared CPU, 1 thread can be "
                                              "several times faster than 2 that fight another process.")] = 0,
) -> None:
    """Train the ResNet50 classifier (SGDM, cross-entropy) with a patient-disjoint validation split."""
    from model.train import BatchProgress, TrainConfig, parse_stages, train

    if balance not in ("weights", "sampler", "sites"):
        raise typer.BadParameter("balance must be 'weights', 'sampler' or 'sites'")
    run = out or Path("var/train") / datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    config = TrainConfig(
        data=list(data), out=run, negative=_split_folders(negative_folder), positive=_split_folders(positive_folder),
        stages=parse_stages(stages), batch_size=batch_size, lr=lr, momentum=momentum, weight_decay=weight_decay,
        warmup_epochs=warmup_epochs, val_fraction=val_fraction, seed=seed, patience=patience,
        target_sensitivity=target_sensitivity, balance=balance, augment=augment, init_weights=init_weights,
        device=device, max_minutes=max_minutes, output=output, min_auc=min_auc, version=version,
        bootstrap=bootstrap, threads=threads, finish_only=finish_only, equalize=equalize, epoch_images=epoch_images,
        allow_bf16=bf16, pediatric_share=pediatric_share, teacher=teacher, distill_weight=distill_weight,
        distill_population=distill_population, ema_decay=ema_decay)
    console.print(f"run folder {run} (epochs.jsonl, train.log; rerun the same command to resume)")
    with _progress() as progress:
        bars: dict[int, TaskID] = {}

        def show(state: BatchProgress) -> None:
            if state.epoch not in bars:
                bars[state.epoch] = progress.add_task(f"epoch {state.epoch}/{state.epochs} {state.size}px",
                                                      total=state.batches, detail="")
            progress.update(bars[state.epoch], completed=state.batch,
                            detail=f"loss {state.loss:.4f} {state.images_per_s:.1f} img/s")

        summary = train(config, on_batch=show)
    if not summary.get("checkpoint"):
        console.print(f"[red]no checkpoint written[/red] ({summary.get('stop_reason')})")
        raise typer.Exit(1)
    metrics = summary["validation_metrics"]
    console.print(f"checkpoint {summary['checkpoint']['path']} sha256 {summary['checkpoint']['sha256']}")
    console.print(f"validation AUC {metrics['auc']:.4f} {metrics['auc_ci95']}, threshold {metrics['threshold']:.4f}, "
                  f"sensitivity {metrics['sensitivity']:.4f}, specificity {metrics['specificity']:.4f}")


def evaluate_command(
    data: Annotated[Path, typer.Option(help="Folder with NORMAL/ and positive class folders.")],
    out: Annotated[Path, typer.Option(help="Folder for report.json, report.txt, scores.csv and PNG plots.")],
    model: Annotated[Path | None, typer.Option(help="Checkpoint; default = TRIAGE_MODEL or the shipped model.")
                     ] = None,
    positive_folder: Annotated[list[str], typer.Option(help="Folders of the positive class (repeat or "
                                                             "comma-separate).")] = list(DEFAULT_POSITIVE),
    negative_folder: Annotated[list[str], typer.Option(help="Folders of the negative class.")] = ["NORMAL"],
    ignore_folder: Annotated[list[str], typer.Option(help="Folders left out on purpose (shell patterns); any other "
                                                           "unmapped folder stops the run.")] = list(DEFAULT_IGNORED),
    by_folder: Annotated[bool, typer.Option(help="DATA is SOURCE/CLASS/: report metrics per source folder too."
                                            )] = False,
    threshold: Annotated[float | None, typer.Option(help="Override; default = TRIAGE_THRESHOLD or the "
                                                            "checkpoint's.")] = None,
    bootstrap: int = 1000,
    device: str = "",
) -> None:
    """Confusion matrix, accuracy, recall, precision, specificity, F1, ROC AUC with 95% bootstrap intervals."""
    from model.evaluate import evaluate
    from model.folders import UnmappedFolderError
    from model.metrics import format_sources, format_table

    checkpoint = model or _default_model()
    if threshold is None:
        threshold = load_settings().threshold
    with _progress() as progress:
        scoring = progress.add_task("scoring", total=None, detail="")

        def show(done: int, total: int) -> None:
            progress.update(scoring, completed=done, total=total)

        try:
            report = evaluate(data, checkpoint, out, negative=_split_folders(negative_folder),
                              positive=_split_folders(positive_folder), threshold=threshold, n_boot=bootstrap,
                              device=device, ignored=_split_folders(ignore_folder), by_folder=by_folder,
                              progress=show)
        except (UnmappedFolderError, FileNotFoundError, ValueError) as exc:
            progress.stop()
            console.print(f"[red]{exc}[/red]")
            raise typer.Exit(2) from exc
    if not report["model_trained"]:
        console.print("[yellow]UNTRAINED MODEL: these numbers are meaningless[/yellow]")
    console.print(f"model {report['model_version']} sha256 {report['model_sha256']}")
    console.print(format_table(report))
    if report.get("per_source"):
        console.print(format_sources(report["per_source"]))
    if report["not_analysable"]:
        console.print(f"not analysable, left out as the worker would: {len(report['not_analysable'])} "
                      f"(reasons in report.json)")
    console.print(f"report {Path(out) / 'report.json'}")


def validation_report_command(
    run: Annotated[Path, typer.Option(help="A training run folder (its config.json and split.json).")],
    model: Annotated[Path | None, typer.Option(help="Checkpoint; default = TRIAGE_MODEL or the shipped model.")
                     ] = None,
    threshold: Annotated[float | None, typer.Option(help="Override the checkpoint's threshold.")] = None,
    bootstrap: int = 1000,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Score a training run's validation split with any checkpoint: per population, per site, shortcut checks."""
    from model.metrics import format_table
    from model.validation_report import validation_report

    try:
        report = validation_report(run, model or _default_model(), threshold, bootstrap)
    except (FileNotFoundError, ValueError) as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from exc
    if as_json:
        print(json.dumps(report, indent=2, sort_keys=True))
        return
    console.print(f"model {report['model']} sha256 {report['sha256']} on the validation split of {run}")
    for population, metrics in report["populations"].items():
        console.print(f"\n[bold]{population}[/bold]\n{format_table(metrics)}")
    console.print("\n[bold]each positive folder against its population's normals[/bold] (sensitivity and "
                  "specificity at the threshold; specificity where that folder's sensitivity would be 0.90)")
    for name, entry in report["positive_folders"].items():
        console.print(f"  {name:<28} n {entry['n_positive']}/{entry['n_negative']}  AUC {entry['auc']:.4f}  "
                      f"sens {entry['sensitivity']:.3f} spec {entry['specificity']:.3f}  "
                      f"spec@sens{entry['target_sensitivity']:g} {entry['specificity_at_target_sensitivity']:.3f}")
    console.print("\n[bold]per site[/bold] (AUC, mean score of negatives / positives)")
    for site, entry in report["sites"].items():
        auc = "n/a" if entry["auc"] is None else f"{entry['auc']:.4f}"
        means = " / ".join(f"{entry[k]['mean']:.3f} (n={entry[k]['n']})" if k in entry else "-"
                           for k in ("negative", "positive"))
        console.print(f"  {site:<24} AUC {auc:<7} {means}")
    console.print("\n[bold]same-class site AUC[/bold] (0.5 = the score does not know the hospital)")
    for pair, auc in report["same_class_site_auc"].items():
        console.print(f"  {pair:<48} {auc:.3f}")


model_app = typer.Typer(help="Inspect model checkpoints.", no_args_is_help=True)


@model_app.command("info")
def model_info(
    checkpoint: Annotated[Path | None, typer.Argument(help="Checkpoint; default = the model in use.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Print a checkpoint's metadata and sha256."""
    from dataclasses import asdict

    from model.checkpoint import CheckpointError, file_sha256, read_metadata

    path = checkpoint or _default_model()
    try:
        metadata = read_metadata(path)
    except CheckpointError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from exc
    from model.inference import pick_device
    from model.precision import autocast_dtype, cpu_has_native_bf16, precision_name

    device = pick_device()
    serving = f"{precision_name(autocast_dtype(device))} on {device.type}"
    if device.type == "cpu":
        serving += " (native bf16)" if cpu_has_native_bf16() else " (no native bf16 on this CPU)"
    info = {"path": str(path), "sha256": file_sha256(path), "bytes": path.stat().st_size,
            "serving_precision": serving, **asdict(metadata)}
    if as_json:
        print(json.dumps(info, indent=2, sort_keys=True))
        return
    metrics = metadata.validation_metrics
    console.print(f"path       {info['path']}\nsha256     {info['sha256']}\nsize       {info['bytes']} bytes")
    console.print(f"version    {metadata.version}  (trained: {metadata.trained})")
    console.print(f"classes    {list(metadata.class_names)} positive={metadata.positive_class}  "
                  f"input {metadata.input_size}px  threshold {metadata.threshold:.4f}")
    console.print(f"serving    {serving}")
    if metadata.validated_population:
        population = metadata.validated_population
        console.print(f"validated  {', '.join(population.get('populations', []))}; "
                      f"views {', '.join(population.get('views', []))}; ages {population.get('age_years')}")
    if metrics:
        for name in ("auc", "sensitivity", "specificity", "precision", "f1", "accuracy"):
            if name in metrics and metrics[name] is not None:
                ci = metrics.get(f"{name}_ci95") or [float("nan")] * 2
                console.print(f"val {name:<12}{metrics[name]:.4f}  (95% CI {ci[0]:.4f}–{ci[1]:.4f})")
    console.print_json(json.dumps({"preprocessing": metadata.preprocessing,
                                   "training_data": metadata.training_data}))


app.command("train")(train_command)
app.command("evaluate")(evaluate_command)
app.command("validation-report")(validation_report_command)
app.add_typer(model_app, name="model")
