"""What checking a foreign submission.zip before unpacking costs: milliseconds, one table.

`kidwhisper run-submission` reads a zip's central directory and checks entry count, total
size, free disk, compression ratios and names before writing anything
(`kidwhisper.submission.unpack.check_archive`). This times that check on zips shaped like
real and hostile submissions, beside opening the zip alone (what any unzip pays):

- a whisper-large-v3 submission: model.safetensors of 3.09 GB (float16, stored as
  package-submission stores weights), the tokenizer and configs, main.py and 20 modules;
- the same with 200 weight shards (a sharded checkpoint);
- a zip bomb: one 2 GiB member of zeros, deflated (refused).

The large members are holes in sparse files (headers declare the size, the disk holds
almost nothing), so the benchmark needs no 3 GB of disk; the check reads only the central
directory, never the data, so its cost is the same as on a real file. Each figure is the
median of `--repeats` runs.

    python benchmarks/unpack_check.py              # 50 repeats
    python benchmarks/unpack_check.py --repeats 3  # dry run
"""

from __future__ import annotations

import argparse
import statistics
import struct
import tempfile
import time
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

from kidwhisper.submission.common import SubmissionError
from kidwhisper.submission.unpack import check_archive

LARGE_V3_BYTES = 3_087_394_360  # model.safetensors of whisper-large-v3 in float16
SMALL_FILES = {  # name -> bytes, as package-submission writes them for large-v3
    "model/config.json": 1_300,
    "model/generation_config.json": 3_900,
    "model/preprocessor_config.json": 340,
    "model/tokenizer.json": 2_480_000,
    "model/tokenizer_config.json": 283_000,
    "model/vocab.json": 1_036_000,
    "model/merges.txt": 494_000,
    "model/special_tokens_map.json": 2_200,
    "model/added_tokens.json": 34_600,
    "kidwhisper_settings.json": 500,
    **{f"kidwhisper/module_{n:02d}.py": 12_000 for n in range(20)},
}


@dataclass
class Member:
    """One zip member written raw: `data` stored or deflated as given, or, when `data` is
    None, a hole of `size` bytes stored (sparse on disk; its CRC is never checked here)."""

    name: str
    size: int  # declared unpacked bytes
    data: bytes | None = None
    deflated: bool = False
    crc: int = 0


def raw_zip(path: Path, members: list[Member]) -> Path:
    """A zip with exactly these local headers, data and central directory (no zip64: every
    size under 4 GiB). Lets a test or benchmark declare what no honest writer would."""
    central = b""
    with open(path, "wb") as out:
        for member in members:
            offset, name = out.tell(), member.name.encode()
            stored = member.size if member.data is None else len(member.data)
            method = 8 if member.deflated else 0
            fields = (20, 0, method, 0, 0x21, member.crc, stored, member.size, len(name), 0)
            out.write(struct.pack("<4s5H3L2H", b"PK\x03\x04", *fields) + name)
            if member.data is None:
                out.seek(stored, 1)  # a hole: nothing allocated
            else:
                out.write(member.data)
            central += struct.pack(
                "<4s6H3L5H2L", b"PK\x01\x02", 20, *fields[:-2], len(name), 0, 0, 0, 0,
                0o100644 << 16, offset,
            ) + name  # fmt: skip
        start = out.tell()
        out.write(central)
        count = len(members)
        out.write(
            struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, count, count, len(central), start, 0)
        )
    return path


def zeros_bomb(path: Path, size: int = 2**31) -> Path:
    """main.py and zeros.bin: `size` zero bytes, really deflated (about 1000:1). 1 MiB of
    zeros is deflated once with a full flush (a block that refers to nothing before it),
    repeated, and closed by an empty final block: seconds instead of deflating 2 GiB."""
    chunk = bytes(2**20)
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = compressor.compress(chunk) + compressor.flush(zlib.Z_FULL_FLUSH)
    final = zlib.compressobj(9, zlib.DEFLATED, -15).flush()  # an empty last block
    crc = 0
    for _ in range(size // len(chunk)):
        crc = zlib.crc32(chunk, crc)
    data = block * (size // len(chunk)) + final
    main = b"print('hi')\n"
    return raw_zip(
        path,
        [
            Member("main.py", len(main), main, crc=zlib.crc32(main)),
            Member("zeros.bin", size, data, deflated=True, crc=crc),
        ],
    )


def submission_zip(path: Path, shards: int = 1) -> Path:
    """A zip declaring a whisper-large-v3 submission, the weights in `shards` holes."""
    members = [Member("main.py", 12_000), *(Member(n, s) for n, s in SMALL_FILES.items())]
    share = LARGE_V3_BYTES // shards
    names = ["model/model.safetensors"] if shards == 1 else [
        f"model/model-{n:05d}-of-{shards:05d}.safetensors" for n in range(1, shards + 1)
    ]  # fmt: skip
    return raw_zip(path, members + [Member(name, share) for name in names])


def _median_ms(action, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        action()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def _open_only(path: Path) -> None:
    with zipfile.ZipFile(path) as archive:
        archive.infolist()


def _open_and_check(path: Path, target: Path) -> str:
    try:
        with zipfile.ZipFile(path) as archive:
            check_archive(archive, target, str(path))
    except SubmissionError:
        return "refused"
    return "passes"


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="kidwhisper-unpack-bench-") as tmp:
        folder, target = Path(tmp), Path(tmp) / "src"
        zips = {
            "whisper-large-v3 submission": submission_zip(folder / "large.zip"),
            "large-v3, 200 weight shards": submission_zip(folder / "shards.zip", shards=200),
            "bomb: 2 GiB of zeros": zeros_bomb(folder / "bomb.zip"),
        }
        for label, path in zips.items():
            with zipfile.ZipFile(path) as archive:
                declared = sum(info.file_size for info in archive.infolist())
                entries = len(archive.infolist())
            rows.append(
                {
                    "zip": label,
                    "entries": entries,
                    "declared_gb": declared / 1e9,
                    "on_disk_mb": path.stat().st_blocks * 512 / 1e6,
                    "open_ms": _median_ms(lambda p=path: _open_only(p), args.repeats),
                    "check_ms": _median_ms(lambda p=path: _open_and_check(p, target), args.repeats),
                    "verdict": _open_and_check(path, target),
                }
            )
    print(f"median of {args.repeats} runs; the check reads the central directory only")
    print("| zip | entries | declared | on disk | open only | open + check | verdict |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['zip']} | {r['entries']} | {r['declared_gb']:.2f} GB | "
            f"{r['on_disk_mb']:.1f} MB | {r['open_ms']:.2f} ms | {r['check_ms']:.2f} ms | "
            f"{r['verdict']} |"
        )
    return rows


if __name__ == "__main__":
    main()
