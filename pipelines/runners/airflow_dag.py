"""Airflow DAG factory (needs the `airflow` extra: pip install 'ptum-pipeline[airflow]').

Put a file like this in the DAGs folder:

    from pipelines.runners.airflow_dag import make_dag
    DAG = make_dag("/etc/ptum/pipeline.yaml", schedule="0 3 * * *")
"""
from __future__ import annotations

import datetime


def make_dag(config_path: str, schedule: str = "@daily", start_date: datetime.datetime = None):
    try:
        from tfx.orchestration.airflow.airflow_dag_runner import AirflowDagRunner, AirflowPipelineConfig
    except ImportError as e:  # pragma: no cover - depends on the optional extra
        raise ImportError("the Airflow runner needs `pip install 'ptum-pipeline[airflow]'`") from e
    from pipelines.tfx_pipeline import PipelineConfig, create_pipeline

    cfg = PipelineConfig.load(config_path)
    airflow_config = {"schedule_interval": schedule,
                      "start_date": start_date or datetime.datetime(2024, 1, 1), "catchup": False}
    return AirflowDagRunner(AirflowPipelineConfig(airflow_config)).run(create_pipeline(cfg))
