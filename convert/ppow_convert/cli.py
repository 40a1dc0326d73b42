"""ppow-convert: command line for the converters.

  ppow-convert hf MODEL_DIR -o OUT.gguf [--outtype f32|f16|q8_0]
  ppow-convert drafter CKPT_DIR --tokenizer-from TARGET.gguf -o OUT.gguf [--outtype ...] [--fc-type f32|q8_0]
      (a feature drafter from `ppow-train kd --drafter-kind feature` becomes a llama.cpp eagle3 GGUF;
       --target is the same flag)

Bad input prints one line `ppow-convert: error: ...` and exits with status 2.
"""
import argparse
import sys

from .drafter import convert_drafter
from .errors import ConvertError
from .gguf_io import OUTTYPES
from .hf_llama import convert_hf


def build_parser():
    p = argparse.ArgumentParser(prog="ppow-convert", description="Convert HF Llama checkpoints and ppow drafters to GGUF.")
    sub = p.add_subparsers(dest="cmd", required=True)
    hf = sub.add_parser("hf", help="HF Llama checkpoint dir (config.json, *.safetensors, tokenizer) -> GGUF")
    hf.add_argument("model_dir")
    dr = sub.add_parser("drafter", help="trained drafter dir -> GGUF paired with its target (standalone: llama "
                                        "with the target's tokenizer; feature: llama.cpp eagle3)")
    dr.add_argument("ckpt_dir")
    dr.add_argument("--tokenizer-from", "--target", dest="tokenizer_from", required=True, metavar="TARGET.gguf",
                    help="the target GGUF (vocabulary, hidden size; standalone: its tokenizer is copied)")
    dr.add_argument("--fc-type", default="f32", choices=("f32", "q8_0"),
                    help="feature drafter: the type of fc.weight (default f32). q8_0 is 3.8x smaller, but the CPU "
                         "then quantizes the target's features to 8 bits per block of 32: measure acceptance "
                         "before shipping it for a target with outlier features (Gemma 3's reach 1e5)")
    for s in (hf, dr):
        s.add_argument("-o", "--output", required=True, metavar="OUT.gguf")
        s.add_argument("--outtype", default="f16", choices=list(OUTTYPES))
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        if args.cmd == "hf":
            out = convert_hf(args.model_dir, args.output, args.outtype)
        else:
            out = convert_drafter(args.ckpt_dir, args.tokenizer_from, args.output, args.outtype, args.fc_type)
    except ConvertError as e:
        print(f"ppow-convert: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
