"""Old import path of ``zeekml.pipeline.dask`` (kept for one release)."""
from zeekml.pipeline.dask import (DEFAULT_SPLIT_BYTES, TASK_RETRIES, ReadResult, ReadTask,
                                  dask_client, plan_tasks, read_task, score_tasks_dask, task_name)

__all__ = ["DEFAULT_SPLIT_BYTES", "TASK_RETRIES", "ReadResult", "ReadTask", "dask_client",
           "plan_tasks", "read_task", "score_tasks_dask", "task_name"]
