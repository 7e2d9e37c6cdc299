"""``srgan-export``: a trained model in a format other tools read (ONNX).

srgan-export model=outputs/demo/<run> format=onnx
srgan-export model=models:/<name>/<version> format=onnx output=model.onnx

The graph and its check are :func:`srgan.deploy.export_onnx`; this module only assembles. The
report (the graph's inputs and outputs, units, and the onnxruntime-against-torch errors per tile
size) is printed and written beside the file as ``<output>.json``. An existing output is an error
unless ``overwrite=true``; nothing is written unless every check passes.
"""

from __future__ import annotations

import json
from pathlib import Path

import hydra
from omegaconf import DictConfig

from srgan.cli import user_errors
from srgan.config import CONF_DIR, ConfigError, ExportConfig, validate_entry_config
from srgan.model_source import resolve_model


def _output(options: ExportConfig, model_dir: Path) -> Path:
    if options.output is not None:
        return Path(options.output)
    if not Path(options.model).exists():
        raise ConfigError(f"model={options.model!r} is an MLflow URI: give output=<file>.onnx")
    return model_dir / "generator.onnx"


@hydra.main(config_path=str(CONF_DIR), config_name="export", version_base="1.3")
@user_errors("srgan-export")
def main(cfg: DictConfig) -> None:
    from srgan.deploy import export_onnx
    from srgan.engine.checkpoint import load_model

    options: ExportConfig = validate_entry_config(ExportConfig, cfg, ())
    model = load_model(resolve_model(options.model, options.tracking_uri))
    output = _output(options, model.directory)
    report_file = output.with_name(output.name + ".json")
    for path in (output, report_file):
        if path.exists() and not options.overwrite:
            raise FileExistsError(f"{path} exists; pass overwrite=true to replace it")
    report = export_onnx(model, output, options.opset, tuple(options.check_sizes), options.atol)
    report["model"] = str(options.model)
    report_file.write_text(json.dumps(report, indent=1))
    worst = max(c["relative_error"] for c in report["checks"])
    sizes = ", ".join("x".join(map(str, c["lr_size"])) for c in report["checks"])
    print(
        f"exported {options.model} -> {output} (ONNX opset {options.opset}, dynamic batch/height/width, "
        f"input and output in the raster's units); onnxruntime vs torch on LR tiles {sizes}: "
        f"max relative error {worst:.2e} (limit {options.atol:g}); report {report_file}"
    )


if __name__ == "__main__":
    main()
