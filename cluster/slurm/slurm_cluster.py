"""A Dask cluster of SLURM GPU jobs (dask-jobqueue) that `flashscenic run` can use.

    pip install dask-jobqueue
    python cluster/slurm/slurm_cluster.py --jobs 4 --scheduler-file ~/dask/scheduler.json &
    flashscenic run ... --scheduler-file ~/dask/scheduler.json
    kill %1                                # ends the jobs

Run it on the login node (or in a small job of its own): the scheduler lives in this
process, each SLURM job runs one `dask worker` (one thread) on the one GPU SLURM gives it
(CUDA_VISIBLE_DEVICES), with the resource GPU=1. For several GPUs per job, see
flashscenic.sbatch (`dask cuda worker`: one worker per GPU).
Edit the SLURM settings below (partition, account, time, memory) for your site; the
expression store, the output folder and the databases must be on a filesystem that the
compute nodes share with this node, at the same paths.
"""

from __future__ import annotations

import argparse
import time

from dask_jobqueue import SLURMCluster
from distributed import Client


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=2, help="SLURM jobs, one GPU worker each")
    parser.add_argument("--scheduler-file", required=True, help="where to write the scheduler file")
    parser.add_argument("--partition", default="gpu")
    parser.add_argument("--account", default=None)
    parser.add_argument("--walltime", default="04:00:00")
    parser.add_argument("--cores", type=int, default=8, help="CPU cores per job")
    parser.add_argument("--memory", default="64GB", help="host memory per job (the worker's memory limit)")
    parser.add_argument("--cpu", action="store_true", help="CPU workers: plain `dask worker`, no GPU requested")
    args = parser.parse_args()

    gpu = not args.cpu
    cluster = SLURMCluster(
        queue=args.partition,
        account=args.account,
        cores=1,  # one Dask thread: one task at a time, whose torch uses the job's cores
        job_cpu=args.cores,
        processes=1,  # one worker per job
        memory=args.memory,
        walltime=args.walltime,
        job_extra_directives=["--gres=gpu:1"] if gpu else [],
        # The job's one GPU is the worker's; GPU=1 lets flashscenic send its GPU tasks there.
        worker_extra_args=["--resources", "GPU=1"] if gpu else [],
        scheduler_options={"dashboard_address": ":8787"},
        # torch-friendly malloc in Dask workers (cluster/README.md)
        job_script_prologue=["export MALLOC_MMAP_THRESHOLD_=33554432"],
    )
    cluster.scale(jobs=args.jobs)
    client = Client(cluster)
    client.write_scheduler_file(args.scheduler_file)
    print(cluster.job_script())
    print(f"scheduler file {args.scheduler_file}; dashboard {client.dashboard_link}; Ctrl-C or kill to stop")
    try:
        while True:
            time.sleep(60)
    except KeyboardInterrupt:
        pass
    finally:
        client.close()
        cluster.close()


if __name__ == "__main__":
    main()
