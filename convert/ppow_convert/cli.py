"""ppow-convert: command line for the converters.

  ppow-convert hf MODEL_DIR -o OUT.gguf [--outtype f32|f16|q8_0]
  ppow-convert drafter CKPT_DIR --tokenizer-from TARGET.gguf -o OUT.gguf [--outtype ...] [--fc-type f32|q8_0]
      (a feature drafter from `ppow-train kd --drafter-kind feature` becomes a llama.cpp eagle3 GGUF;
       --target is the same flag)
  ppow-convert drafter SRC --to hf -o DIR [--dtype f32|bf16|f16] [--target TARGET.gguf [--embed-tokens]]
      (a feature drafter, trainer checkpoint or eagle3 GGUF, in the Hugging Face EAGLE-3 layout that
       vLLM, SGLang and llama.cpp's convert_hf_to_gguf.py read)
  ppow-convert eagle3-hf DIR --target TARGET.gguf -o OUT.gguf [--outtype ...] [--fc-type ...] [--layer-ids inputs|outputs]
      (a Hugging Face EAGLE-3 checkpoint, e.g. a public drafter for this target, becomes ppow's eagle3 GGUF)

Bad input prints one line `ppow-convert: error: ...` and exits with status 2.
"""
import argparse
import os
import sys

from .drafter import convert_drafter
from .errors import ConvertError
from .gguf_io import OUTTYPES
from .hf_eagle3 import DTYPES, export_hf_eagle3, import_hf_eagle3
from .hf_llama import convert_hf


def build_parser():
    p = argparse.ArgumentParser(prog="ppow-convert", description="Convert HF Llama checkpoints and ppow drafters to GGUF.")
    sub = p.add_subparsers(dest="cmd", required=True)
    hf = sub.add_parser("hf", help="HF Llama checkpoint dir (config.json, *.safetensors, tokenizer) -> GGUF")
    hf.add_argument("model_dir")
    dr = sub.add_parser("drafter", help="trained drafter dir -> GGUF paired with its target (standalone: llama "
                                        "with the target's tokenizer; feature: llama.cpp eagle3)")
    dr.add_argument("ckpt_dir", help="a trainer checkpoint dir; with --to hf also an eagle3 GGUF")
    dr.add_argument("--tokenizer-from", "--target", dest="tokenizer_from", metavar="TARGET.gguf",
                    help="the target GGUF (vocabulary, hidden size; standalone: its tokenizer is copied); "
                         "required for --to gguf")
    dr.add_argument("--to", choices=("gguf", "hf"), default="gguf",
                    help="gguf (default): a GGUF for ppow and llama.cpp; hf: a Hugging Face EAGLE-3 dir (feature "
                         "drafters) for vLLM/SGLang, -o names the new directory")
    dr.add_argument("--dtype", default="f32", choices=list(DTYPES),
                    help="--to hf: the weights' type (default f32: exact, also for a quantized GGUF's values)")
    dr.add_argument("--embed-tokens", action="store_true",
                    help="--to hf: also write the target's token embeddings (embed_tokens.weight) from --target; "
                         "vLLM and SGLang share the target's without it")
    ei = sub.add_parser("eagle3-hf", help="Hugging Face EAGLE-3 checkpoint dir -> ppow's eagle3 GGUF for a target")
    ei.add_argument("model_dir")
    ei.add_argument("--target", required=True, metavar="TARGET.gguf",
                    help="the target GGUF the drafter was trained for (vocabulary, hidden size, layers are checked)")
    ei.add_argument("--layer-ids", choices=("inputs", "outputs"), default="inputs",
                    help="how to read eagle_aux_hidden_state_layer_ids: inputs (default; id k = the input of target "
                         "layer k, as vLLM and llama.cpp read it) or outputs (id k = the output of layer k, as SGLang "
                         "read explicit ids before 2026)")
    for s in (dr, ei):
        s.add_argument("--fc-type", default="f32", choices=("f32", "q8_0"),
                       help="feature drafter: the type of fc.weight (default f32). q8_0 is 3.8x smaller, but the CPU "
                            "then quantizes the target's features to 8 bits per block of 32: measure acceptance "
                            "before shipping it for a target with outlier features (Gemma 3's reach 1e5)")
    for s in (hf, dr, ei):
        s.add_argument("-o", "--output", required=True, metavar="OUT.gguf")
        s.add_argument("--outtype", default="f16", choices=list(OUTTYPES))
    return p


def _target_path(value):
    """--target/--tokenizer-from: a GGUF path, or the name of a target ppow ships (gemma3-270m,
    smollm2-135m), as `ppow-train` and `ppow-run` take them."""
    if not value or os.path.exists(value):
        return value
    from ppow.models import TARGETS, resolve_target

    return resolve_target(value) if value in TARGETS else value


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    for name in ("tokenizer_from", "target"):
        if getattr(args, name, None):
            setattr(args, name, _target_path(getattr(args, name)))
    if args.cmd == "drafter" and args.to == "gguf" and not args.tokenizer_from:
        parser.error("drafter: --target (or --tokenizer-from) TARGET.gguf is required for --to gguf")
    try:
        if args.cmd == "hf":
            out = convert_hf(args.model_dir, args.output, args.outtype)
        elif args.cmd == "eagle3-hf":
            out = import_hf_eagle3(args.model_dir, args.target, args.output, args.outtype, args.fc_type, args.layer_ids)
        elif args.to == "hf":
            out = export_hf_eagle3(args.ckpt_dir, args.output, args.dtype, args.tokenizer_from, args.embed_tokens)
        else:
            out = convert_drafter(args.ckpt_dir, args.tokenizer_from, args.output, args.outtype, args.fc_type)
    except ConvertError as e:
        print(f"ppow-convert: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
