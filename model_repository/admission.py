"""A guarded model: the python model `<name>_guard` (`python_models/guard.py`) in front of a large
model `<name>`, taking over its dynamic batching, queue limit and response cache.

Why: the guard is where requests are admitted (batches no larger than the memory allows, see
`memory.py`; beyond the queue limit UNAVAILABLE at once), and the process that survives the large
model's stub, so that a request it loses comes back UNAVAILABLE (retryable), not INTERNAL. The
large model keeps its name, files and warm-up, runs the guard's batch as one request, and has
neither batching nor cache of its own. One guard instance per instance of the large model: each
holds at most one batch there, which is what the memory budget counts.
"""

from __future__ import annotations

import dataclasses

from .definitions import ModelDefinition, Runtime

SUFFIX = "_guard"


def guard_name(model: str) -> str:
    return model + SUFFIX


def guarded(model: ModelDefinition) -> tuple[ModelDefinition, ModelDefinition]:
    """(the guard, the model behind it). A batched `model` hands the guard its batching, queue
    limit and cache; an unbatched one (DatasetDM's feature extractor) is guarded for its failures
    alone, one request at a time."""
    parameters = {"inner_model": model.name}
    if model.dynamic_batching is not None:
        # The settings' limits: `memory.fit_repository` lowers the written ones to what fits, never above these.
        parameters["settings_max_batch_size"] = str(model.max_batch_size)
        parameters["settings_preferred_batch_sizes"] = ",".join(map(str, model.dynamic_batching.preferred_batch_sizes))
    guard = ModelDefinition(
        name=guard_name(model.name),
        runtime=Runtime.PYTHON,
        python_source="guard.py",
        inputs=model.inputs,
        outputs=model.outputs,
        max_batch_size=model.max_batch_size,
        instances=model.instances,
        dynamic_batching=model.dynamic_batching,
        response_cache=model.response_cache,
        parameters=parameters,
    )
    return guard, dataclasses.replace(model, dynamic_batching=None, response_cache=False)
