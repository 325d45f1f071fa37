"""Runner option sets: the same job on the DirectRunner, Dataflow, Spark, Flink or any portable runner.

Each function returns the Beam command-line flags for one runner; `pipeline_options` turns them
(plus any extra flags the user passes through) into `PipelineOptions`.
"""

from __future__ import annotations

from collections.abc import Sequence

# DirectRunner worker processes live in pipeline.direct_workers; re-exported for older importers.
from pipeline.direct_workers import bind_direct_workers_to_job, direct_workers

RUNNERS = ("direct", "dataflow", "spark", "flink", "portable")
# Below this much input the DirectRunner runs in-process: starting one worker process per core
# (each imports Beam, pyarrow, the tokenizer and the model) costs more than the second core saves.
IN_PROCESS_MAX_BYTES = 64 << 20


def direct_args(num_workers: int = 0, mode: str = "multi_processing") -> list[str]:
    """DirectRunner; `num_workers=0` means one worker process per CPU core."""
    return [
        "--runner=DirectRunner",
        f"--direct_running_mode={mode}",
        f"--direct_num_workers={num_workers}",
        "--default_sdk_harness_log_level=ERROR",
    ]


def auto_direct_args(input_bytes: int) -> list[str]:
    """DirectRunner flags for an input of `input_bytes`: in-process when small, else all cores."""
    if input_bytes < IN_PROCESS_MAX_BYTES:
        return direct_args(num_workers=1, mode="in_memory")
    return direct_args()


def dataflow_args(
    project: str,
    region: str,
    temp_location: str,
    *,
    accelerator: str | None = None,
    container_image: str | None = None,
    machine_type: str | None = None,
    max_workers: int | None = None,
) -> list[str]:
    """Google Cloud Dataflow. `accelerator` e.g. "type:nvidia-l4;count:1;install-nvidia-driver" gives
    GPU workers (needs Runner v2 and a GPU machine type such as g2-standard-4); `container_image`
    is a custom SDK container with datamixer and its dependencies installed."""
    args = [
        "--runner=DataflowRunner",
        f"--project={project}",
        f"--region={region}",
        f"--temp_location={temp_location}",
    ]
    if accelerator:
        args += [
            f"--dataflow_service_options=worker_accelerator={accelerator}",
            "--experiments=use_runner_v2",
        ]
    if container_image:
        args += [f"--sdk_container_image={container_image}", "--sdk_location=container"]
    if machine_type:
        args.append(f"--machine_type={machine_type}")
    if max_workers:
        args.append(f"--max_num_workers={max_workers}")
    return args


def spark_args(
    master_url: str = "local[2]", environment_type: str = "DOCKER", environment_config: str | None = None
) -> list[str]:
    """Apache Spark through Beam's Spark job server (started by the SDK on `run`)."""
    args = [
        "--runner=SparkRunner",
        f"--spark_master_url={master_url}",
        f"--environment_type={environment_type}",
    ]
    if environment_config:
        args.append(f"--environment_config={environment_config}")
    return args


def flink_args(
    master: str = "[local]",
    parallelism: int | None = None,
    environment_type: str = "DOCKER",
    environment_config: str | None = None,
) -> list[str]:
    """Apache Flink through Beam's Flink job server (started by the SDK on `run`)."""
    args = ["--runner=FlinkRunner", f"--flink_master={master}", f"--environment_type={environment_type}"]
    if parallelism:
        args.append(f"--parallelism={parallelism}")
    if environment_config:
        args.append(f"--environment_config={environment_config}")
    return args


def portable_args(job_endpoint: str = "embed", environment_type: str = "LOOPBACK") -> list[str]:
    """Any portable runner's job service; `embed` + `LOOPBACK` runs Beam's in-process job service."""
    return [
        "--runner=PortableRunner",
        f"--job_endpoint={job_endpoint}",
        f"--environment_type={environment_type}",
    ]


def runner_args(runner: str) -> list[str]:
    """Default flags for a runner name; the user's pass-through flags add to or override them."""
    runner = runner.lower().removesuffix("runner")
    if runner == "direct":
        return direct_args()
    if runner == "portable":
        return portable_args()
    if runner == "dataflow":
        return ["--runner=DataflowRunner"]
    if runner == "spark":
        return ["--runner=SparkRunner"]
    if runner == "flink":
        return ["--runner=FlinkRunner"]
    raise ValueError(f"unknown runner {runner!r}; use one of {RUNNERS} (and pass its flags after --)")


def check_flags(args: Sequence[str]) -> None:
    """Refuse an argument that is neither a `--flag` nor the value after one: Beam would drop it with a
    warning. It is most often a file of an unquoted --input glob that the shell expanded, which the job
    would otherwise never read."""
    for previous, arg in zip(["--", *args], args, strict=False):
        takes_value = previous.startswith("--") and previous != "--" and "=" not in previous
        if not arg.startswith("--") and not takes_value:
            raise ValueError(
                f"unexpected argument {arg!r}: quote a glob so that the shell does not expand it "
                "(--input 'data/*.jsonl'), and give runner flags after -- as --name=value"
            )


def pipeline_options(runner: str = "direct", extra_args: Sequence[str] = (), input_bytes: int | None = None):
    """`PipelineOptions` for `runner` plus the user's flags (a later flag overrides an earlier one).

    An argument that is not a flag or a flag's value is refused (`check_flags`). A `--runner=...` among
    `extra_args` replaces the named runner's defaults entirely. With `input_bytes`, the DirectRunner
    picks in-process or multi-processing by input size unless the flags name `--direct_running_mode`.
    """
    from apache_beam.options.pipeline_options import PipelineOptions

    extra = list(extra_args)
    check_flags(extra)
    if any(a.startswith("--runner") for a in extra):
        defaults = []
    elif (
        input_bytes is not None
        and runner.lower().removesuffix("runner") == "direct"
        and not any(a.startswith("--direct_running_mode") for a in extra)
    ):
        defaults = auto_direct_args(input_bytes)
    else:
        defaults = runner_args(runner)
    return PipelineOptions([*defaults, *extra])


__all__ = [
    "RUNNERS",
    "auto_direct_args",
    "bind_direct_workers_to_job",
    "check_flags",
    "dataflow_args",
    "direct_args",
    "direct_workers",
    "flink_args",
    "pipeline_options",
    "portable_args",
    "runner_args",
    "spark_args",
]
