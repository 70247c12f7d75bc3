"""Build the payload that travels to the GPU machine with the working tree (see benchmarks/gpu/README.md).

    python benchmarks/gpu/pack.py [--config configs/glue-kd-gpu.yaml] [--out .gpu-payload] [--data-root DIR]

Writes OUT/ (git-ignored):
  glue.tar.xz          every GLUE file the config's tasks read (train/dev/test splits that exist),
                       relative to the data root, compressed with xz -9
  encoder-fp16.tar     the default encoder (mtkd.encoders.resolve_encoder("default")): config and
                       tokenizer files as they are, model.safetensors with every floating tensor
                       halved to fp16 (run.sh turns it back into an fp32 folder: the weights it trains
                       from are fp16-rounded, which run.sh says in its results)
  MANIFEST.json        name, bytes, sha256 of each payload file; the files inside each archive;
                       the working-tree size (`git ls-files`) and the total against the 64 MiB limit

The GPU machine receives the tracked and untracked-not-ignored files plus the paths named in
`carry` (here: OUT), 64 MiB in all. Prints the sizes; exits 1 if the total does not fit.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import lzma
import subprocess
import sys
import tarfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "src"))

LIMIT = 64 * 2**20
ENCODER_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")


from mtkd.files import file_fingerprint as sha256  # noqa: E402  (src is on the path above)


def data_files(config: Path, root: Path) -> list[str]:
    """Every split file the config's tasks name (relative to the data root), that exists there."""
    from mtkd.config import load_config
    from mtkd.tasks import load_task_specs

    cfg = load_config(config)
    specs = load_task_specs({n: o.override for n, o in cfg.tasks.items()}, cfg.tasks_file)
    files, absent = set(), []
    for spec in specs.values():
        for split, src in spec.splits.items():
            p = Path(src.path)
            rel = p.relative_to(root) if p.is_absolute() else p
            (files.add(str(rel)) if (root / rel).is_file() else absent.append(f"{spec.name}/{split}: {rel}"))
    for a in absent:
        print(f"  not in the data root (skipped; a missing test split is not an error in mtkd): {a}")
    return sorted(files)


def pack_data(root: Path, files: list[str], dest: Path) -> list[dict]:
    members = []
    with lzma.open(dest, "wb", preset=9) as xz, tarfile.open(fileobj=xz, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for rel in files:
            p = root / rel
            info = tarfile.TarInfo(f"glue/{rel}")
            info.size, info.mtime, info.mode = p.stat().st_size, 0, 0o644
            with open(p, "rb") as f:
                tar.addfile(info, f)
            members.append({"path": rel, "bytes": info.size, "sha256": sha256(p)})
    return members


def pack_encoder(src: Path, dest: Path) -> list[dict]:
    import torch
    from safetensors.torch import load_file, save

    tensors = load_file(src / "model.safetensors")
    n_fp32 = sum(t.is_floating_point() and t.dtype == torch.float32 for t in tensors.values())
    halved = {k: (t.half() if t.is_floating_point() else t).contiguous() for k, t in tensors.items()}
    blobs = {"model.safetensors": save(halved, metadata={"format": "pt", "mtkd_note": "fp16 copy of the fp32 weights"})}
    for name in ENCODER_FILES:
        if (src / name).is_file():
            blobs[name] = (src / name).read_bytes()
    members = []
    with tarfile.open(dest, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in blobs.items():
            info = tarfile.TarInfo(f"encoder-fp16/{name}")
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            tar.addfile(info, io.BytesIO(data))
            members.append({"path": name, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()})
    print(f"  encoder: {len(tensors)} tensors ({n_fp32} fp32 -> fp16) from {src}")
    return members


def tree_bytes() -> int:
    """Bytes of the files that travel without `carry`: tracked + untracked-not-ignored."""
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                         capture_output=True, check=True).stdout
    return sum((REPO / p).stat().st_size for p in out.decode().split("\0") if p and (REPO / p).is_file())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", type=Path, default=REPO / "configs/glue-kd-gpu.yaml")
    ap.add_argument("--out", type=Path, default=REPO / ".gpu-payload")
    ap.add_argument("--data-root", type=Path, default=None, help="default: data.root -> $MTKD_DATA_ROOT -> ../shared/data/glue")
    ap.add_argument("--encoder", default="default", help="encoder to halve (default: the bundled default encoder)")
    args = ap.parse_args(argv)

    from mtkd.data import resolve_data_root
    from mtkd.encoders import resolve_encoder

    root = Path(resolve_data_root(args.data_root)).resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    files = data_files(args.config, root)
    print(f"data: {len(files)} files from {root}")
    data_members = pack_data(root, files, args.out / "glue.tar.xz")
    enc_members = pack_encoder(Path(resolve_encoder(args.encoder)), args.out / "encoder-fp16.tar")

    payload = [{"name": n, "bytes": (args.out / n).stat().st_size, "sha256": sha256(args.out / n)}
               for n in ("glue.tar.xz", "encoder-fp16.tar")]
    tree = tree_bytes()
    total = tree + sum(p["bytes"] for p in payload)
    manifest = {"config": str(args.config.relative_to(REPO) if args.config.is_relative_to(REPO) else args.config),
                "data_root": str(root), "encoder": args.encoder, "payload": payload,
                "glue_files": data_members, "encoder_files": enc_members,
                "raw_data_bytes": sum(m["bytes"] for m in data_members),
                "working_tree_bytes": tree, "total_bytes": total, "limit_bytes": LIMIT}
    (args.out / "MANIFEST.json").write_text(json.dumps(manifest, indent=2) + "\n")
    mib = lambda b: f"{b / 2**20:.2f} MiB"  # noqa: E731
    print(f"  glue.tar.xz       {mib(payload[0]['bytes'])} (raw {mib(manifest['raw_data_bytes'])})")
    print(f"  encoder-fp16.tar  {mib(payload[1]['bytes'])}")
    print(f"  working tree      {mib(tree)} (tracked + untracked-not-ignored)")
    print(f"total {mib(total)} of {mib(LIMIT)}: {'fits' if total <= LIMIT else 'DOES NOT FIT'} "
          f"({mib(LIMIT - total)} to spare)")
    return 0 if total <= LIMIT else 1


if __name__ == "__main__":
    sys.exit(main())
