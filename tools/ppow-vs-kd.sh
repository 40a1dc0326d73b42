#!/usr/bin/env bash
# PPOW vs KD, the fair protocol of issue 23, in one script (python/ppow/train/README.md, "PPOW vs KD: the protocol").
#
#  1. KD (+ training-time test for a feature drafter) until held-out tau(k=4) plateaus: segments of
#     --segment steps, tau on the held-out cache after each (the curve), stop after --patience
#     segments without a gain of --eps. That checkpoint is THE start of every arm.
#  2. From that start, each arm gets --budget CPU-seconds of training steps (`--cpu-budget`, all threads of
#     its process, --threads each; side by side with --parallel): continued KD; PPOW expected; PPOW
#     sampled; and the expected estimator with each component off (speedup reward, proximity reward,
#     adaptive windowing, the target anchor -> reference anchor, no anchor), each PPOW arm under two cost
#     profiles: this CPU's (measured with Generator(target, start drafter).cost_profile(), or --cpu-profile)
#     and a GPU's (--gpu-profile, default the packaged H200 profile of Gemma 3 270M).
#  3. tau at k = --ks (default 1,2,4,8) of the start and every arm on --eval-cache (`ppow-train eval`,
#     the cheap screen), and with --bench-prompts the runtime itself (`ppow-bench`, every arm's GGUF,
#     interleaved, greedy, token-identical output checked).
#  4. OUT/tables.md (plateau curve, PPOW vs KD, ablations: updates, CPU-seconds, tau per k, tau(k=4) vs
#     continued KD) and OUT/summary.json.
# Every stage is skipped when its output exists: re-running the same command resumes.
#
# Usage:
#   tools/ppow-vs-kd.sh --target T.gguf --train-cache DIR[,DIR..] --heldout-cache DIR -o OUT [options]
#   tools/ppow-vs-kd.sh --toy -o OUT        # the whole protocol in minutes on the tests' tiny target
set -euo pipefail

usage() { sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; cat <<'EOF'

Options:
  --target T            target GGUF or name (gemma3-270m, smollm2-135m)
  --train-cache DIRS    comma-separated training caches (`ppow-train data`)
  --heldout-cache DIR   held-out cache (sequences never trained on): the plateau curve
  --eval-cache DIR      cache of the dev prompts for the tau table (default: --heldout-cache)
  --bench-prompts FILE  also run ppow-bench on these prompts with every arm's GGUF (the final table)
  --bench-limit N       prompts for ppow-bench (default 52)
  --kind K              drafter kind for a fresh KD start: feature (default) | standalone
  --init DIR            start the plateau KD from this checkpoint instead of a fresh drafter
  --start DIR           skip stage 1: this checkpoint is the start
  --kd-args "..."       extra ppow-train kd flags (plateau and continued KD), e.g. "--draft-vocab 8192 --chunk-len 256"
  --ppow-args "..."     extra ppow-train ppow flags (every PPOW arm), e.g. "--k-min 1 --k-max 8"
  --lr X                learning rate of every arm (default 1e-4, constant)
  --plateau-lr X        learning rate of the plateau KD (default: --lr when it continues an --init
                        checkpoint, ppow-train kd's own default for a fresh drafter)
  --segment N           KD steps between held-out evaluations (default 200)
  --max-kd-steps N      the plateau search stops here at the latest (default 20000)
  --patience P          segments without a gain of --eps that make a plateau (default 3)
  --eps X               tau(k=4) gain that counts (default 0.005)
  --budget S            CPU-seconds of training per arm (default 700)
  --cpu-profile FILE    this CPU's cost profile (default: measured on the start drafter's GGUF)
  --gpu-profile P       a GPU's cost profile, path or packaged name (default h200-gemma3-270m)
  --profiles LIST       which profiles the PPOW arms use (default cpu,gpu)
  --arms LIST           arms to run (default: all of kd,expected,sampled,no-speedup,no-proximity,no-adaptive,anchor-reference,no-anchor);
                        ARM@PROFILE (e.g. expected@cpu) runs that arm under that profile only
  --ks LIST             window lengths of the tau table (default 1,2,4,8)
  --threads N           threads per training process (default 1)
  --parallel N          arms run side by side (default 1)
  -o, --out DIR         output directory
  --toy                 build the tests' tiny target and caches in OUT/toy and run the protocol at toy scale
EOF
}

TARGET= TRAIN= HELDOUT= EVAL= BENCH_PROMPTS= BENCH_LIMIT=52 KIND=feature INIT= START= KD_ARGS= PPOW_ARGS= PLATEAU_LR=
LR=1e-4 SEGMENT=200 MAX_KD=20000 PATIENCE=3 EPS=0.005 BUDGET=700 CPU_PROFILE= GPU_PROFILE=h200-gemma3-270m
PROFILES=cpu,gpu ARMS=kd,expected,sampled,no-speedup,no-proximity,no-adaptive,anchor-reference,no-anchor
KS=1,2,4,8 THREADS=1 PARALLEL=1 OUT= TOY=0
while [ $# -gt 0 ]; do
  case "$1" in
    --target) TARGET=$2; shift 2;; --train-cache) TRAIN=$2; shift 2;; --heldout-cache) HELDOUT=$2; shift 2;;
    --eval-cache) EVAL=$2; shift 2;; --bench-prompts) BENCH_PROMPTS=$2; shift 2;; --bench-limit) BENCH_LIMIT=$2; shift 2;;
    --kind) KIND=$2; shift 2;; --init) INIT=$2; shift 2;; --start) START=$2; shift 2;;
    --kd-args) KD_ARGS=$2; shift 2;; --ppow-args) PPOW_ARGS=$2; shift 2;; --lr) LR=$2; shift 2;; --plateau-lr) PLATEAU_LR=$2; shift 2;;
    --segment) SEGMENT=$2; shift 2;; --max-kd-steps) MAX_KD=$2; shift 2;; --patience) PATIENCE=$2; shift 2;;
    --eps) EPS=$2; shift 2;; --budget) BUDGET=$2; shift 2;; --cpu-profile) CPU_PROFILE=$2; shift 2;;
    --gpu-profile) GPU_PROFILE=$2; shift 2;; --profiles) PROFILES=$2; shift 2;; --arms) ARMS=$2; shift 2;;
    --ks) KS=$2; shift 2;; --threads) THREADS=$2; shift 2;; --parallel) PARALLEL=$2; shift 2;;
    -o|--out) OUT=$2; shift 2;; --toy) TOY=1; shift;;
    -h|--help) usage; exit 0;;
    *) echo "ppow-vs-kd: unknown option $1 (--help)" >&2; exit 2;;
  esac
done
[ -n "$OUT" ] || { echo "ppow-vs-kd: -o OUT is required (--help)" >&2; exit 2; }
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-python}
export OMP_NUM_THREADS=$THREADS
log() { echo "[ppow-vs-kd $(date +%H:%M:%S)] $*" >&2; }

if [ "$TOY" = 1 ]; then
  # the tests' tiny llama target (2 layers, hidden 64) and engine caches with its features
  if [ ! -f "$OUT/toy/done" ]; then
    log "toy: building the tiny target and its caches in $OUT/toy"
    PYTHONPATH="$ROOT/tests:$ROOT/convert${PYTHONPATH:+:$PYTHONPATH}" "$PY" - "$OUT/toy" <<'PY'
import os, sys
import tinymodels
from ppow_convert import convert_hf
from ppow.train.datagen import build_engine_cache
from test_datagen import PROMPTS
d = sys.argv[1]
os.makedirs(d, exist_ok=True)
tok = tinymodels.train_bpe_tokenizer()
tinymodels.build_target(os.path.join(d, "target"), tok)
target = convert_hf(os.path.join(d, "target"), os.path.join(d, "target-f32.gguf"), "f32")
for name, lo, n in (("train", 0, 48), ("heldout", 48, 12)):
    prompts = [{"text": p + f" {i}", "category": f"c{i % 2}", "id": str(i)}
               for i, p in enumerate((PROMPTS * 20)[lo:lo + n], start=lo)]
    build_engine_cache(target, os.path.join(d, name), prompts, max_new=24, topk=8, layers=[0, 1, 1],
                       n_parallel=4, threads=1, progress=False)
open(os.path.join(d, "done"), "w").write(target)
PY
  fi
  TARGET=${TARGET:-$(cat "$OUT/toy/done")}
  TRAIN=${TRAIN:-$OUT/toy/train}; HELDOUT=${HELDOUT:-$OUT/toy/heldout}
  [ -n "$KD_ARGS" ] || KD_ARGS="--draft-vocab 128 --heads 2 --kv-heads 1 --intermediate 96 --batch-size 8 --lr 3e-3 --chunk-len 64"
  [ -n "$PPOW_ARGS" ] || PPOW_ARGS="--k-min 1 --k-max 4 --chunks 4 --windows 8 --group-size 4 --chunk-len 64"
  SEGMENT=${TOY_SEGMENT:-20}; MAX_KD=${TOY_MAX_KD:-200}; PATIENCE=2; BUDGET=${TOY_BUDGET:-3}; KS=1,2,4,8; LR=1e-3
fi
[ -n "$TARGET" ] && [ -n "$TRAIN" ] && [ -n "$HELDOUT" ] || { echo "ppow-vs-kd: --target, --train-cache and --heldout-cache are required (or --toy)" >&2; exit 2; }
EVAL=${EVAL:-$HELDOUT}
TARGET=$("$PY" -c "import sys; from ppow.models import resolve_target; print(resolve_target(sys.argv[1]))" "$TARGET")
[ -f "$TARGET" ] || { echo "ppow-vs-kd: no target GGUF $TARGET" >&2; exit 2; }
CACHES=(); IFS=, read -ra _c <<< "$TRAIN"; for c in "${_c[@]}"; do CACHES+=(--cache "$c"); done
TFLAG=(--target "$TARGET")
read -ra KDA <<< "$KD_ARGS"; read -ra PPA <<< "$PPOW_ARGS"

tau_of() {  # tau at k of an eval JSON
  "$PY" -c "import json,sys; print(json.load(open(sys.argv[1]))['results'][sys.argv[2]]['tau'])" "$1" "$2"
}

# ---------------------------------------------------------------------------------------- 1. KD to the plateau
# The start is the plateau's best checkpoint by held-out tau(k=4): an --init checkpoint is the curve's
# step 0 and stays the start if no segment beats it by --eps (continued KD that only hurts is no start).
if [ -z "$START" ]; then
  if [ -f "$OUT/start.path" ]; then
    START=$(cat "$OUT/start.path")
  else
    mkdir -p "$OUT/curve"
    LRF=()  # a checkpoint continues at --lr; a fresh drafter at ppow-train kd's own default
    if [ -n "$PLATEAU_LR" ]; then LRF=(--lr "$PLATEAU_LR"); elif [ -n "$INIT" ]; then LRF=(--lr "$LR"); fi
    [ -n "$INIT" ] && FIRST=(--init "$INIT") || FIRST=(--drafter-kind "$KIND")
    touch "$OUT/curve.tsv"
    best=-1 best_dir= since=0 step=0
    if [ -n "$INIT" ]; then
      [ -f "$OUT/curve/0.json" ] || { ppow-train eval --drafter "$INIT" "${TFLAG[@]}" --cache "$HELDOUT" --k 4 --quiet \
        -o "$OUT/curve/0.json.tmp" > /dev/null && mv "$OUT/curve/0.json.tmp" "$OUT/curve/0.json" && echo -e "0\t0\t$(tau_of "$OUT/curve/0.json" 4)" >> "$OUT/curve.tsv"; }
      best=$(tau_of "$OUT/curve/0.json" 4) best_dir=$INIT
      log "plateau KD: step 0 (the --init checkpoint) tau(k=4) $best"
    fi
    while [ "$step" -lt "$MAX_KD" ]; do
      step=$((step + SEGMENT)) curve=$OUT/curve/$step.json
      if [ ! -f "$curve" ] && [ ! -f "$curve.tmp" ]; then  # a .tmp: evaluated, not yet recorded (killed)
        log "plateau KD: steps up to $step"
        ppow-train kd "${CACHES[@]}" "${TFLAG[@]}" "${FIRST[@]}" "${LRF[@]}" "${KDA[@]}" --steps "$MAX_KD" --stop-after "$SEGMENT" \
          --schedule constant --save-every 0 --resume --threads "$THREADS" --quiet -o "$OUT/kd" > /dev/null
        ppow-train eval --drafter "$OUT/kd/ckpt" --cache "$HELDOUT" --k 4 --quiet -o "$curve.tmp" > /dev/null
      fi
      [ -f "$curve.tmp" ] && t=$(tau_of "$curve.tmp" 4) || t=$(tau_of "$curve" 4)
      if "$PY" -c "import sys; sys.exit(0 if float(sys.argv[1]) > float(sys.argv[2]) + float(sys.argv[3]) else 1)" "$t" "$best" "$EPS"; then
        # a new best is kept before its curve point is: a resumed run never points at a missing copy
        [ -f "$curve.tmp" ] && { rm -rf "$OUT/best.tmp"; cp -r "$OUT/kd/ckpt" "$OUT/best.tmp"; rm -rf "$OUT/best"; mv "$OUT/best.tmp" "$OUT/best"; }
        best=$t since=0 best_dir=$OUT/best
      else
        since=$((since + 1))
      fi
      if [ -f "$curve.tmp" ]; then
        mv "$curve.tmp" "$curve"
        cpu=$("$PY" -c "import json,sys; print(json.load(open(sys.argv[1]+'/ckpt/ppow_train.json'))['cpu_seconds'])" "$OUT/kd" 2>/dev/null || echo "")
        echo -e "$step\t$cpu\t$t" >> "$OUT/curve.tsv"
      fi
      log "plateau KD: step $step tau(k=4) $t (best $best, $since segment(s) without a gain)"
      [ "$since" -ge "$PATIENCE" ] && break
    done
    START=$best_dir
    echo "$START" > "$OUT/start.path"
    log "the start: $START (tau(k=4) $best on the held-out cache)"
  fi
fi

# ---------------------------------------------------------------------------------------- 2. cost profiles
mkdir -p "$OUT/profiles"
if [ -n "$CPU_PROFILE" ]; then
  cp "$CPU_PROFILE" "$OUT/profiles/cpu.json"
elif [ ! -f "$OUT/profiles/cpu.json" ]; then
  [ -f "$START/ppow_train.json" ] || { echo "ppow-vs-kd: the start $START is not a trainer checkpoint (an exported" \
    "drafter kept as the start): measure its cost profile with its GGUF and pass --cpu-profile" >&2; exit 2; }
  log "measuring this CPU's cost profile with the start drafter ($THREADS thread(s))"
  ppow-convert drafter "$START" --target "$TARGET" -o "$OUT/profiles/start.gguf" > /dev/null
  "$PY" - "$TARGET" "$OUT/profiles/start.gguf" "$THREADS" "$OUT/profiles/cpu.json" <<'PY'
import json, os, sys
from ppow import Generator
from ppow.models import resolve_target
g = Generator(resolve_target(sys.argv[1]), drafter=sys.argv[2], n_threads=int(sys.argv[3]))
prof = g.cost_profile()
with open(sys.argv[4] + ".tmp", "w") as f:
    json.dump(prof, f)
os.replace(sys.argv[4] + ".tmp", sys.argv[4])
PY
fi
"$PY" -c "from ppow.train.rewards import profile_path; import shutil,sys; shutil.copy(profile_path(sys.argv[1]), sys.argv[2])" \
  "$GPU_PROFILE" "$OUT/profiles/gpu.json"

# ---------------------------------------------------------------------------------------- 3. the arms
arm_flags() {  # PPOW flags of an arm name
  case "$1" in
    expected) echo "--estimator expected";;
    sampled) echo "--estimator sampled";;
    no-speedup) echo "--estimator expected --no-speedup-reward";;
    no-proximity) echo "--estimator expected --no-proximity";;
    no-adaptive) echo "--estimator expected --no-adaptive-window --k 4";;
    anchor-reference) echo "--estimator expected --anchor reference";;
    no-anchor) echo "--estimator expected --kl-coef 0";;
    *) echo "ppow-vs-kd: unknown arm $1" >&2; return 1;;
  esac
}
JOBS=()
IFS=, read -ra ARMLIST <<< "$ARMS"; IFS=, read -ra PROFLIST <<< "$PROFILES"
for arm in "${ARMLIST[@]}"; do
  # kd has no cost profile; ARM@PROFILE names one profile for that arm alone
  if [ "$arm" = kd ] || [[ "$arm" == *@* ]]; then JOBS+=("$arm"); else for p in "${PROFLIST[@]}"; do JOBS+=("$arm@$p"); done; fi
done
run_arm() {
  local job=$1 dir=$OUT/arms/$1
  [ -f "$dir/final/config.json" ] && return 0
  log "arm $job: $BUDGET CPU-seconds"
  if [ "$job" = kd ]; then
    ppow-train kd "${CACHES[@]}" "${TFLAG[@]}" --init "$START" "${KDA[@]}" --lr "$LR" --schedule constant --warmup 0 \
      --steps 100000000 --cpu-budget "$BUDGET" --save-every 0 --resume --threads "$THREADS" --quiet -o "$dir" > "$dir.log" 2>&1
  else
    local arm=${job%@*} prof=${job#*@}
    read -ra AF <<< "$(arm_flags "$arm")"
    ppow-train ppow "${CACHES[@]}" "${TFLAG[@]}" --init "$START" "${PPA[@]}" "${AF[@]}" --cost-profile "$OUT/profiles/$prof.json" \
      --lr "$LR" --schedule constant --warmup 0 --steps 100000000 --cpu-budget "$BUDGET" --save-every 0 --resume \
      --threads "$THREADS" --quiet -o "$dir" > "$dir.log" 2>&1
  fi
}
mkdir -p "$OUT/arms"
running=0
for job in "${JOBS[@]}"; do
  run_arm "$job" &
  running=$((running + 1))
  if [ "$running" -ge "$PARALLEL" ]; then wait -n || { echo "ppow-vs-kd: an arm failed (see $OUT/arms/*.log)" >&2; exit 1; }; running=$((running - 1)); fi
done
while [ "$running" -gt 0 ]; do wait -n || { echo "ppow-vs-kd: an arm failed (see $OUT/arms/*.log)" >&2; exit 1; }; running=$((running - 1)); done

# ---------------------------------------------------------------------------------------- 4. tau of every arm
mkdir -p "$OUT/eval"
[ -f "$OUT/eval/start.json" ] || ppow-train eval --drafter "$START" "${TFLAG[@]}" --cache "$EVAL" --k "$KS" --quiet -o "$OUT/eval/start.json" > /dev/null
for job in "${JOBS[@]}"; do
  [ -f "$OUT/eval/$job.json" ] || ppow-train eval --drafter "$OUT/arms/$job/final" --cache "$EVAL" --k "$KS" --quiet \
    -o "$OUT/eval/$job.json" > /dev/null
done
if [ -n "$BENCH_PROMPTS" ] && [ ! -f "$OUT/bench/report.json" ]; then
  log "ppow-bench with every arm's GGUF on $BENCH_PROMPTS"
  mkdir -p "$OUT/gguf"; DR=()
  for job in start "${JOBS[@]}"; do
    src=$OUT/arms/$job/final; [ "$job" = start ] && src=$START
    [ -f "$OUT/gguf/$job.gguf" ] || ppow-convert drafter "$src" --target "$TARGET" -o "$OUT/gguf/$job.gguf" > /dev/null
    DR+=(--drafter "$job=$OUT/gguf/$job.gguf")
  done
  ppow-bench --prompts "$BENCH_PROMPTS" --target "$TARGET" "${DR[@]}" --k "$KS" --no-auto --peers none \
    --per-category $(( (BENCH_LIMIT + 12) / 13 )) --limit "$BENCH_LIMIT" --threads "$THREADS" -o "$OUT/bench"
fi

# ---------------------------------------------------------------------------------------- 5. tables
"$PY" - "$OUT" "$KS" "${JOBS[@]}" <<'PY'
import json, os, sys
out, ks, jobs = sys.argv[1], sys.argv[2].split(","), sys.argv[3:]
def ev(name):
    return json.load(open(os.path.join(out, "eval", name + ".json")))["results"]
def run_info(job):
    rows = [json.loads(l) for l in open(os.path.join(out, "arms", job, "metrics.jsonl"))]
    return rows[-1]["step"], rows[-1]["cpu_seconds"], rows
lines = ["# PPOW vs KD", ""]
curve = os.path.join(out, "curve.tsv")
if os.path.exists(curve) and os.path.getsize(curve):
    lines += ["## KD to the plateau (held-out tau, k=4)", "", "| KD steps | CPU-seconds | tau (k=4) |", "|---|---|---|"]
    for l in open(curve):
        s, c, t = l.rstrip("\n").split("\t")
        lines.append(f"| {s} | {c} | {float(t):.3f} |")
    lines.append("")
start = ev("start")
kd = ev("kd") if "kd" in jobs else None
head = "| arm | cost profile | updates | CPU-s | " + " | ".join(f"tau k={k}" for k in ks) + " | tau k=4 vs KD |"
sep = "|" + "---|" * (5 + len(ks))
summary = {"start": start, "arms": {}}
def row(name, prof, res, upd="–", cpu="–"):
    vs = f"{res['4']['tau'] / kd['4']['tau']:.3f}" if kd and "4" in res else "–"
    return f"| {name} | {prof} | {upd} | {cpu} | " + " | ".join(f"{res[k]['tau']:.3f}" for k in ks) + f" | {vs} |"
def table(title, names):
    global lines
    lines += [f"## {title}", "", head, sep, row("the start (KD plateau)", "–", start)]
    for job in names:
        if job not in jobs:
            continue
        res = ev(job)
        upd, cpu, rows = run_info(job)
        arm, _, prof = job.partition("@")
        lines.append(row(arm if arm != "kd" else "continued KD", prof or "–", res, upd, round(cpu)))
        summary["arms"][job] = {"updates": upd, "cpu_seconds": cpu, "tau": {k: res[k]["tau"] for k in ks},
                                "k_mean": sum(r.get("k_mean", 0) for r in rows) / len(rows) if rows and "k_mean" in rows[0] else None}
    lines.append("")
profs = sorted({j.partition("@")[2] for j in jobs if "@" in j})
table("PPOW vs continued KD (equal CPU-seconds)", ["kd"] + [f"{a}@{p}" for p in profs for a in ("expected", "sampled")])
table("Ablations of the expected estimator (each component off)",
      [f"{a}@{p}" for p in profs for a in ("expected", "no-speedup", "no-proximity", "no-adaptive", "anchor-reference", "no-anchor")])
lines += ["Mean window length k chosen during training: " + ", ".join(
    f"{j} {v['k_mean']:.2f}" for j, v in summary["arms"].items() if v.get("k_mean")), ""]
bench = os.path.join(out, "bench", "report.json")
if os.path.exists(bench):  # the runtime: tau pooled over the prompts, greedy, output checked against plain
    rep = json.load(open(bench))
    res = rep["results"]
    def rt(name, k):
        r = res.get(f"ppow {name} k={k}")
        return r["overall"]["tau_pooled"] if r else None
    lines += ["## The runtime (ppow-bench, the final table)", "",
              f"{rep['settings']['n_prompts']} prompts of {rep['settings']['prompts']}, {rep['settings']['n_predict']} "
              f"greedy tokens each; outputs that differ from plain greedy: {len(rep['mismatches'])} "
              f"(report: {os.path.join(out, 'bench', 'report.md')}).", "",
              "| drafter | " + " | ".join(f"tau k={k}" for k in ks) + " | tau k=4 vs KD |", "|" + "---|" * (2 + len(ks))]
    for name in ["start"] + jobs:
        vals = [rt(name, k) for k in ks]
        kd4, me4 = rt("kd", 4), rt(name, 4)
        vs = f"{me4 / kd4:.3f}" if kd4 and me4 else "–"
        lines.append(f"| {name} | " + " | ".join("–" if v is None else f"{v:.3f}" for v in vals) + f" | {vs} |")
    lines.append("")
open(os.path.join(out, "tables.md"), "w").write("\n".join(lines))
json.dump(summary, open(os.path.join(out, "summary.json"), "w"), indent=1)
print("\n".join(lines))
PY
