"""The public API keeps its documented shape, and `import flashscenic` stays light."""

import inspect
import subprocess
import sys

import flashscenic


def test_get_aucell_signature():
    params = inspect.signature(flashscenic.get_aucell).parameters
    documented = {"exp_array": inspect.Parameter.empty, "k": 50, "auc_threshold": 0.05,
                  "device": "cuda", "batch_size": 32, "seed": None}
    assert list(params)[:7] == ["exp_array", "adj_array", "k", "auc_threshold", "device", "batch_size", "seed"]
    for name, default in documented.items():
        assert params[name].default == default, name
    assert params["ties"].default == "pyscenic"


def test_public_names_resolve():
    for name in flashscenic.__all__:
        assert getattr(flashscenic, name) is not None, name


def test_import_is_light():
    code = "import sys, flashscenic; print(sorted(m for m in ('torch', 'dask', 'zarr', 'regdiffusion') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_binarize_stays_the_module_function_after_binarization_is_imported():
    code = ("import flashscenic, flashscenic.binarization, flashscenic.modules; "
            "print(flashscenic.binarize is flashscenic.modules.binarize)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "True"
