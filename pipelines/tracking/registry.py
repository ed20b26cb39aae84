"""Log a vitpipe export as an MLflow pyfunc model into a run and register it.

    uri = log_and_register(target, run_dir / "export", registered_name="vit-digits",
                           input_example=images[:2])          # uint8 (N, H, W, 3)
    mlflow.pyfunc.load_model(uri).predict(images)           # int64 class ids (N,)

The model (see `pipelines.tracking.pyfunc_model`) is logged as a LoggedModel of the target's
experiment, linked to the target's run, with the export directory as its artifact, and a version
of `registered_name` is created from it in the same tracking store (SQLite and `mlflow server`
stores both have the Model Registry). The run is not ended: its owner sets its status.

MLflow's `Model.log` (and the SQL registry store, to resolve a `models:/<model_id>` source) only
talk to the process-wide tracking URI; it is set to the target's for the duration of the call and
put back afterwards. No active run is used. Requirements are written from
the installed versions, never inferred (inference starts a subprocess and may reach for the
network); the model needs vitpipe itself installed where it is loaded.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path

import numpy as np

from pipelines.errors import CheckpointError, TrackingError
from pipelines.tracking.mlflow_run import TrackingTarget, absolute_uri

log = logging.getLogger(__name__)
MODEL_NAME = "model"
_REQUIREMENTS = ("vitpipe", "torch", "torchvision", "safetensors", "numpy")


def log_and_register(
    target: TrackingTarget,
    export_dir: Path,
    *,
    registered_name: str,
    input_example: np.ndarray,
) -> str:
    """Log `export_dir` as a pyfunc model into `target`'s run, register it, return
    `models:/<registered_name>/<version>`.

    `input_example`: a few uint8 (N, H, W, 3) RGB images; they are stored with the model and run
    through it before anything is logged (a broken export fails here, not at serving time). The
    signature is uint8 (-1, -1, -1, 3) -> int64 (-1,): any batch size and image size.
    """
    import mlflow
    from mlflow.models import Model, ModelSignature
    from mlflow.pyfunc import PythonModelContext
    from mlflow.tracking import MlflowClient
    from mlflow.types import Schema, TensorSpec

    from pipelines.tracking.pyfunc_model import ViTClassifier, check_images, read_export_info

    export_dir = Path(export_dir).resolve()
    if not registered_name or not registered_name.strip():
        raise ValueError("registered_name must be a non-empty model name")
    try:
        read_export_info(export_dir)
    except (ValueError, OSError) as err:
        raise CheckpointError(str(err)) from None
    check_images(input_example)
    if input_example.shape[0] == 0:
        raise ValueError("input_example needs at least one image")

    local = ViTClassifier()
    try:
        local.load_context(
            PythonModelContext(artifacts={"export": str(export_dir)}, model_config={})
        )
        output_example = local.predict(None, input_example)
    except (ValueError, RuntimeError, OSError) as err:
        raise CheckpointError(f"{export_dir}: the export does not load or run: {err}") from err
    signature = ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, -1, -1, 3))]),
        outputs=Schema([TensorSpec(np.dtype(output_example.dtype), (-1,))]),
    )

    uri = absolute_uri(target.uri)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    logged = None
    try:
        logged = client.create_logged_model(
            experiment_id=target.experiment_id,
            name=MODEL_NAME,
            source_run_id=target.run_id,
            tags={"vitpipe.export_dir": str(export_dir)},
        )
        with use_tracking_uri(uri):
            Model.log(
                artifact_path=None,
                name=MODEL_NAME,
                flavor=mlflow.pyfunc,
                run_id=target.run_id,
                model_id=logged.model_id,
                python_model=ViTClassifier(),
                artifacts={"export": str(export_dir)},
                signature=signature,
                input_example=input_example,
                pip_requirements=_pip_requirements(),
            )
            # the SQL registry store looks the logged model up through the global URI, too
            _ensure_registered_model(client, registered_name)
            version = client.create_model_version(
                name=registered_name,
                source=f"models:/{logged.model_id}",
                run_id=target.run_id,
                model_id=logged.model_id,
            )
    except Exception as err:
        if logged is not None:
            _mark_failed(client, logged.model_id)
        raise TrackingError(
            f"could not log and register {registered_name!r} in {target.uri} "
            f"(run {target.run_id}): {type(err).__name__}: {err}"
        ) from err
    model_uri = f"models:/{registered_name}/{version.version}"
    log.info("registered %s (logged model %s)", model_uri, logged.model_id)
    return model_uri


def load_registered(model_uri: str, *, tracking_uri: str):
    """`mlflow.pyfunc.load_model(model_uri)` against `tracking_uri` (the registry too, unless a
    registry URI was set process-wide), leaving the process-wide URI as it was.

    `model_uri` is what `log_and_register` returned, e.g. `models:/vit-digits/3`."""
    import mlflow.pyfunc

    with use_tracking_uri(absolute_uri(tracking_uri)):
        return mlflow.pyfunc.load_model(model_uri)


@contextmanager
def use_tracking_uri(uri: str) -> Iterator[None]:
    """Point MLflow's process-wide tracking URI (hence registry URI, unless one is set) at `uri`
    for the block, then put back what was there (nothing, if nothing was set)."""
    import mlflow
    from mlflow.tracking import is_tracking_uri_set

    previous = mlflow.get_tracking_uri() if is_tracking_uri_set() else None
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous)


def _mark_failed(client, model_id: str) -> None:
    """A LoggedModel left PENDING by an error becomes FAILED (best effort: the error matters)."""
    try:
        if str(client.get_logged_model(model_id).status) == "PENDING":
            client.finalize_logged_model(model_id, "FAILED")
    except Exception as err:
        log.warning("could not mark logged model %s FAILED: %s", model_id, err)


def _ensure_registered_model(client, name: str) -> None:
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS, ErrorCode

    try:
        client.create_registered_model(name)
    except MlflowException as err:
        if err.error_code != ErrorCode.Name(RESOURCE_ALREADY_EXISTS):
            raise


def _pip_requirements() -> list[str]:
    """Pinned to what is installed (local version labels such as +cu130 dropped)."""
    pins = []
    for name in _REQUIREMENTS:
        try:
            version = metadata.version(name)
        except metadata.PackageNotFoundError:
            log.warning("%s is not installed as a package; the MLflow model omits it", name)
            continue
        pins.append(f"{name}=={version.split('+')[0]}")
    return pins
