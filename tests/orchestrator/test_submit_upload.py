"""What `trilevel submit` uploads: source only. Weights and any large file stay local, each named.

The package is built with Ray's own packager (`create_package`, what `submit_job` zips) from a
folder that holds source next to a weights folder, data and a large stray file.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

from orchestrator.job_upload import LARGE_FILE_BYTES, large_files, upload_excludes
from orchestrator.jobs import mlflow_hint


def _sparse(path: Path, size: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as fh:
        fh.truncate(size)  # a real file of that size, without writing the bytes


def test_weights_and_large_files_stay_out_of_the_upload_each_named(tmp_path):
    from ray._private.runtime_env.packaging import create_package

    root = tmp_path / "src"
    (root / "orchestrator").mkdir(parents=True)
    (root / "orchestrator" / "__init__.py").write_text("")
    (root / "notes.md").write_text("small and kept")
    _sparse(root / "weights" / "RRDB_ESRGAN_x4.pth", 3 * LARGE_FILE_BYTES)
    _sparse(root / "vgg19-dcbb9e9d.pth", 2 * LARGE_FILE_BYTES)
    _sparse(root / "data" / "set5" / "part-00000.parquet", 2 * LARGE_FILE_BYTES)
    _sparse(root / "scratch" / "capture.bin", LARGE_FILE_BYTES + 1)
    (root / ".gitignore").write_text("ignored-by-git.bin\n")
    _sparse(root / "ignored-by-git.bin", 2 * LARGE_FILE_BYTES)

    assert large_files(str(root)) == [("scratch/capture.bin", LARGE_FILE_BYTES + 1)]
    said: list[str] = []
    excludes = upload_excludes(str(root), said.append)
    assert len(said) == 1 and said[0].startswith("Not uploading scratch/capture.bin (8 MiB)")

    package = tmp_path / "package.zip"
    create_package(str(root), package, include_gitignore=True, excludes=excludes)
    names = set(zipfile.ZipFile(package).namelist())
    assert {"orchestrator/__init__.py", "notes.md"} <= names
    for left_out in ("weights/", "vgg19-dcbb9e9d.pth", "data/", "scratch/capture.bin", "ignored-by-git.bin"):
        assert not any(name.startswith(left_out) for name in names), left_out


def test_the_mlflow_hint_is_one_a_laptop_can_open():
    in_cluster = mlflow_hint("http://mlflow:5000")
    assert "kubectl port-forward svc/mlflow 5000:5000" in in_cluster and "http://127.0.0.1:5000" in in_cluster
    fqdn = mlflow_hint("http://mlflow.trilevel-nas.svc.cluster.local:5000")
    assert "kubectl -n trilevel-nas port-forward svc/mlflow 5000:5000" in fqdn
    assert mlflow_hint("https://mlflow.example.com") == "MLflow:   https://mlflow.example.com"
    assert mlflow_hint("http://127.0.0.1:5000") == "MLflow:   http://127.0.0.1:5000"
    assert "mlflow ui --backend-store-uri sqlite:////mnt/trilevel/mlflow.db" in mlflow_hint(
        "sqlite:////mnt/trilevel/mlflow.db"
    )
