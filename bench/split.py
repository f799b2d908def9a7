"""Split throughput (frames/s): SplitStage vs the `scenedetect` CLI vs the PyAV decode floor.

On the same videos (generated ones plus ../shared/media when present): SplitStage's detection
(ContentDetector defaults, one decode), the `scenedetect` CLI run per file (its default OpenCV
backend, start-up included), and the floor: PyAV decoding every frame into BGR at the same
detection size with no detection (the cheaper of libswscale scaling and our conversion path);
`decode` is bare decoding. Each number is the best of --repeats runs, on wall-clock seconds and
on CPU seconds (the machine is shared; CPU seconds are steadier and are what a fully loaded Ray
node pays). One JSON line per video, then a summary line. Run:
    OMP_NUM_THREADS=1 python bench/split.py [--repeats 3] [--no-cli]"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import av
from av.video.reformatter import VideoReformatter

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere

from infra.videogen import Scene, write_video  # noqa: E402
from pipelines.split import _bgr, _target_size, detect_cuts  # noqa: E402
from spans import emit, ratio, result, shares  # noqa: E402

MEDIA = ROOT.parent / "shared" / "media"
SHARED = ["pyscenedetect/testvideo.mp4", "pyscenedetect/goldeneye-vfr-drop3.mp4",
          "pyscenedetect/issue-134-rotate.mp4", "pyscenedetect/issue-236-split-copy.mkv",
          "pyscenedetect/counter.mp4", "pyscenedetect/fades.mp4",
          "decord/flipping_a_pancake.mkv"]
SCENEDETECT = Path(sys.executable).parent / "scenedetect"


def generated(directory: Path) -> list[Path]:
    """Three sizes of the same kind of content: cuts, motion, text, noise."""
    scenes = [Scene(60), Scene(50, kind="text"), Scene(40, kind="noise"), Scene(60, kind="blur"),
              Scene(30, kind="static"), Scene(60, direction="left")]
    out = []
    for name, (w, h) in {"gen-128x96.mp4": (128, 96), "gen-640x360.mp4": (640, 360),
                         "gen-1280x720.mp4": (1280, 720)}.items():
        write_video(directory / name, scenes, width=w, height=h, fps=24, crf=23)
        out.append(directory / name)
    return out


def decode_floor(path: Path, how: str) -> int:
    """Decode every frame into BGR at the detection size without detecting (or only decode)."""
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        s.thread_type = "AUTO"
        size, n, ref = None, 0, VideoReformatter()
        for frame in c.decode(s):
            size = size or _target_size(frame.width, frame.height, "auto")
            if how == "swscale":  # libswscale scales and converts in one call
                ref.reformat(frame, format="bgr24", width=size[0], height=size[1],
                             threads=1).to_ndarray()
            elif how == "ours":  # the conversion SplitStage does (full-size BGR + cv2 resize)
                _bgr(frame, size, ref)
            n += 1
    return n


def cli(path: Path) -> None:
    subprocess.run([str(SCENEDETECT), "-q", "-i", str(path), "detect-content", "list-scenes",
                    "-n"], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _cpu_s() -> float:
    """CPU seconds of this process and its finished children (the CLI runs as a child)."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def best_of(fn, repeats: int) -> tuple[float, float, object]:
    """Best wall seconds, best CPU seconds and the result of `repeats` runs of fn()."""
    wall, cpu, result = float("inf"), float("inf"), None
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), _cpu_s()
        result = fn()
        wall, cpu = min(wall, time.perf_counter() - t0), min(cpu, _cpu_s() - c0)
    return wall, cpu, result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-cli", action="store_true", help="skip the scenedetect CLI runs")
    ap.add_argument("--quick", action="store_true", help="one repeat per measurement")
    ap.add_argument("--result-json", default=None, help="also write the result record here")
    args = ap.parse_args()
    if args.quick:
        args.repeats = 1
    tmp = Path(tempfile.mkdtemp(prefix="bench-split-"))
    videos = generated(tmp) + [MEDIA / v for v in SHARED if (MEDIA / v).is_file()]
    startup = best_of(lambda: subprocess.run([str(SCENEDETECT), "version"], check=True,
                                             capture_output=True), args.repeats)[0]
    keys = ("ours", "floor", "decode", "cli")
    tot = {f"{k}_{m}": 0.0 for k in keys for m in ("wall", "cpu")} | {"frames": 0}
    for path in videos:
        t: dict = {}
        t["ours_wall"], t["ours_cpu"], d = best_of(lambda: detect_cuts(str(path)), args.repeats)
        # The floor is the cheaper of the two ways to get BGR frames at the detection size.
        floors = [best_of(lambda: decode_floor(path, how), args.repeats) for how in
                  ("swscale", "ours")]
        t["floor_wall"], t["floor_cpu"], n = min(floors[0][0], floors[1][0]), min(
            floors[0][1], floors[1][1]), floors[0][2]
        t["decode_wall"], t["decode_cpu"], _ = best_of(lambda: decode_floor(path, "none"),
                                                       args.repeats)
        if not args.no_cli:
            t["cli_wall"], t["cli_cpu"], _ = best_of(lambda: cli(path), args.repeats)
        tot["frames"] += n
        for k, v in t.items():
            tot[k] += v
        print(json.dumps({"video": path.name, "frames": n, "cuts": d.cuts}
                         | {f"{k}_fps": round(n / v, 1) for k, v in t.items()}
                         | _ratios(t)), flush=True)
    print(json.dumps({"summary": True, "videos": len(videos), "frames": tot["frames"]}
                     | {f"{k}_fps": round(tot["frames"] / v, 1) for k, v in tot.items()
                        if k != "frames" and v}
                     | _ratios(tot)
                     | {"cli_startup_s": round(startup, 3), "targets": ">=2x cli, <=1.3x floor",
                        "repeats": args.repeats, "python": platform.python_version(),
                        "cpus": os.cpu_count()}), flush=True)
    scaling = {n: best_of(lambda n=n: set_wall(videos, n), args.repeats)[0] for n in (1, 2)}
    emit(record(tot, scaling, len(videos)), args.result_json)


def _pin(cores: list[int]) -> None:
    os.sched_setaffinity(0, cores)


def set_wall(videos: list[Path], cores: int) -> float:
    """Wall seconds of detect_cuts over the whole set in `cores` worker processes, each pinned to
    its own core and decoding with one thread (as a Ray worker with num_cpus=1); largest first."""
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    allowed = sorted(os.sched_getaffinity(0))[:cores]
    order = sorted(videos, key=lambda p: -p.stat().st_size)
    ctx = get_context("fork")
    with ProcessPoolExecutor(cores, mp_context=ctx) as pool:
        list(pool.map(_pin, [[c] for c in allowed]))  # start (and pin) the workers untimed
        t0 = time.perf_counter()
        list(pool.map(_detect_one, [str(p) for p in order]))
        return time.perf_counter() - t0


def _detect_one(path: str) -> int:
    return len(detect_cuts(path, threads=1).cuts)


def record(tot: dict, scaling: dict[int, float], n_videos: int) -> dict:
    """The three split targets over the whole set and where a frame's CPU time goes: decoding,
    conversion to BGR at the detection size, and ContentDetector's own work (the rest)."""
    decode, floor, ours = tot["decode_cpu"], tot["floor_cpu"], tot["ours_cpu"]
    per_frame = {"decode": decode, "bgr_at_detection_size": max(0.0, floor - decode),
                 "content_detector": max(0.0, ours - floor)}
    ratios = {"slowdown_vs_floor_cpu": ratio(ours / floor, 1.15, "lower"),
              "speedup_2_cores_vs_1": ratio(scaling[1] / scaling[2], 1.8, "higher")}
    if tot.get("cli_wall"):
        ratios["speedup_vs_cli_wall"] = ratio(tot["cli_wall"] / tot["ours_wall"], 2.0, "higher")
    profile = {"cpu_s_per_frame": {k: round(v / tot["frames"], 6) for k, v in per_frame.items()},
               "slowdown_vs_floor_wall": round(tot["ours_wall"] / tot["floor_wall"], 3),
               "parts": shares(per_frame), "set_wall_s": {f"{n}_core": round(w, 3) for n, w in scaling.items()},
               "frames": tot["frames"], "videos": n_videos}
    note = ("ratios over the whole set; the floor ratio on CPU seconds (steadier than wall on a shared "
            "machine; wall in the profile); ours and the CLI one process each, one file after another; "
            "the core scaling runs the set in 1 vs 2 pinned worker processes (1 decode thread each)")
    return result("split", ratios, profile, note)


def _ratios(t: dict) -> dict:
    """Speed-up over the CLI and slow-down against the floor, on wall and on CPU seconds."""
    out = {}
    for m in ("wall", "cpu"):
        if t.get(f"cli_{m}"):
            out[f"speedup_vs_cli_{m}"] = round(t[f"cli_{m}"] / t[f"ours_{m}"], 2)
        out[f"slowdown_vs_floor_{m}"] = round(t[f"ours_{m}"] / t[f"floor_{m}"], 2)
    return out

if __name__ == "__main__":
    main()
