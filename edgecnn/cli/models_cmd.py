"""`edgecnn models`: the model zoo with parameter counts, default input sizes and which ones ship pretrained."""

from __future__ import annotations

import typer

from edgecnn.cli.common import add_command, json_option, print_json, results


def zoo_rows() -> list[dict]:
    """One row per registered model, each built on the CPU to count its parameters (tens of ms each). Not on the
    'meta' device: its first operation imports torch's decompositions and torch._dynamo (2-4 s, most of what
    `edgecnn models` took); and no forward pass: the class count is the builder's default."""
    import inspect

    from edgecnn.errors import require_torch
    from edgecnn.models.registry import count_parameters, create_model, list_models

    torch = require_torch()
    rows = []
    with torch.no_grad():
        for entry in list_models():
            model = create_model(entry.name)
            pre = entry.preprocess
            default = inspect.signature(entry.builder).parameters.get("num_classes")
            classes = entry.default_kwargs.get("num_classes", default.default if default else None)
            rows.append(
                {
                    "name": entry.name,
                    "parameters": count_parameters(model),
                    "num_classes": classes,
                    "input_size": list(pre.input_size),
                    "resize": pre.resize,
                    "mean": list(pre.mean),
                    "std": list(pre.std),
                    "pretrained": entry.pretrained,
                    "description": entry.description,
                }
            )
    return rows


def models(json_out: bool = json_option("Print the zoo as JSON only, on stdout.")):
    """List the model zoo: name, parameters (at the default number of classes), input size, pretrained."""
    rows = zoo_rows()
    if json_out:
        print_json(rows)
        return
    from rich.table import Table

    table = Table(title="edgecnn model zoo", title_style="bold")
    for col, kw in (
        ("name", {}),
        ("params", {"justify": "right"}),
        ("classes", {"justify": "right"}),
        ("input", {}),
        ("pretrained", {}),
        ("description", {}),
    ):
        table.add_column(col, **kw)
    for r in rows:
        table.add_row(
            r["name"],
            f"{r['parameters']:,}",
            str(r["num_classes"]),
            "×".join(map(str, r["input_size"])),
            "yes" if r["pretrained"] else "",
            r["description"],
        )
    results.print(table)


def register(app: typer.Typer) -> None:
    add_command(app, "models", models)
