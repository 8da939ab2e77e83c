"""A Dask cluster of SLURM GPU jobs (dask-jobqueue) that `flashscenic run` can use.

    pip install dask-jobqueue
    cluster/tls/make-certificates.sh ~/dask-certs          # once; see cluster/tls/README.md
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

Security: the scheduler speaks TLS only (mutual TLS with the certificates of
cluster/tls/make-certificates.sh, folder --tls, which the compute nodes must see at the
same path) and asks every worker and client for a certificate of the CA. Its dashboard
listens on this node's 127.0.0.1:8787 only: `ssh -N -L 8787:127.0.0.1:8787 LOGIN_NODE`,
then http://localhost:8787/status. Workers have no dashboard. `flashscenic run` needs the
client certificate: install cluster/tls/dask-tls.yaml (cluster/tls/README.md).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from dask_jobqueue import SLURMCluster
from distributed import Client, Security


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
    parser.add_argument("--tls", type=Path, default=Path.home() / "dask-certs" / "dask-tls",
                        help="the dask-tls folder of cluster/tls/make-certificates.sh")
    args = parser.parse_args()

    files = {name: args.tls / name for name in ("ca.pem", "scheduler.pem", "scheduler.key", "worker.pem",
                                                 "worker.key", "client.pem", "client.key")}
    missing = [str(path) for path in files.values() if not path.is_file()]
    if missing:
        parser.error(f"no {', '.join(missing)}: make the certificates with cluster/tls/make-certificates.sh")
    # The scheduler (in this process) and this script's client use their own pair; the
    # workers get the worker pair on their command line (--tls-ca-file/--tls-cert/--tls-key).
    security = Security(
        tls_ca_file=str(files["ca.pem"]), require_encryption=True,
        tls_scheduler_cert=str(files["scheduler.pem"]), tls_scheduler_key=str(files["scheduler.key"]),
        tls_worker_cert=str(files["worker.pem"]), tls_worker_key=str(files["worker.key"]),
        tls_client_cert=str(files["client.pem"]), tls_client_key=str(files["client.key"]),
    )
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
        worker_extra_args=["--no-dashboard"] + (["--resources", "GPU=1"] if gpu else []),
        protocol="tls://",
        security=security,
        scheduler_options={"dashboard_address": "127.0.0.1:8787"},
        # torch-friendly malloc in Dask workers (cluster/README.md)
        job_script_prologue=["export MALLOC_MMAP_THRESHOLD_=33554432"],
    )
    cluster.scale(jobs=args.jobs)
    client = Client(cluster, security=security)
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
