"""Everything the GPU machine lacks, in one ignored folder that travels with the working tree.

The lent GPU machine (Python 3.12, torch 2.11 CUDA, transformers, peft, accelerate, pandas, xxhash,
fsspec, ... already installed) reaches no package index and no model hub, and at most 64 MiB travel
to it (working tree + carried folders). This writes into ``.gpu-bundle/``:

* ``wheels/``: the packages the image lacks, for CPython 3.12 manylinux x86_64, one version each, with
  their own missing dependencies (``WHEELS``; the versions are the ones this project is tested with);
* ``tokenizer/``: the SmolLM2 tokenizer files (3.4 MB), so bench/models.py can build its random-weight
  SmolLM2-1.7B without the 98 MB GGUF package;
* ``MANIFEST.json``: every file and its size, and the total with the working tree.

It prints the total and exits 1 if the working tree plus the bundle exceed the limit.

    python bench/gpu_bundle.py            # or: make gpu-bundle
    python bench/gpu_bundle.py --plan     # the file list and versions only, nothing downloaded
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

LIMIT_BYTES = 64 * 2**20
OUT = ROOT / ".gpu-bundle"
# Missing from the GPU image (its package list: /work/.library/device/KINDS.md), with the missing parts
# of their own requirements: datasets and evaluate need dill and multiprocess. The image's transformers (5.17)
# predates the generation API we use (``cache=`` and ``step.cache``: every evaluation fails there), so the tested
# transformers travels with what it needs that the image lacks or has too old (huggingface_hub 2.x and its
# httpx2/httpcore2/truststore; kernels and tomlkit, which transformers 5.25 imports when loading a model), and
# the tested peft with it. Checked on CPU in a venv with the image's transformers 5.17 and huggingface_hub 1.33
# and these wheels on PYTHONPATH: tests/test_bench, test_modeling, test_curve and test_techniques pass.
WHEELS = {"transformers": "5.25.0", "huggingface_hub": "2.4.0", "httpx2": "2.16.2", "httpcore2": "2.16.2",
          "truststore": "0.10.5", "kernels": "0.19.1", "tomlkit": "0.15.3", "peft": "0.21.2", "trl": "1.16.0",
          "bitsandbytes": "0.50.2", "datasets": "5.2.0", "evaluate": "0.4.6", "gguf": "0.19.0", "dill": "0.4.1",
          "multiprocess": "0.70.19"}
# bitsandbytes ships one CUDA library per toolkit (129 MB unpacked); the image's torch is built for CUDA 13, so
# the bundle keeps the CUDA 13 libraries and the CPU one, and the wheel fits beside transformers.
BNB_KEEP_CUDA = ("cuda13",)
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_24_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64", "manylinux1_x86_64"]
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")


def plan() -> dict:
    """What the bundle holds, without downloading anything."""
    return {"wheels": [f"{name}=={version}" for name, version in WHEELS.items()],
            "tokenizer": list(TOKENIZER_FILES), "python": "3.12", "platforms": PLATFORMS}


def working_tree_bytes(root: Path = ROOT) -> int:
    """Bytes of what travels besides carried folders: tracked files and untracked files git does not ignore."""
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=root,
                         capture_output=True, check=True).stdout.decode()
    return sum((root / p).stat().st_size for p in out.split("\0") if p and (root / p).is_file())


def check_size(bundle_bytes: int, tree_bytes: int, limit: int = LIMIT_BYTES) -> str:
    """One line with the total; raises SystemExit naming the sizes when it is over the limit."""
    total = bundle_bytes + tree_bytes
    line = (f"bundle {bundle_bytes / 2**20:.1f} MiB + working tree {tree_bytes / 2**20:.1f} MiB = "
            f"{total / 2**20:.1f} MiB of {limit / 2**20:.0f} MiB")
    if total > limit:
        raise SystemExit(f"too large to travel: {line}; drop a wheel or move files out of the working tree")
    return line


def download(out: Path) -> None:
    wheels = out / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    platform_args = [a for p in PLATFORMS for a in ("--platform", p)]
    for spec in plan()["wheels"]:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                        "--python-version", "3.12", "--implementation", "cp", *platform_args, "-d", str(wheels), spec],
                       check=True)


def slim_bitsandbytes(wheels: Path, keep: tuple[str, ...] = BNB_KEEP_CUDA) -> None:
    """Rewrite the bitsandbytes wheel without the CUDA libraries of other toolkits (RECORD updated to match)."""
    import zipfile

    for whl in wheels.glob("bitsandbytes-*.whl"):
        def dropped(name: str) -> bool:
            lib = Path(name).name
            return lib.startswith("libbitsandbytes_cuda") and not lib.startswith(tuple(f"libbitsandbytes_{k}"
                                                                                       for k in keep))
        tmp = whl.with_suffix(".tmp")
        with zipfile.ZipFile(whl) as src, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as dst:
            for item in src.infolist():
                if dropped(item.filename):
                    continue
                data = src.read(item)
                if item.filename.endswith(".dist-info/RECORD"):
                    data = "".join(line for line in data.decode().splitlines(keepends=True)
                                   if not dropped(line.split(",")[0])).encode()
                dst.writestr(item, data)
        tmp.replace(whl)


def copy_tokenizer(out: Path) -> None:
    from nbatune.config import ModelConfig
    from nbatune.modeling import resolve_model_path

    src = Path(resolve_model_path(ModelConfig()))
    dst = out / "tokenizer"
    dst.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        if (src / name).is_file():
            shutil.copy2(src / name, dst / name)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--plan", action="store_true", help="print what would be bundled; download nothing")
    p.add_argument("--out", default=str(OUT))
    args = p.parse_args()
    if args.plan:
        print(json.dumps(plan(), indent=2))
        return 0
    out = Path(args.out)
    download(out)
    slim_bitsandbytes(out / "wheels")
    copy_tokenizer(out)
    files = {str(f.relative_to(out)): f.stat().st_size for f in sorted(out.rglob("*")) if f.is_file()
             and f.name != "MANIFEST.json"}
    names = [Path(f).name.split("-")[0].lower().replace("_", "-") for f in files if f.startswith("wheels/")]
    dupes = {n for n in names if names.count(n) > 1}
    if dupes:
        raise SystemExit(f"two versions of {sorted(dupes)} in {out / 'wheels'}: remove the older one")
    line = check_size(sum(files.values()), working_tree_bytes())
    (out / "MANIFEST.json").write_text(json.dumps({"files": files, "total": line}, indent=2))
    print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
