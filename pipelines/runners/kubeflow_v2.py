"""Kubeflow Pipelines V2 / Vertex AI Pipelines compilation (needs the `kfp` extra).

    python -m pipelines.runners.kubeflow_v2 --config pipeline.yaml --image IMAGE --output ptum.json

The image must hold this package (e.g. built from this repository); pipeline_root and
inputs should be gs:// paths and beam_args should name DataflowRunner for scale.
"""
from __future__ import annotations

import argparse


def compile_pipeline(config_path: str, image: str, output: str) -> str:
    from tfx import v1 as tfx

    if not hasattr(tfx.orchestration.experimental, "KubeflowV2DagRunner"):
        raise ImportError("the Kubeflow V2 runner needs `pip install 'ptum-pipeline[kfp]'` (kfp)")
    from pipelines.tfx_pipeline import PipelineConfig, create_pipeline

    runner = tfx.orchestration.experimental.KubeflowV2DagRunner(
        config=tfx.orchestration.experimental.KubeflowV2DagRunnerConfig(default_image=image),
        output_filename=output)
    # Kubeflow V2 compiles TFX's stock resolver strategies only (see create_pipeline).
    runner.run(create_pipeline(PipelineConfig.load(config_path), resolvers="latest"), write_out=True)
    return output


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", required=True)
    ap.add_argument("--image", required=True)
    ap.add_argument("--output", default="ptum_pipeline.json")
    a = ap.parse_args()
    print(compile_pipeline(a.config, a.image, a.output))


if __name__ == "__main__":
    main()
