"""Pack what a lent GPU machine lacks into ``.dev/`` (git-ignored), under the device tool's 64 MiB
carry limit, for ``benchmarks/gpu_search_check.py``:

- Ray, Nevergrad and the dependencies the machine's image lacks, as Python 3.12 wheels unpacked
  and xz-compressed (x86 filter): Ray's Java jars, RLlib, Serve, LLM and dashboard UI left out,
  its three binaries stripped. Ray's wheel alone (79 MB) is over the limit.
- MiniLM-L6 as float16 byte planes (float32 again on the machine; outputs within 0.01 of the
  float32 model). Rows of the word-embedding table for tokens that no pair text contains are
  zeroed: they reach no output on these pairs, and zeros compress.
- The AlpacaEval pairs' four used columns, uncompressed Parquet inside xz.

    python3 benchmarks/device_bundle.py --pairs-dir ../shared/data/pairs/alpaca_eval   # ~8 min, 2 CPUs

Then the device tool, carry [".dev"], command (session 31: 65 MB carried, unpacked in 20 s):

    python3 .dev/setup.py && export PYTHONPATH=/tmp/dev/site:$PWD CUDA_VISIBLE_DEVICES=0 && \\
    python3 benchmarks/gpu_search_check.py --pairs-dir /tmp/dev/pairs --model /tmp/dev/minilm
"""
from __future__ import annotations

import argparse
import json
import lzma
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from importlib.metadata import version
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
# Installed here, missing from the GPU image (its package list: the device tool's KINDS.md).
WHEELS = ["ray", "nevergrad", "cma", "bayesian-optimization", "directsearch", "jsonschema", "jsonschema-specifications",
          "referencing", "rpds-py", "tensorboardX", "pydantic", "pydantic_core", "annotated-types",
          "typing-inspection", "colorful", "jsonpointer", "rfc3339-validator", "sniffio"]
LEFT_OUT = ["ray/jars", "ray/rllib", "ray/serve", "ray/llm", "ray/dashboard/client/build"]
RAY_BINARIES = ["ray/_raylet.so", "ray/core/src/ray/raylet/raylet", "ray/core/src/ray/gcs/gcs_server"]
PAIR_COLUMNS = ["instruction", "output_a", "output_b", "label"]
XZ_FILTERS = [{"id": lzma.FILTER_X86}, {"id": lzma.FILTER_LZMA2, "preset": 9 | lzma.PRESET_EXTREME}]

SETUP = '''"""Unpacks benchmarks/device_bundle.py's .dev/ to /tmp/dev (site, minilm, pairs)."""
import json, lzma, tarfile
from pathlib import Path
import numpy as np, torch
from safetensors.torch import save_file
here = Path(__file__).parent
for name in ("site", "data"):
    with tarfile.open(here / f"{name}.tar.xz") as tar:
        tar.extractall("/tmp/dev", filter="fully_trusted")
lo, hi = (np.frombuffer(lzma.decompress((here / f"{p}.bin.xz").read_bytes()), np.uint8) for p in ("lo", "hi"))
half, tensors, at = np.stack([lo, hi], axis=1).reshape(-1).view(np.float16), {}, 0
for key, shape, dtype in json.loads(Path("/tmp/dev/minilm/planes.json").read_text()):
    n = int(np.prod(shape))
    tensors[key] = torch.from_numpy(half[at:at + n].astype(dtype).reshape(shape))
    at += n
assert at == half.size, (at, half.size)
save_file(tensors, "/tmp/dev/minilm/model.safetensors")
print("unpacked to /tmp/dev:", len(tensors), "tensors", flush=True)
'''


def unpacked_site(folder: Path) -> Path:
    """The wheels, downloaded for CPython 3.12 on x86-64 and unpacked into ``folder/site``."""
    wheels, site = folder / "wheels", folder / "site"
    pins = [f"{name}=={version(name)}" for name in WHEELS]
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                    "--python-version", "3.12", "--implementation", "cp", "--platform", "manylinux_2_28_x86_64",
                    "--platform", "manylinux_2_17_x86_64", "--platform", "manylinux2014_x86_64", "-d", str(wheels),
                    *pins], check=True)
    for wheel in wheels.glob("*.whl"):
        with zipfile.ZipFile(wheel) as z:
            z.extractall(site)
    for path in LEFT_OUT:
        shutil.rmtree(site / path, ignore_errors=True)
    if shutil.which("strip"):
        subprocess.run(["strip", "--strip-unneeded", *(str(site / b) for b in RAY_BINARIES)], check=True)
    for binary in [*site.rglob("*.so"), *(site / b for b in RAY_BINARIES)]:
        binary.chmod(0o755)  # zip extraction drops the executable bits
    return site


def write_xz_tar(out: Path, members: dict[str, Path]) -> None:
    with lzma.open(out, "wb", format=lzma.FORMAT_XZ, filters=XZ_FILTERS) as xz, tarfile.open(fileobj=xz, mode="w") as tar:
        for name, path in members.items():
            tar.add(path, arcname=name)


def used_tokens(tokenizer, pair_files: list[Path]) -> np.ndarray:
    """True for every token id that some text of the pairs (or a special token) contains."""
    import pyarrow.parquet as pq

    used = np.zeros(len(tokenizer), bool)
    used[:1000] = True  # [PAD], [UNK], [CLS], [SEP], [MASK] and the unused ids
    for path in pair_files:
        table = pq.read_table(path, columns=PAIR_COLUMNS[:3])
        for column in table.column_names:
            texts = table.column(column).to_pylist()
            for start in range(0, len(texts), 2000):
                for ids in tokenizer(texts[start:start + 2000])["input_ids"]:
                    used[ids] = True
    return used


def model_planes(model_dir: Path, used: np.ndarray, out: Path, meta_file: Path) -> None:
    """float16 weights split into low and high bytes (the high bytes compress), each xz-compressed."""
    from safetensors.torch import load_file

    planes, meta = ([], []), []
    for key, tensor in load_file(model_dir / "model.safetensors").items():
        half = tensor.half().numpy().copy()
        if key.endswith("word_embeddings.weight"):
            half[~used[:half.shape[0]]] = 0
        two = half.view(np.uint8).reshape(-1, 2)
        planes[0].append(two[:, 0].copy())
        planes[1].append(two[:, 1].copy())
        meta.append([key, list(tensor.shape), str(tensor.dtype).removeprefix("torch.")])
    meta_file.write_text(json.dumps(meta))
    for name, plane in zip(("lo", "hi"), planes):
        (out / f"{name}.bin.xz").write_bytes(lzma.compress(np.concatenate(plane).tobytes(), preset=9))


def main() -> int:
    import pyarrow.parquet as pq
    from transformers import AutoTokenizer

    from trainers.embed import default_model_dir

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pairs-dir", required=True, help="a folder with the AlpacaEval train.parquet and test.parquet")
    p.add_argument("--model", help="the encoder folder (default: MiniLM-L6 from its package)")
    args = p.parse_args()
    model_dir, out = Path(args.model or default_model_dir()), ROOT / ".dev"
    pair_files = [Path(args.pairs_dir) / f"{split}.parquet" for split in ("train", "test")]
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_xz_tar(out / "site.tar.xz", {"site": unpacked_site(tmp)})
        (tmp / "pairs").mkdir()
        for path in pair_files:
            pq.write_table(pq.read_table(path, columns=PAIR_COLUMNS), tmp / "pairs" / path.name, compression="none")
        shutil.copytree(model_dir, tmp / "minilm", ignore=shutil.ignore_patterns("*.safetensors", "*.bin"))
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        model_planes(model_dir, used_tokens(tokenizer, pair_files), out, tmp / "minilm" / "planes.json")
        write_xz_tar(out / "data.tar.xz", {"pairs": tmp / "pairs", "minilm": tmp / "minilm"})
    (out / "setup.py").write_text(SETUP)
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout.split(b"\0")
    size = sum(f.stat().st_size for f in out.iterdir()) + sum((ROOT / n.decode()).stat().st_size
                                                              for n in tracked if n and (ROOT / n.decode()).is_file())
    print(f"{out}: {size / 2**20:.1f} MiB with the repo (the device tool carries at most 64 MiB)")
    return 0 if size <= 64 * 2**20 else 1


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
