"""Optional dependencies: each is imported where a feature needs it, through `require`.

keras_kd's core needs TensorFlow and Keras only. The packages below come with
an extra (`setup.cfg`), and a feature used without its extra says, in one
line, which extra to install and how — never a bare `ModuleNotFoundError`.
This module imports nothing of keras_kd (it is a leaf of the package).

| package                          | extra  | asked for by                              |
|----------------------------------|--------|-------------------------------------------|
| `ai_edge_litert`                 | export | `.tflite` files: export, parity, predictor |
| `tensorflow_datasets`            | tfds   | `keras_kd.app.datasets.tfds` (`tfds:NAME`) |
| `keras_hub`                      | demo   | `keras-kd demo lm`                         |
| `mnist1d`, `sklearn`, `matplotlib` | demo | `keras-kd demo`: its data and report      |

The `lm` extra installs keras-hub for a user's own KerasHub models;
`keras_kd.lm` works on any Keras model and imports no keras-hub itself.
"""

import importlib


class MissingExtraError(ModuleNotFoundError):
    """A feature was used without the optional extra that installs its package."""


def require(module, feature, extra):
    """Imports an optional module, or names the extra that installs it.

    Only a missing `module` (or its top-level package) becomes the one-line
    message; any other import error inside an installed package is raised
    as it is, since installing the extra would not fix it.

    Args:
        module: the dotted module name, e.g. `"ai_edge_litert.interpreter"`.
        feature: what the user called, e.g. `"keras_kd.export_student"`.
        extra: the extra of `setup.cfg` that installs `module`.

    Returns:
        The imported module.

    Raises:
        MissingExtraError: (a `ModuleNotFoundError`) if `module` is not
            installed: ``keras_kd.export_student needs the 'export' extra:
            pip install "keras-kd[export]"``.

    Example:

    ```python
    interpreter = require("ai_edge_litert.interpreter", "keras_kd.export.load_predictor", "export")
    ```
    """
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as error:
        missing = (error.name or "").split(".")[0]
        if missing != module.split(".")[0]:
            raise
        raise MissingExtraError(
            f'{feature} needs the {extra!r} extra: pip install "keras-kd[{extra}]"', name=module
        ) from None


__all__ = [
    "MissingExtraError",
    "require",
]
