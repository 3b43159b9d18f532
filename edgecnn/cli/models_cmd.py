"""`edgecnn models`: the model zoo with parameter counts, default input sizes and which ones ship pretrained."""

from __future__ import annotations

from typing import Annotated

import typer

from edgecnn.cli.common import cli_command, print_json, results


def zoo_rows() -> list[dict]:
    """One row per registered model. Models are built on PyTorch's 'meta' device: shapes only, no memory, fast."""
    from edgecnn.errors import require_torch
    from edgecnn.models.registry import count_parameters, create_model, list_models

    torch = require_torch()
    rows = []
    with torch.device("meta"):
        for entry in list_models():
            model = create_model(entry.name)
            pre = entry.preprocess
            rows.append(
                {
                    "name": entry.name,
                    "parameters": count_parameters(model),
                    "num_classes": model(torch.empty(1, 3, *pre.input_size)).shape[1],
                    "input_size": list(pre.input_size),
                    "resize": pre.resize,
                    "mean": list(pre.mean),
                    "std": list(pre.std),
                    "pretrained": entry.pretrained,
                    "description": entry.description,
                }
            )
    return rows


def register(app: typer.Typer) -> None:
    @app.command("models")
    @cli_command
    def models(
        json_out: Annotated[bool, typer.Option("--json", help="Print the zoo as JSON on stdout.")] = False,
    ):
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
