"""Lays out a Triton model repository: `<repo>/<model>/configs/{cpu,gpu}.pbtxt` (chosen at start
with `--model-config-name`), `<repo>/<model>/1/` with the model file(s).

The exporters write ONNX files into `version_dir(...)`, then `write_models` writes the configs
and python sources for every definition; both HQ-SAM and DatasetDM go through here.
"""

from __future__ import annotations

import shutil
from importlib import resources
from pathlib import Path

from perceptserve.settings import DeploymentTarget, Settings

from . import configs
from .definitions import ModelDefinition, Runtime

VERSION = "1"
ONNX_RUNNER = "onnx_runner.py"


def version_dir(repository: Path, model: str) -> Path:
    """Where `model`'s files live; only a path (readers must not create folders)."""
    return Path(repository) / model / VERSION


def remove_models(repository: Path, models: tuple[str, ...]) -> None:
    """Delete these models' folders (a previous export of the same family); others stay."""
    for model in models:
        shutil.rmtree(Path(repository) / model, ignore_errors=True)


def recorded_parameter(repository: Path, model: str, key: str) -> str | None:
    """A parameter of a model's written config (its `cpu` one), None where there is none."""
    path = Path(repository) / model / "configs" / f"{DeploymentTarget.CPU.value}.pbtxt"
    if not path.is_file():
        return None
    parameters = configs.parse(path.read_text()).parameters
    return parameters[key].string_value if key in parameters else None


def _python_source(name: str) -> Path:
    return Path(str(resources.files("perceptserve.model_repository.python_models") / name))


def write_models(repository: Path, definitions: list[ModelDefinition], settings: Settings) -> list[Path]:
    """Write configs and python sources; return the config files written."""
    written = []
    for definition in definitions:
        folder = version_dir(repository, definition.name)
        folder.mkdir(parents=True, exist_ok=True)
        source = definition.python_source if definition.runtime is Runtime.PYTHON else None
        if definition.runtime is Runtime.ONNX:
            if not (folder / configs.ONNX_FILE).exists():
                raise FileNotFoundError(f"{folder / configs.ONNX_FILE} is missing: export the model first")
            source = ONNX_RUNNER
        if source:
            shutil.copyfile(_python_source(source), folder / "model.py")
        has_plan = (folder / configs.PLAN_FILE).exists()
        cpu_file = configs.cpu_onnx_file(folder).name
        config_dir = Path(repository) / definition.name / "configs"
        config_dir.mkdir(parents=True, exist_ok=True)
        for target in DeploymentTarget:
            path = config_dir / f"{target.value}.pbtxt"
            path.write_text(
                configs.to_text(configs.render(definition, target, settings, has_plan=has_plan, cpu_file=cpu_file))
            )
            written.append(path)
    return written
