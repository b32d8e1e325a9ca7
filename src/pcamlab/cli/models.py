"""``pcamlab models``: the table of model presets (parameters, MFLOPs per patch, description).

A thin adapter over :func:`pcamlab.models.model_table` (and, with ``--options``, each model's declared
options: :func:`pcamlab.models.model_option_table`), imported inside the command so ``pcamlab --help``
stays fast.
"""

from __future__ import annotations

import argparse

__all__ = ["register"]


def register(subparsers) -> None:
    """Add ``pcamlab models`` to the top-level parser (the table, then the default model's line)."""
    parser = subparsers.add_parser(
        "models",
        help="list the model presets with parameters, MFLOPs and a description",
        description="List the registered models (default options): parameters, forward MFLOPs per patch "
                    "(2 x multiply-adds of conv/linear layers) and a one-line description.",
    )
    parser.add_argument("names", nargs="*", metavar="NAME", help="models to show (default: all)")
    parser.add_argument("--options", action="store_true",
                        help="also list each model's options: default, allowed values, meaning (for model.options)")
    parser.add_argument("--input-size", type=_patch_side, default=96,
                        help="patch side in pixels for the FLOP count (default 96); a model that cannot take it shows —")
    parser.set_defaults(func=run)


def _patch_side(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a patch side in pixels, an integer >= 1 (e.g. 96); got {text!r}")
    return value


def _shown(value) -> str:
    """A default as YAML would read it; a long list of layers as its length."""
    if isinstance(value, (list, tuple)):
        text = "[" + ", ".join(_shown(item) for item in value) + "]"
        return text if len(text) <= 24 else f"[{len(value)} entries]"
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    return f"{value:g}" if isinstance(value, float) else str(value)


def _print_options(rows: list[dict], indent: str) -> None:
    name_width = max(len(row["name"]) for row in rows)
    default_width = max(len(_shown(row["default"])) for row in rows)
    allowed_width = min(48, max(len(row["allowed"]) for row in rows))  # a long list of choices runs over
    for row in rows:
        description = row["description"].replace("``", "")
        print(f"{indent}{row['name']:{name_width}s}  {_shown(row['default']):{default_width}s}  "
              f"{row['allowed']:{allowed_width}s}  {description}".rstrip())


def run(args: argparse.Namespace) -> int:
    from pcamlab.models import default_model, model_option_table, model_summary, model_table

    rows = model_table(args.names or None, args.input_size)
    name_width = max(len("model"), *(len(row["name"]) for row in rows))
    print(f"{'model':{name_width}s}  {'parameters':>11s}  {'MFLOPs':>8s}  description")
    for row in rows:
        flops = "—" if row["flops"] is None else f"{row['flops'] / 1e6:.1f}"
        print(f"{row['name']:{name_width}s}  {row['parameters']:11,d}  {flops:>8s}  {row['description']}")
        if args.options:
            _print_options(model_option_table(row["name"]), " " * (name_width + 2))
    unfit = [row["name"] for row in rows if row["flops"] is None]
    if unfit:
        print(f"—: {', '.join(unfit)} cannot take {args.input_size}x{args.input_size} patches with their default "
              "options (the feature map shrinks below 1x1, or a dense layer expects another size)")
    default = default_model()
    if default.name in (row["name"] for row in rows) and default.name not in unfit:
        summary = model_summary(default, args.input_size)
        options = ", ".join(f"{key} {value}" for key, value in default.options.items())
        print(f"default model: {default.name} with {options} (configs/default.yaml, pcamlab demo, pcamlab bench): "
              f"{summary['parameters']:,d} parameters, {summary['flops'] / 1e6:.1f} MFLOPs/patch; "
              "the rows show each model with its builder's defaults")
    if args.options and "spec" in (row["name"] for row in rows):
        from pcamlab.models.spec import layer_table

        print("spec layer types (model.options.layers: a list of these):")
        for layer in layer_table():
            print(f"  {layer['name']}: {layer['allowed']}" if not layer["keys"] else f"  {layer['name']}:")
            if layer["keys"]:
                _print_options(layer["keys"], "    ")
    return 0
