"""`perceptserve export|serve|segment|bench|demo`: one command line over the package.

Each subcommand is a function taking the parsed arguments and returning an exit status. Errors a
user can fix are raised as `UserError` (or a known library error) and printed as one line,
without a traceback.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from perceptserve import settings as settings_module
from perceptserve.errors import UserError
from perceptserve.hqsam import families as sam_families
from perceptserve.parsing import comma_list


def cmd_export_sam_family(args: argparse.Namespace) -> int:
    from perceptserve.export.hqsam import HQSamExport, run

    job = HQSamExport(
        model=args.model_type,
        repository=args.repository,
        family=sam_families.by_name(args.family),
        checkpoint=args.checkpoint,
        seed=args.seed,
        precision=args.precision,
        tensorrt=args.tensorrt,
        allow_missing_hq=args.allow_missing_hq,
        measure_memory=not args.no_memory_probe,
    )
    report = run(job, _with_memory_budget(settings_module.from_env(), args.memory_budget))
    print(report.format())
    print(f"model repository written to {args.repository}")
    return 0 if report.passed else 3


def cmd_export_datasetdm(args: argparse.Namespace) -> int:
    from perceptserve.export.datasetdm import DatasetDMExport, decoder_paths, run

    tasks = comma_list(args.tasks)
    job = DatasetDMExport(
        repository=args.repository,
        tasks=tasks,
        diffusion=args.diffusion,
        tiny_dir=Path(args.tiny_random) if args.tiny_random else None,
        decoders=decoder_paths(args.decoder or [], tasks),
        precision=args.precision,
    )
    report = run(job, settings_module.from_env())
    print(report.format())
    if args.diffusion is None:
        print(f"tiny random Stable Diffusion pipeline written to {job.tiny_source}")
    print(f"model repository written to {args.repository}")
    return 0 if report.passed else 3


def _with_memory_budget(settings, budget: str | None):
    """`--memory-budget` over PERCEPTSERVE_MEMORY_BUDGET over the detected budget."""
    import dataclasses

    from perceptserve.parsing import parse_bytes

    if budget is None:
        return settings
    memory = dataclasses.replace(settings.memory, budget_bytes=parse_bytes(budget))
    return dataclasses.replace(settings, memory=memory)


def _fit_batches(repository: Path, budget: str | None) -> None:
    """Batch limits for this machine's (or pod's) budget, where the repository can be written."""
    from perceptserve.model_repository import memory

    settings = _with_memory_budget(settings_module.from_env(), budget).memory
    try:
        limits = memory.fit_repository(repository, settings)
        if limits:
            print(memory.describe(repository, settings, limits), flush=True)
    except OSError as error:
        print(f"WARNING: batch limits left as exported ({error.strerror}: {error.filename})", file=sys.stderr)


def cmd_serve(args: argparse.Namespace) -> int:
    from perceptserve.server.supervisor import serve_forever

    _fit_batches(args.repository, args.memory_budget)
    return serve_forever(
        args.repository, args.config, _server_settings(args), log_file=args.log_file, tritonserver=args.tritonserver
    )


def _server_settings(args: argparse.Namespace):
    import dataclasses

    base = settings_module.from_env()
    return dataclasses.replace(
        base.server,
        grpc_port=args.grpc_port,
        http_port=args.http_port,
        metrics_port=args.metrics_port,
        host=args.host,
        health_port=args.health_port,
        exit_timeout_s=args.exit_timeout,
        drain_timeout_s=args.drain_timeout,
        response_cache_bytes=args.response_cache_bytes or base.server.response_cache_bytes,
        tritonserver_args=tuple(args.tritonserver_args),
        log_to_stdout=args.log_to_stdout,
    )


def cmd_segment(args: argparse.Namespace) -> int:
    from perceptserve.clients.segment import segment_command

    return segment_command(args)


def cmd_segment_all(args: argparse.Namespace) -> int:
    from perceptserve.clients.segment_all import segment_all_command

    return segment_all_command(args)


def _add_generator_arguments(parser: argparse.ArgumentParser) -> None:
    """One option per `SamAutomaticMaskGenerator` parameter; left out, the server's default."""
    from perceptserve.automatic.parameters import FLAGS, GeneratorParameters

    defaults = GeneratorParameters()
    for name in (n for n in defaults.__dataclass_fields__ if n not in FLAGS):
        default = getattr(defaults, name)
        parser.add_argument(
            "--" + name.replace("_", "-"),
            type=type(default),
            metavar="N" if isinstance(default, int) else "F",
            help=f"default {default:.4g}",
        )
    parser.add_argument("--no-multimask", action="store_true", help="one mask per point (multimask_output false)")
    parser.add_argument("--hq-token-only", action="store_true", help="HQ-SAM: the HQ token's mask only")


def cmd_annotate(args: argparse.Namespace) -> int:
    from perceptserve.clients.annotate import annotate_command

    return annotate_command(args)


def cmd_generate(args: argparse.Namespace) -> int:
    from perceptserve.clients.generate import generate_command

    return generate_command(args)


def cmd_dataset_merge(args: argparse.Namespace) -> int:
    from perceptserve.clients.merge import merge_command

    return merge_command(args)


def cmd_demo_datasetdm(args: argparse.Namespace) -> int:
    from perceptserve.demo_datasetdm import run_demo

    return run_demo(args)


def _bench_from_args(job_type, run, args: argparse.Namespace) -> int:
    """A benchmark whose job's fields are named as its command-line options."""
    import dataclasses

    fields = {field.name for field in dataclasses.fields(job_type)}
    run(job_type(**{name: value for name, value in vars(args).items() if name in fields}), settings_module.from_env())
    print(f"results written to {args.out}/results.json and results.md")
    return 0


def cmd_bench_datasetdm(args: argparse.Namespace) -> int:
    from perceptserve.benchmarks.datasetdm import DatasetDMBench, run

    return _bench_from_args(DatasetDMBench, run, args)


def cmd_bench_generate(args: argparse.Namespace) -> int:
    from perceptserve.benchmarks.generate_concurrency import GenerateConcurrencyBench, run

    return _bench_from_args(GenerateConcurrencyBench, run, args)


def cmd_bench_sam_family(args: argparse.Namespace) -> int:
    from perceptserve.benchmarks.hqsam import BenchConfigError, BenchJob, default_modes, run
    from perceptserve.benchmarks.onnxruntime_tuning import OrtTuning

    try:
        concurrency = tuple(int(level) for level in comma_list(args.concurrency))
    except ValueError:
        raise UserError(f"--concurrency {args.concurrency}: give integers separated by commas, e.g. 1,2,4") from None
    job = BenchJob(
        model=args.model_type,
        family=sam_families.by_name(args.family),
        checkpoint=args.checkpoint,
        seed=args.seed,
        modes=comma_list(args.modes) if args.modes is not None else default_modes(),
        concurrency=concurrency,
        requests=args.requests,
        warmup=args.warmup,
        url=args.url,
        start_server=args.start_server,
        out=args.out,
        repository=args.repository,
        onnxruntime=OrtTuning(threads=args.ort_threads, optimization=args.ort_optimization),
        perf_analyzer_data=args.perf_analyzer_data,
        precision=args.precision,
    )
    try:
        run(job, settings_module.from_env())
    except BenchConfigError as exc:
        raise UserError(str(exc)) from None
    print(f"results written to {args.out}/results.json, results.md and latency.png")
    return 0


def cmd_bench_hqsam_automatic(args: argparse.Namespace) -> int:
    from perceptserve.benchmarks.hqsam_automatic import AutomaticBench, run
    from perceptserve.clients.segment_all import parameters_from_args

    job = AutomaticBench(
        out=args.out,
        models=comma_list(args.models),
        photos=comma_list(args.photos),
        parameters=parameters_from_args(args),
        seed=args.seed,
        repositories=args.repositories,
        precision=args.precision,
    )
    run(job, settings_module.from_env())
    print(f"results written to {args.out}/results.json and results.md")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from perceptserve.demo import run_demo

    return run_demo(args)


CHECKPOINT_HELP = {
    "hqsam": "official HQ-SAM checkpoint (sam_hq_vit_*.pth)",
    "sam": "official SAM (sam_vit_*.pth) or MobileSAM (mobile_sam.pt) checkpoint",
}


def _add_sam_model_arguments(parser: argparse.ArgumentParser, family: sam_families.Family) -> None:
    """`--model-type` and where the weights come from: a checkpoint, or seeded random values."""
    parser.add_argument("--model-type", required=True, choices=family.model_types)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", type=Path, help=CHECKPOINT_HELP[family.name])
    source.add_argument("--random-init", action="store_true", help="random weights (tests, demos, benchmarks)")
    parser.add_argument("--seed", type=int, default=0, help="seed for --random-init")
    parser.add_argument(
        "--precision",
        choices=settings_module.PRECISIONS,
        default="fp32",
        help="int8: the image encoder quantised for the cpu target (decoder fp32, gpu target TensorRT fp16)",
    )


def _add_annotation_arguments(parser: argparse.ArgumentParser) -> None:
    """The instance and pose options of `annotate` and `generate` (DatasetDM's defaults)."""
    parser.add_argument("--max-instances", type=int, help="instances kept per image (server default 20)")
    parser.add_argument("--score-threshold", type=float, help="lowest instance score kept (server default 0.4)")
    parser.add_argument(
        "--keypoint-threshold", type=float, default=0.2, help="keypoint score from which it is visible (v = 2)"
    )


def _add_url_argument(parser: argparse.ArgumentParser) -> None:
    """`--url`: the gRPC endpoint of a running server, by default the local one's."""
    parser.add_argument(
        "--url", default=f"127.0.0.1:{settings_module.ServerSettings().grpc_port}", help="gRPC HOST:PORT"
    )


def _add_memory_budget_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--memory-budget",
        metavar="BYTES",
        help="memory the batches must fit, e.g. 12G (default: PERCEPTSERVE_MEMORY_BUDGET, else the cgroup's limit, "
        "else the machine's)",
    )


def _add_retries_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--retries",
        type=int,
        default=9,
        help="resend a request the server could not serve now (UNAVAILABLE) up to this many times, "
        "waiting 1, 2, 4 ... 30 s (default 9: about 2.5 minutes)",
    )


def _add_export_sam_family(families: argparse._SubParsersAction, family: sam_families.Family, title: str) -> None:
    """`export hqsam|sam`: one export for every SAM family."""
    sam = families.add_parser(family.name, help=title)
    _add_sam_model_arguments(sam, family)
    sam.add_argument("--repository", type=Path, required=True, help="model repository folder")
    sam.add_argument("--tensorrt", action="store_true", help="also build TensorRT engines (GPU + tensorrt)")
    sam.add_argument("--no-memory-probe", action="store_true", help="keep the settings' encoder batch limits")
    _add_memory_budget_argument(sam)
    if family.hq:
        sam.add_argument(
            "--allow-missing-hq", action="store_true", help="accept a plain SAM checkpoint (HQ parts random)"
        )
    sam.set_defaults(func=cmd_export_sam_family, allow_missing_hq=False)


def _add_export_datasetdm(families: argparse._SubParsersAction) -> None:
    """`export datasetdm`."""
    datasetdm = families.add_parser("datasetdm", help="DatasetDM: SD 1.x parts, feature extractor, P-Decoders to ONNX")
    diffusion = datasetdm.add_mutually_exclusive_group(required=True)
    diffusion.add_argument(
        "--diffusion", type=Path, metavar="DIR", help="Stable Diffusion 1.x folder (diffusers format)"
    )
    diffusion.add_argument(
        "--tiny-random",
        nargs="?",
        const="",
        metavar="DIR",
        help="build a tiny random SD 1.x pipeline into DIR/source/ (default DIR: <repository>-tiny-random)",
    )
    decoder = datasetdm.add_mutually_exclusive_group(required=True)
    decoder.add_argument(
        "--decoder",
        action="append",
        metavar="[TASK=]PATH",
        help="DatasetDM decoder checkpoint; TASK=PATH per task with several tasks",
    )
    decoder.add_argument("--random-init", action="store_true", help="random decoder weights (tests, demos)")
    datasetdm.add_argument(
        "--tasks", required=True, metavar="semantic[,instance,depth,pose]", help="the P-Decoders to export"
    )
    datasetdm.add_argument("--repository", type=Path, required=True, help="model repository folder")
    datasetdm.add_argument("--precision", choices=["fp32", "fp16"], default="fp32")
    datasetdm.set_defaults(func=cmd_export_datasetdm)


def _add_export_command(commands: argparse._SubParsersAction) -> None:
    """`export hqsam|sam|datasetdm`."""
    export = commands.add_parser("export", help="export a model family into a Triton model repository")
    families = export.add_subparsers(dest="family", required=True)
    _add_export_sam_family(families, sam_families.HQSAM, "HQ-SAM: encoder + HQ decoder to ONNX, with parity check")
    _add_export_sam_family(
        families,
        sam_families.SAM,
        "plain SAM (vit_b/l/h) or MobileSAM (vit_t): encoder + decoder to ONNX, with parity check",
    )
    _add_export_datasetdm(families)


def _add_serve_command(commands: argparse._SubParsersAction) -> None:
    """`serve`."""
    serve = commands.add_parser(
        "serve",
        help="run tritonserver on a model repository, restarting it when a python stub dies and draining on SIGTERM",
    )
    serve.add_argument("--repository", type=Path, required=True)
    serve.add_argument("--config", choices=[target.value for target in settings_module.DeploymentTarget], default="cpu")
    _add_memory_budget_argument(serve)
    defaults = settings_module.ServerSettings()
    serve.add_argument("--grpc-port", type=int, default=defaults.grpc_port)
    serve.add_argument("--http-port", type=int, default=defaults.http_port)
    serve.add_argument("--metrics-port", type=int, default=defaults.metrics_port)
    serve.add_argument("--host", default=defaults.host, help="address to bind (default: loopback only)")
    serve.add_argument("--log-file", type=Path, help="server log (default: a file in the temp folder)")
    serve.add_argument(
        "--log-to-stdout", action="store_true", help="also copy the server log to standard output (containers)"
    )
    serve.add_argument(
        "--tritonserver",
        type=Path,
        help="tritonserver installation folder (default: /opt/tritonserver where it exists, else the bundled one)",
    )
    serve.add_argument("--health-port", type=int, help="serve /ready and /live for probes on this port (default: none)")
    serve.add_argument(
        "--exit-timeout",
        type=int,
        default=defaults.exit_timeout_s,
        help="seconds tritonserver waits for requests after SIGTERM",
    )
    serve.add_argument(
        "--drain-timeout",
        type=int,
        default=defaults.drain_timeout_s,
        help="on SIGTERM, wait at most this long for requests in flight before stopping tritonserver (seconds)",
    )
    serve.add_argument(
        "--response-cache-bytes", type=int, help="default: PERCEPTSERVE_RESPONSE_CACHE_BYTES, else the settings'"
    )
    serve.add_argument("tritonserver_args", nargs="*", metavar="-- TRITONSERVER_ARG", help="passed on to tritonserver")
    serve.set_defaults(func=cmd_serve)


def _add_segment_command(commands: argparse._SubParsersAction) -> None:
    """`segment`."""
    segment = commands.add_parser("segment", help="segment an image with HQ-SAM or SAM over gRPC")
    segment.add_argument("image", type=Path)
    segment.add_argument(
        "--point", action="append", default=[], metavar="X,Y[,LABEL]", help="repeatable; LABEL 1 (default) or 0"
    )
    segment.add_argument("--box", metavar="X0,Y0,X1,Y1")
    segment.add_argument("--multimask", action="store_true")
    segment.add_argument("--hq-token-only", action="store_true")
    segment.add_argument(
        "--out",
        type=Path,
        required=True,
        help="mask file: *.png (0/255), *.rle.json, *.polygons.json or *.coco.json (or say --format)",
    )
    segment.add_argument("--format", choices=["png", "rle", "polygons", "coco"], help="default: from --out's name")
    segment.add_argument("--overlay", type=Path, help="the photo with the mask and prompts drawn on it")
    _add_url_argument(segment)
    segment.add_argument(
        "--model", default=sam_families.HQSAM.ensemble, choices=list(sam_families.FAMILIES), help="the family to call"
    )
    _add_retries_argument(segment)
    segment.set_defaults(func=cmd_segment)


def _add_segment_all_command(commands: argparse._SubParsersAction) -> None:
    """`segment-all`."""
    segment_all = commands.add_parser("segment-all", help="segment everything in an image or a folder over gRPC")
    segment_all.add_argument("image", type=Path, help="an image, or a folder of PNG/JPEG/WebP images")
    segment_all.add_argument(
        "--out", type=Path, required=True, help="image: MASKS.json (the records); folder: a COCO instances file"
    )
    segment_all.add_argument("--overlay", type=Path, help="image only: the photo with each mask in its own colour")
    segment_all.add_argument("--concurrency", type=int, default=2, help="folder: requests in flight at once")
    _add_generator_arguments(segment_all)
    _add_url_argument(segment_all)
    _add_retries_argument(segment_all)
    segment_all.set_defaults(func=cmd_segment_all)


def _add_annotate_command(commands: argparse._SubParsersAction) -> None:
    """`annotate`."""
    annotate = commands.add_parser("annotate", help="annotate a real photo with DatasetDM over gRPC")
    annotate.add_argument("image", type=Path)
    annotate.add_argument("--prompt", required=True, help="the photo's caption, naming the classes")
    annotate.add_argument("--classes", required=True, metavar="a,b,c", help="class names to look for")
    annotate.add_argument("--seed", type=int, default=0, help="the annotation noise's seed")
    annotate.add_argument("--out", type=Path, required=True, help="folder for the mask, preview and depth PNGs")
    _add_url_argument(annotate)
    _add_retries_argument(annotate)
    _add_annotation_arguments(annotate)
    annotate.set_defaults(func=cmd_annotate)


def _add_generate_command(commands: argparse._SubParsersAction) -> None:
    """`generate`."""
    generate = commands.add_parser("generate", help="generate an annotated DatasetDM dataset over gRPC")
    prompts = generate.add_mutually_exclusive_group(required=True)
    prompts.add_argument("--prompt", help="one prompt for every seed")
    prompts.add_argument(
        "--prompts",
        type=Path,
        metavar="PATH",
        help="a text file (one prompt a line) or a folder of {class}.txt files; seed s uses prompt s mod P",
    )
    generate.add_argument("--negative-prompt", default="")
    generate.add_argument(
        "--classes", default="", metavar="a,b,c", help="class names to annotate (a prompt folder adds its classes)"
    )
    generate.add_argument("--count", type=int, required=True, help="images to generate (seeds SEED .. SEED+COUNT-1)")
    generate.add_argument("--seed", type=int, default=0)
    generate.add_argument("--steps", type=int, default=50)
    generate.add_argument("--guidance", type=float, default=7.5)
    generate.add_argument("--height", type=int, help="default: the model's (512 for SD 1.x)")
    generate.add_argument("--width", type=int)
    generate.add_argument("--batch", type=int, default=4, help="seeds per request, denoised in one loop")
    generate.add_argument(
        "--concurrency", type=int, default=1, help="requests in flight (match the server's generate instances)"
    )
    generate.add_argument("--shard", metavar="I/N", help="generate the I-th of N blocks of the seeds (0-based)")
    generate.add_argument(
        "--wait", type=float, default=0, metavar="SECONDS", help="wait up to SECONDS for the server to be ready"
    )
    generate.add_argument("--out", type=Path, required=True, help="dataset folder (resumed if it exists)")
    _add_url_argument(generate)
    _add_retries_argument(generate)
    _add_annotation_arguments(generate)
    generate.set_defaults(func=cmd_generate)


def _add_dataset_command(commands: argparse._SubParsersAction) -> None:
    """`dataset merge`."""
    dataset = commands.add_parser("dataset", help="work on generated datasets")
    dataset_commands = dataset.add_subparsers(dest="action", required=True)
    merge = dataset_commands.add_parser("merge", help="merge the shards of one `generate --shard` run into OUT")
    merge.add_argument("out", type=Path, help="the merged dataset's folder")
    merge.add_argument("shards", type=Path, nargs="+", metavar="SHARD_DIR", help="folders the shards wrote")
    merge.set_defaults(func=cmd_dataset_merge)


def _add_bench_sam_family(families: argparse._SubParsersAction, family: sam_families.Family) -> None:
    """`bench hqsam|sam`: the same benchmark for each SAM family."""
    bench = families.add_parser(family.name, help=f"{family.title}: encoder, prompt and full-request latency")
    _add_sam_model_arguments(bench, family)
    bench.add_argument(
        "--modes",
        help="comma-separated among eager, onnxruntime, onnxruntime-int8, triton, torch-fp16 "
        "(default: eager,onnxruntime,triton, plus torch-fp16 on a GPU)",
    )
    bench.add_argument("--concurrency", default="1,2,4", help="concurrent requests for the triton mode (default 1,2,4)")
    bench.add_argument("--requests", type=int, default=10, help="timed requests per mode, stage and concurrency")
    bench.add_argument("--warmup", type=int, default=1, help="untimed requests before each timed run")
    bench_server = bench.add_mutually_exclusive_group()
    bench_server.add_argument("--url", help="gRPC HOST:PORT of a running `perceptserve serve`")
    bench_server.add_argument("--start-server", action="store_true", help="start the bundled tritonserver for the run")
    bench.add_argument(
        "--out", type=Path, default=Path("bench-output"), help="folder for results.json, results.md, latency.png"
    )
    bench.add_argument(
        "--repository", type=Path, help="an exported repository to reuse (default: export to OUT/repository)"
    )
    bench.add_argument("--ort-threads", type=int, default=0, help="ONNX Runtime intra-op threads (0: one per core)")
    bench.add_argument(
        "--ort-optimization",
        choices=["disable", "basic", "extended", "all"],
        default="all",
        help="ONNX Runtime graph optimisation level",
    )
    bench.add_argument(
        "--perf-analyzer-data",
        type=Path,
        metavar="FILE",
        help=f"also write perf_analyzer's input data for the {family.name} ensemble (see benchmarks/README.md)",
    )
    bench.set_defaults(func=cmd_bench_sam_family)


def _add_bench_hqsam_automatic(families: argparse._SubParsersAction) -> None:
    """`bench hqsam-automatic`."""
    bench_automatic = families.add_parser(
        "hqsam-automatic", help="segment everything: served hqsam_automatic vs the official eager generator"
    )
    bench_automatic.add_argument("--models", default="vit_tiny,vit_b", help="model types, comma-separated")
    bench_automatic.add_argument("--photos", default="astronaut", help="among astronaut, coffee, chelsea")
    bench_automatic.add_argument("--seed", type=int, default=0, help="random weights' seed")
    bench_automatic.add_argument(
        "--precision",
        choices=settings_module.PRECISIONS,
        default="fp32",
        help="of the export (int8: the served encoder is int8)",
    )
    bench_automatic.add_argument(
        "--repositories", type=Path, help="exports to reuse, one folder per model type (default: OUT/<model>)"
    )
    bench_automatic.add_argument("--out", type=Path, default=Path("bench-output/hqsam-automatic"))
    _add_generator_arguments(bench_automatic)
    bench_automatic.set_defaults(func=cmd_bench_hqsam_automatic)


def _add_bench_datasetdm(families: argparse._SubParsersAction) -> None:
    """`bench datasetdm`."""
    bench_datasetdm = families.add_parser(
        "datasetdm", help="DatasetDM: seconds per annotated image, served vs eager diffusers + P-Decoder"
    )
    bench_datasetdm.add_argument(
        "--repository",
        type=Path,
        help="an exported repository to reuse (default: export to OUT/repository)",
    )
    bench_datasetdm.add_argument(
        "--diffusion",
        type=Path,
        help="a real-size SD 1.x folder: served generate + annotations against diffusers' pipeline (image only)",
    )
    bench_datasetdm.add_argument("--images", type=int, default=4, help="timed images per mode and use")
    bench_datasetdm.add_argument("--steps", type=int, default=20, help="denoising steps per generated image")
    bench_datasetdm.add_argument("--side", type=int, default=128, help="image side (a multiple of 64)")
    bench_datasetdm.add_argument("--batch", type=int, default=2, help="seeds per generate request")
    bench_datasetdm.add_argument("--out", type=Path, default=Path("bench-output/datasetdm"))
    bench_datasetdm.set_defaults(func=cmd_bench_datasetdm)


def _add_bench_generate(families: argparse._SubParsersAction) -> None:
    """`bench generate`."""
    bench_generate = families.add_parser(
        "generate", help="perceptserve generate: images/s with requests in flight vs one at a time, side by side"
    )
    bench_generate.add_argument(
        "--repository", type=Path, help="a tiny-random export with 2 generate instances (default: export to OUT)"
    )
    bench_generate.add_argument("--images", type=int, default=8, help="images per level and round")
    bench_generate.add_argument("--rounds", type=int, default=3)
    bench_generate.add_argument("--steps", type=int, default=20)
    bench_generate.add_argument("--side", type=int, default=128, help="image side (a multiple of 64)")
    bench_generate.add_argument("--batch", type=int, default=1, help="seeds per request")
    bench_generate.add_argument("--out", type=Path, default=Path("bench-output/generate"))
    bench_generate.set_defaults(func=cmd_bench_generate)


def _add_bench_command(commands: argparse._SubParsersAction) -> None:
    """`bench hqsam|sam|hqsam-automatic|datasetdm|generate`."""
    bench = commands.add_parser("bench", help="benchmark eager vs ONNX Runtime vs served, side by side")
    bench_families = bench.add_subparsers(dest="family", required=True)
    for family in (sam_families.HQSAM, sam_families.SAM):
        _add_bench_sam_family(bench_families, family)
    _add_bench_hqsam_automatic(bench_families)
    _add_bench_datasetdm(bench_families)
    _add_bench_generate(bench_families)


def _add_demo_command(commands: argparse._SubParsersAction) -> None:
    """`demo`."""
    demo = commands.add_parser("demo", help="export, serve and segment a sample photo end to end")
    demo.add_argument("--model-type", default="vit_tiny", choices=sam_families.HQSAM.model_types)
    demo.add_argument("--checkpoint", type=Path)
    demo.add_argument("--repository", type=Path, default=Path("repository"))
    demo.add_argument("--out", type=Path, default=Path("demo-output"))
    demo.set_defaults(func=cmd_demo)


def _add_demo_datasetdm_command(commands: argparse._SubParsersAction) -> None:
    """`demo-datasetdm`."""
    demo_datasetdm = commands.add_parser(
        "demo-datasetdm", help="tiny DatasetDM: export, serve, generate a few annotated images, annotate a photo"
    )
    demo_datasetdm.add_argument("--repository", type=Path, default=Path("repository-datasetdm"))
    demo_datasetdm.add_argument("--out", type=Path, default=Path("demo-output/datasetdm"))
    demo_datasetdm.set_defaults(func=cmd_demo_datasetdm)


def build_parser() -> argparse.ArgumentParser:
    """The `perceptserve` command line: one function above per subcommand."""
    parser = argparse.ArgumentParser(prog="perceptserve", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for add in (
        _add_export_command,
        _add_serve_command,
        _add_segment_command,
        _add_segment_all_command,
        _add_annotate_command,
        _add_generate_command,
        _add_dataset_command,
        _add_bench_command,
        _add_demo_command,
        _add_demo_datasetdm_command,
    ):
        add(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (UserError, FileNotFoundError) as exc:
        print(f"perceptserve {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
