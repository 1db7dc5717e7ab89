"""``quantlab export-inputs``: the preprocessed samples, in Polygraphy's JSON and as trtexec binaries."""

from __future__ import annotations

import argparse
from pathlib import Path

from .. import defaults
from .args import add_data_arguments, count_type, data_spec, emit

EPILOG = """\
The samples are those 'quantlab compare' evaluates for the same --data, --num-samples and --seed,
preprocessed the same way and in the same order, so the engine's outputs line up with them.

examples:
  quantlab export-inputs model.onnx --data heldout/ -o inputs.json
  quantlab export-inputs -o inputs.json        # the embedded model's held-out images
  # on the GPU host, either:
  polygraphy run model.qdq.onnx --trt --load-inputs inputs.json --save-outputs engine.json
  trtexec --onnx=model.qdq.onnx --loadInputs='x':inputs.x.bin --shapes='x':512x1x28x28 \\
          --exportOutput=engine.json --profilingVerbosity=detailed --exportLayerInfo=layers.json
  # back here:
  quantlab compare model.onnx --qdq model.qdq.onnx --data heldout/ --engine-outputs engine.json
"""


def add_parser(sub) -> None:
    cmd = sub.add_parser("export-inputs", help="write held-out samples for a TensorRT engine (Polygraphy JSON, "
                         "trtexec --loadInputs binaries)",
                         description="Write the preprocessed samples of --data as Polygraphy --load-inputs JSON "
                                     "(one iteration per engine batch) and, beside it, one raw binary per input "
                                     "for trtexec --loadInputs, so the engine sees what quantlab evaluates.",
                         epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    cmd.add_argument("model", nargs="?", help="ONNX model (default: the embedded one)")
    cmd.add_argument("-o", "--output", metavar="JSON", default="inputs.json",
                     help="Polygraphy inputs file (default ./inputs.json; the binaries go beside it)")
    cmd.add_argument("--engine-batch", type=count_type(1), metavar="N",
                     help="samples per engine iteration (default: the model's fixed batch, else 1)")
    cmd.add_argument("--no-raw", action="store_true", help="skip the trtexec binaries")
    cmd.add_argument("--json", action="store_true", help="print what was written as JSON")
    add_data_arguments(cmd, "samples to export (default: the embedded held-out Fashion-MNIST test images)")
    cmd.set_defaults(func=run, command_parser=cmd)


def run(args: argparse.Namespace) -> int:
    from ..evaluation.roundtrip import export_inputs

    result = export_inputs(args.model, data_spec(args), args.output, batch_size=args.engine_batch,
                           raw=not args.no_raw, progress=not args.quiet)
    lines = [f"wrote {result.path}: {result.samples} samples in {result.iterations} iterations of {result.batch} "
             "(Polygraphy --load-inputs)"]
    lines += [f"wrote {path} ({name}, shape {'x'.join(map(str, result.shapes[name]))})"
              for name, path in result.raw.items()]
    lines += [f"note: {note}" for note in result.notes]
    stem = Path(args.model).stem if args.model else defaults.MODEL.stem
    qdq = f"{stem}.qdq.onnx"
    lines += ["next, on the GPU host (TensorRT <= 10: add --int8 --fp16 to either):"]
    lines += [f"  {c}" for c in result.commands(qdq)[: 2 if result.raw else 1]]
    same = [f"--{flag.replace('_', '-')} {getattr(args, flag)}" for flag in ("data", "num_samples")
            if getattr(args, flag) is not None] + ([f"--seed {args.seed}"] if args.seed else [])
    lines.append("then here: " + " ".join(["quantlab compare", *([args.model] if args.model else []), "--qdq", qdq,
                                           *same, "--engine-outputs engine.json"]))
    emit(args, result.to_dict(), "\n".join(lines))
    return 0
